"""Kill `warp merge` anywhere, lose nothing: SIGKILL at random moments of a real merge (a
subprocess, ~37 MB checkpoints in several shards); after each kill the output is absent or
complete, re-running the same command completes, and the result is byte-identical to an
uninterrupted merge with no temporaries left beside it."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.merge.conftest import finetuned
from tests.tiny import save, tiny_causal_lm

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A, B, C: a 9.5M-parameter Llama (37 MB fp32) and two fine-tuned-like copies in 3 MB shards."""
    root = tmp_path_factory.mktemp("kill")
    model, tok = tiny_causal_lm(seed=0, hidden=512, layers=4)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save(model, tok, root / "A")
    for seed, name in [(1, "B"), (2, "C")]:
        model.load_state_dict(finetuned(init, seed))
        model.save_pretrained(root / name, max_shard_size="3MB")
        tok.save_pretrained(root / name)
    return root


def command(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "merge", "slerp", "--init", str(root / "A"),
            "--models", str(root / "B"), str(root / "C"), "--out", str(out), "--max-shard-size", "4MB",
            "--no-progress", *extra]


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def temporaries(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith((f".{name}.tmp-", f".{name}.old-"))]


def run_and_kill(cmd: list[str], parent: Path, name: str, delay: float, after_write: bool) -> str:
    """Start cmd; SIGKILL it `delay` s after it starts writing its output (a temporary, or the output
    itself when there was none), or after start; returns whether it was still running."""
    existed = (parent / name).exists()
    p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if after_write:
            while p.poll() is None and not any(n.startswith(f".{name}.tmp-") or (n == name and not existed)
                                               for n in os.listdir(parent)):
                time.sleep(0.0005)
        time.sleep(delay)
        phase = "exited" if p.poll() is not None else "killed"
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    return phase


def test_kill_anywhere_lose_nothing(inputs, tmp_path):
    ref_dir = tmp_path / "ref"
    t0 = time.perf_counter()
    subprocess.run(command(inputs, ref_dir), cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=120)
    ref = files(ref_dir)
    assert len([n for n in ref if n.endswith(".safetensors")]) >= 5   # several output shards
    window = 0.15   # the merge proper (temporary dir → rename) takes ~0.1 s here; kills land across it
    rng = random.Random(0)
    # (delay after start, or after the output starts being written); the last three replace an existing output
    plan = [(rng.uniform(0.0, time.perf_counter() - t0), False)] + \
           [(rng.uniform(0, window * (i + 1) / 6), True) for i in range(6)] + \
           [(rng.uniform(0, window), True) for _ in range(3)]
    out = tmp_path / "OUT"
    phases, mid_merge = [], 0
    for i, (delay, after_write) in enumerate(plan):
        overwrite = i >= 7
        extra = ["--overwrite"] if overwrite else []
        if overwrite and not out.exists():
            shutil.copytree(ref_dir, out)
        phases.append(run_and_kill(command(inputs, out, *extra), tmp_path, "OUT", delay, after_write))
        what = f"kill {i} ({delay:.3f} s after {'writing began' if after_write else 'start'})"
        mid_merge += bool(temporaries(tmp_path, "OUT"))   # killed while writing: its temporary is left
        if out.exists():   # complete, never partial
            assert files(out) == ref, what
        if not out.exists() or overwrite:
            r = subprocess.run(command(inputs, out, *extra), cwd=ROOT, env=ENV, capture_output=True, text=True,
                               timeout=120)
            assert r.returncode == 0, f"{what}: re-run failed: {r.stderr}"
        assert files(out) == ref, what
        assert temporaries(tmp_path, "OUT") == [], what
        if not overwrite:
            shutil.rmtree(out)
    assert phases.count("killed") >= 5 and mid_merge >= 3, (phases, mid_merge)   # kills hit running merges
