"""The machine refusing a write (disk full, read-only filesystem, permission denied) is one line
on stderr and exit 1, never a traceback (`warp --debug` shows it), and leaves EVAL_DIR resumable.

Tests run as root, whom chmod does not stop, so the refusals are simulated: `os.replace` (the last
step of every atomic write) raises the OSError the kernel would."""
from __future__ import annotations

import errno
import functools
import json
import os
from pathlib import Path

import pytest

import harness.score
from harness.cli import main
from tests.harness.rundir import build_run_dir

ARGS = ["--etas", "0,0.5,1", "--prompts", "4", "--batch-size", "2"]


@pytest.fixture(autouse=True)
def quiet_scoring_bars(monkeypatch):
    """harness.score draws a per-batch bar on stderr even when it is not a terminal."""
    from tqdm.auto import tqdm

    monkeypatch.setattr(harness.score, "tqdm", functools.partial(tqdm, disable=True))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return build_run_dir(tmp_path_factory.mktemp("run") / "run", iterations=1, runs=2, steps=(10,))


@pytest.fixture(scope="module")
def reference(run_dir, tmp_path_factory):
    ev = tmp_path_factory.mktemp("ref") / "eval"
    assert main(["eval", str(run_dir), "--out", str(ev), *ARGS]) == 0
    return json.loads((ev / "eval.json").read_text())


def refuse_writes(monkeypatch, code: int, under: Path, after: int = 0) -> list:
    """os.replace into `under` raises OSError(code) once `after` such replaces have succeeded."""
    real, done = os.replace, []

    def replace(src, dst, *args, **kwargs):
        if str(dst).startswith(str(under)):
            if len(done) >= after:
                raise OSError(code, os.strerror(code), str(dst))
            done.append(dst)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return done


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warp {command}: error: "), err
    return lines[0]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM], ids=errno.errorcode.get)
def test_report_refused_by_the_filesystem_is_one_line(run_dir, reference, tmp_path, monkeypatch, capsys, code):
    ev = tmp_path / "eval"
    (ev).mkdir()
    (ev / "eval.json").write_text(json.dumps(reference))
    out = tmp_path / "results" / "rep"
    refuse_writes(monkeypatch, code, tmp_path / "results")
    capsys.readouterr()
    assert main(["report", str(ev), "--out", str(out)]) == 1
    line = one_error_line(capsys, "report")
    assert os.strerror(code) in line and str(out) in line
    assert not out.exists() and temporaries(tmp_path) == []
    with pytest.raises(OSError):
        main(["--debug", "report", str(ev), "--out", str(out)])


def test_disk_full_during_eval_leaves_a_resumable_eval_dir(run_dir, reference, tmp_path, monkeypatch, capsys):
    ev = tmp_path / "eval"
    written = refuse_writes(monkeypatch, errno.ENOSPC, ev / "cache", after=5)   # fails mid-way through the points
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--out", str(ev), *ARGS]) == 1
    line = one_error_line(capsys, "eval")
    assert "No space left on device" in line and str(ev / "cache") in line
    assert len(written) == 5 and not (ev / "eval.json").exists() and temporaries(ev) == []
    for f in (ev / "cache").rglob("*.json"):
        json.loads(f.read_text())            # what is there is complete
    monkeypatch.undo()                       # space freed: the same command resumes
    assert main(["eval", str(run_dir), "--out", str(ev), *ARGS]) == 0
    resumed = json.loads((ev / "eval.json").read_text())
    n = len(reference["computed"])
    assert 0 < len(resumed["computed"]) < n   # the points done before the fault were kept
    assert [(p["name"], p["metrics"]) for p in resumed["points"]] == [(p["name"], p["metrics"]) for p in reference["points"]]
    assert resumed["sxs"] == reference["sxs"] and temporaries(ev) == []


def test_read_only_eval_dir_is_one_line(run_dir, tmp_path, monkeypatch, capsys):
    ev = tmp_path / "eval"
    refuse_writes(monkeypatch, errno.EROFS, ev)
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--out", str(ev), *ARGS]) == 1
    assert "Read-only file system" in one_error_line(capsys, "eval")
    assert temporaries(tmp_path) == []


def test_an_unwritable_path_is_one_line(run_dir, reference, tmp_path, capsys):
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "eval.json").write_text(json.dumps(reference))
    (tmp_path / "file").write_text("not a folder")
    capsys.readouterr()
    assert main(["report", str(ev), "--out", str(tmp_path / "file" / "rep")]) == 1   # the OS refuses, not our check
    assert str(tmp_path / "file") in one_error_line(capsys, "report")
