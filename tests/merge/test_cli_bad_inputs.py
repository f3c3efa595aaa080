"""`warp merge` on bad inputs: exit status 2, exactly one line on stderr naming what is wrong (no
traceback), and nothing half-written (no output, no temporary siblings, inputs untouched)."""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness.cli import main
from tests.merge.conftest import make_ckpts

ROOT = Path(__file__).resolve().parents[2]
KEY = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return make_ckpts(tmp_path_factory.mktemp("inputs"), n_models=3)


def variant(ck, root: Path, name: str, change) -> Path:
    """A copy of models[1]'s directory whose weights are `change(state dict)`, one safetensors file."""
    d = root / name
    shutil.copytree(ck.models[1], d, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    save_file({k: v.contiguous() for k, v in change(dict(ck.model_sds[1])).items()}, str(d / "model.safetensors"))
    return d


def poisoned(value):
    def change(sd):
        w = sd[KEY].clone()
        w[1, 2] = value
        return {**sd, KEY: w}
    return change


def recipe(root: Path, text: str) -> list[str]:
    (root / "r.yaml").write_text(text)
    return ["--config", str(root / "r.yaml")]


def _slerp(ck, root, m2=None, extra=(), out=None):
    return ["slerp", "--init", str(ck.init), "--models", str(ck.models[0]), str(m2 or ck.models[1]),
            "--out", str(out or root / "out"), *extra]


def _all(ck, root, method, extra=(), init=True):
    return [method, *(["--init", str(ck.init)] if init else []), "--models", *map(str, ck.models),
            "--out", str(root / "out"), *extra]


def _truncated(ck, root):
    d = variant(ck, root, "trunc", lambda sd: sd)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    return d


def _file(root):
    (root / "f.txt").write_text("x")
    return root / "f.txt"


def _dir_with(root, name, files):
    d = root / name
    d.mkdir()
    for fname, content in files.items():
        (d / fname).write_bytes(content)
    return d


def _pickled(ck, root):
    d = root / "pickled"
    d.mkdir()
    torch.save(ck.model_sds[1], d / "pytorch_model.bin")
    return d


def _existing_out(root):
    (root / "out").mkdir()
    (root / "out" / "keep.txt").write_text("mine")
    return root / "out"


# (argv builder (ck, root) -> argv after "merge", regex the one line must match)
CASES = {
    "missing_dir": (lambda ck, r: _slerp(ck, r, r / "nope"), r"models\[1\] \S*nope: not a directory"),
    "not_a_dir": (lambda ck, r: _slerp(ck, r, _file(r)), r"models\[1\] \S*f.txt: not a directory"),
    "dir_without_weights": (lambda ck, r: _slerp(ck, r, _dir_with(r, "empty", {"config.json": b"{}"})),
                            r"models\[1\] \S*empty: no model weights"),
    "corrupt_safetensors": (lambda ck, r: _slerp(ck, r, _dir_with(r, "bad", {"model.safetensors": os.urandom(4096)})),
                            r"bad/model.safetensors: not a readable safetensors file"),
    "truncated_safetensors": (lambda ck, r: _slerp(ck, r, _truncated(ck, r)),
                              r"trunc/model.safetensors: not a readable safetensors file .*incomplete"),
    "pickle_only": (lambda ck, r: _slerp(ck, r, _pickled(ck, r)),
                    r"models\[1\] \S*pickled: only pickled weights \(pytorch_model.bin\), and pickled weights are not "
                    r"loaded; convert them to safetensors"),
    "key_mismatch": (lambda ck, r: _slerp(ck, r, variant(ck, r, "v", lambda sd: {**sd, "extra.weight": torch.ones(2)})),
                     r"key 'extra.weight' is in models\[1\] \S*v but not in init"),
    "key_missing": (lambda ck, r: _slerp(ck, r, variant(ck, r, "v", lambda sd: {k: v for k, v in sd.items()
                                                                               if k != "lm_head.weight"})),
                    r"key 'lm_head.weight' is in init \S* but missing from models\[1\]"),
    "shape_mismatch": (lambda ck, r: _slerp(ck, r, variant(ck, r, "v", lambda sd: {**sd, "model.norm.weight": torch.ones(33)})),
                       r"key 'model.norm.weight': shape \(32,\) in init \S* vs \(33,\) in models\[1\]"),
    "nan_weights": (lambda ck, r: _slerp(ck, r, variant(ck, r, "v", poisoned(math.nan))),
                    rf"models\[1\] \S*v tensor '{KEY}' has NaN/Inf values"),
    "inf_weights": (lambda ck, r: ["liti", "--init", str(variant(ck, r, "v", poisoned(-math.inf))),
                                   "--merged", str(ck.models[0]), "--out", str(r / "out")],
                    rf"init \S*v tensor '{KEY}' has NaN/Inf values"),
    "lam_out_of_range": (lambda ck, r: _slerp(ck, r, extra=["--lam", "1.5"]), r"lam must be in \[0, 1\], got 1.5"),
    "lam_nan": (lambda ck, r: _slerp(ck, r, extra=["--lam", "nan"]), r"lam: expected a finite number, got nan"),
    "lam_not_a_number": (lambda ck, r: _slerp(ck, r, extra=["--lam", "abc"]),
                         r"^warp merge slerp: error: argument --lam: invalid float value: 'abc'"),
    "lam_with_3_models": (lambda ck, r: _all(ck, r, "slerp", ["--lam", "0.3"]), r"lam must be None"),
    "eta_out_of_range": (lambda ck, r: ["liti", "--init", str(ck.init), "--merged", str(ck.models[0]), "--eta", "-0.1",
                                        "--out", str(r / "out")], r"eta must be in \[0, 1\], got -0.1"),
    "density_0": (lambda ck, r: _all(ck, r, "ties", ["--density", "0"]), r"density must be in \(0, 1\], got 0"),
    "density_above_1": (lambda ck, r: _all(ck, r, "dare", ["--density", "1.5"]), r"density must be in \[0, 1\], got 1.5"),
    "weights_wrong_count": (lambda ck, r: _all(ck, r, "average", ["--weights", "1", "2"], init=False),
                            r"weights has 2 entries but there are 3 models"),
    "weights_negative": (lambda ck, r: _all(ck, r, "average", ["--weights", "-1", "1", "2"], init=False),
                         r"weights must be non-negative with a positive sum"),
    "weights_not_finite": (lambda ck, r: _all(ck, r, "task_arithmetic", ["--weights", "1", "inf", "1"]),
                           r"weights\[1\]: expected a finite number, got inf"),
    "scale_not_finite": (lambda ck, r: _all(ck, r, "ties", ["--scale", "nan"]), r"scale: expected a finite number, got nan"),
    "too_few_models": (lambda ck, r: ["slerp", "--init", str(ck.init), "--models", str(ck.models[0]),
                                      "--out", str(r / "out")], r"slerp needs at least 2 model\(s\), got 1"),
    "unknown_method": (lambda ck, r: recipe(r, f"method: frobnicate\nmodels: [{ck.models[0]}, {ck.models[1]}]\nout: out\n"),
                       r"unknown merge method 'frobnicate'"),
    "unknown_recipe_key": (lambda ck, r: recipe(r, f"method: average\nmodels: [{ck.models[0]}, {ck.models[1]}]\n"
                                                   f"out: out\nallow_pickle: true\n"), r"r\.yaml: unknown key 'allow_pickle'"),
    "recipe_wrong_type": (lambda ck, r: recipe(r, "method: average\nmodels: 3\nout: out\n"),
                          r"r\.yaml: models: expected a list, got 3"),
    "recipe_param_not_a_number": (lambda ck, r: recipe(r, f"method: slerp\ninit: {ck.init}\nmodels: [{ck.models[0]}, "
                                                          f"{ck.models[1]}]\nparams: {{lam: abc}}\nout: out\n"),
                                  r"lam: expected a number, got 'abc'"),
    "recipe_bad_shard_size": (lambda ck, r: recipe(r, f"method: average\nmodels: [{ck.models[0]}, {ck.models[1]}]\n"
                                                      f"out: out\nmax_shard_size: lots\n"), r"r\.yaml: max_shard_size: bad size 'lots'"),
    "out_is_input": (lambda ck, r: _slerp(ck, r, out=ck.models[0], extra=["--overwrite"]), r"is also an input"),
    "out_inside_input": (lambda ck, r: _slerp(ck, r, out=ck.models[1] / "sub"), r"--out \S*sub is inside the input"),
    "out_holds_input": (lambda ck, r: _slerp(ck, r, out=ck.init.parent, extra=["--overwrite"]), r"holds the input"),
    "out_exists": (lambda ck, r: _slerp(ck, r, out=_existing_out(r)), r"out already exists \(pass --overwrite"),
    "out_parent_is_a_file": (lambda ck, r: _slerp(ck, r, out=_file(r) / "out"), r"f.txt is not a directory"),
    "bad_max_shard_size": (lambda ck, r: _slerp(ck, r, extra=["--max-shard-size", "lots"]), r"--max-shard-size: bad size 'lots'"),
    "zero_max_shard_size": (lambda ck, r: _slerp(ck, r, extra=["--max-shard-size", "0MB"]), r"--max-shard-size: size must be positive"),
}


def snapshot(paths) -> dict:
    """Every file and directory under `paths` with its mtime (the roots' own mtimes excluded: a
    temporary created and removed beside an output is allowed)."""
    return {p: p.stat().st_mtime_ns for root in paths for p in root.rglob("*")}


def temporaries(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_exit_2_nothing_written(ck, tmp_path, capsys, case):
    build, pattern = CASES[case]
    argv = ["merge", *build(ck, tmp_path)]
    if "--config" not in argv:
        argv.append("--no-progress")
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else tmp_path / "out"
    existed = out.exists()
    inputs = snapshot([ck.init, *ck.models])
    before = snapshot([tmp_path])
    try:
        code = main(argv)
    except SystemExit as e:   # argparse usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert err.startswith("warp merge") and re.search(pattern, err), err
    assert snapshot([ck.init, *ck.models]) == inputs   # inputs untouched
    assert snapshot([tmp_path]) == before               # nothing created, nothing removed
    assert out.exists() == existed and not (out.parent.is_dir() and temporaries(out.parent))


def test_read_only_output_parent(ck, tmp_path, capsys):
    """--out under a directory this process may not write: one line, exit 2, nothing created.

    As root, chmod does not stop writes, so the command then runs as a child without the
    capabilities that let root ignore file permissions (setpriv drops CAP_DAC_OVERRIDE)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    argv = ["merge", *_slerp(ck, tmp_path, out=ro / "out"), "--no-progress"]
    try:
        if os.geteuid() != 0:
            code, err = main(argv), capsys.readouterr().err
        else:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root, where chmod 0o555 does not stop writes, and setpriv (to drop "
                            "CAP_DAC_OVERRIDE) is not installed: this case is NOT checked here")
            env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
            r = subprocess.run([setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps=-all", "--",
                                sys.executable, "-m", "harness.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=120)
            code, err = r.returncode, r.stderr
        assert code == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("warp merge: error: cannot create --out") and "not writable" in err, err
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_disk_full_mid_merge(ck, tmp_path, capsys, monkeypatch):
    """An OSError while writing (here ENOSPC on the first tensor, after the merge has filled the
    write queue) is one line, the temporary is removed, and nothing waits forever on the queue."""
    import errno
    import threading
    import time

    import merge.checkpoint

    def full(t):
        time.sleep(0.3)   # the main thread fills the bounded write queue meanwhile
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(merge.checkpoint, "_tensor_bytes", full)
    result = {}
    run = threading.Thread(target=lambda: result.update(rc=main(["merge", *_slerp(ck, tmp_path), "--no-progress",
                                                                  "--max-shard-size", "20KB"])), daemon=True)
    run.start()
    run.join(timeout=60)
    assert not run.is_alive(), "the merge hung after the writer failed"
    assert result["rc"] == 2
    err = capsys.readouterr().err
    assert err == f"warp merge: error: writing {tmp_path / 'out'} failed: No space left on device\n"
    assert list(tmp_path.iterdir()) == []
