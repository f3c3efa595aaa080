import json
import os

import pytest

from merge.errors import WarpError
from merge.io import atomic_directory, atomic_write_json, atomic_write_text


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_atomic_directory_appears_only_on_success(tmp_path):
    out = tmp_path / "ckpt"
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("x")
        assert not out.exists()  # nothing that looks complete before the block ends
    assert (out / "a.txt").read_text() == "x"
    assert _siblings(out) == ["ckpt"]  # no temporary left behind


def test_atomic_directory_failure_leaves_nothing(tmp_path):
    out = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("killed mid-write")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_refuses_existing_unless_overwrite(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(WarpError, match="already exists"):
        with atomic_directory(out):
            pass
    assert (out / "old.txt").read_text() == "old"
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(os.listdir(out)) == ["new.txt"]
    assert _siblings(out) == ["ckpt"]


def test_failed_overwrite_keeps_the_old_directory(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise KeyboardInterrupt
    assert sorted(os.listdir(out)) == ["old.txt"]


def test_atomic_write_text_and_json(tmp_path):
    p = tmp_path / "sub" / "f.json"
    atomic_write_json(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    atomic_write_text(p, "replaced")
    assert p.read_text() == "replaced"
    assert _siblings(p) == ["f.json"]


def _dead_pid():
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    from merge.io import _HOST, sweep_stale

    out = tmp_path / "ckpt"
    dead, live = _dead_pid(), os.getpid()
    (tmp_path / f".ckpt.tmp-{_HOST}-{dead}-0123abcd").mkdir()            # a killed writer's directory
    (tmp_path / f".ckpt.old-{_HOST}-{dead}-0123abce").write_text("x")      # a killed overwrite's old file
    (tmp_path / f".ckpt.tmp-{_HOST}-{live}-0123abcf").mkdir()              # a live writer's: kept
    (tmp_path / f".ckpt.tmp-abcdef-{dead}-0123abd0").mkdir()               # another host's: kept
    (tmp_path / ".ckpt.tmp-notours").mkdir()                               # not our naming: kept
    with atomic_directory(out) as tmp:
        (tmp / "a").write_text("a")
    assert _siblings(out) == sorted([".ckpt.tmp-notours", f".ckpt.tmp-{_HOST}-{live}-0123abcf",
                                     f".ckpt.tmp-abcdef-{dead}-0123abd0", "ckpt"])
    nested = tmp_path / "run" / "iter1"
    nested.mkdir(parents=True)
    (nested / f".final.tmp-{_HOST}-{dead}-0123abd1").mkdir()
    (nested / f".metrics.jsonl.tmp-{_HOST}-{dead}-0123abd2").write_text("{")
    assert len(sweep_stale(tmp_path / "run")) == 2 and list(nested.iterdir()) == []


def test_overwrite_onto_a_file_leaves_no_old_copy(tmp_path):
    out = tmp_path / "x"
    out.write_text("a file")
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "a").write_text("a")
    assert _siblings(out) == ["x"] and (out / "a").read_text() == "a"


def test_directory_lock_refuses_a_second_writer_and_is_taken_over_after_death(tmp_path):
    import subprocess
    import sys

    from merge.io import DirectoryLock, LockedError

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from merge.io import DirectoryLock\n"
        "DirectoryLock(%r).acquire(); print('held', flush=True); time.sleep(60)") % (os.getcwd(), str(tmp_path))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=f"in use by another warp run \\(pid {holder.pid}\\)"):
            DirectoryLock(tmp_path, "warp run").acquire()
    finally:
        holder.kill()
        holder.wait()
    with DirectoryLock(tmp_path, "warp run"):       # the killed holder's lock is taken over
        assert (tmp_path / ".warp.lock").read_text().strip() == str(os.getpid())
    with DirectoryLock(tmp_path):                   # and released on exit
        pass
