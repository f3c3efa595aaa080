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
