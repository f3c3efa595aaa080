"""Kill anywhere, lose nothing: `warp run` SIGKILLed at random moments (in a step, a merge, a
checkpoint write) and re-run each time ends with the weights of an uninterrupted run, bit for bit."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from merge.io import _TEMP

ROOT = Path(__file__).resolve().parents[2]


def _cmd(cfg: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "run", str(cfg), "--out", str(out), "--no-progress"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _consistent(out: Path) -> None:
    """What a killed run leaves is never half-written: the manifest parses, every checkpoint it
    lists loads, metrics lines parse (a torn last line of an append-only log is allowed)."""
    if not (out / "manifest.json").exists():
        return
    manifest = json.loads((out / "manifest.json").read_text())
    for c in manifest["checkpoints"]:
        load_file(str(out / c["path"] / "model.safetensors"))
        json.loads((out / c["path"] / "config.json").read_text())


def _steps_done(out: Path) -> int:
    """Progress so far: lines in the runs' metrics logs plus merged checkpoints."""
    n = sum(len(f.read_bytes().splitlines()) for f in out.glob("iter*/run*/metrics.jsonl"))
    return n + sum(1 for _ in out.glob("iter*/slerp")) + sum(1 for _ in out.glob("iter*/liti"))


def _kill_sequence(cfg: Path, out: Path, rng: random.Random) -> int:
    """Run, SIGKILL at a random moment after each bit of progress, re-run, ... until it finishes;
    returns the number of kills."""
    kills = 0
    while True:
        before = _steps_done(out)
        p = subprocess.Popen(_cmd(cfg, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        deadline = time.monotonic() + 60
        while p.poll() is None and _steps_done(out) <= before and time.monotonic() < deadline:
            time.sleep(0.02)                     # wait for this attempt to make progress (a step done) ...
        time.sleep(rng.uniform(0.0, 0.3))        # ... then kill at a random moment after it: in the next
        if p.poll() is not None:                 # step, a checkpoint or state write, a merge
            assert p.returncode == 0, p.stderr.read().decode()[-2000:]
            return kills
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        _consistent(out)


def test_sigkill_at_random_moments_resumes_bitwise(tiny_rl_config, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_rl_config(warp={"iterations": 2, "runs": 2, "steps": 6, "save_every": 4,
                                                       "state_every": 3}, threads=1)))
    whole = tmp_path / "whole"
    subprocess.run(_cmd(cfg, whole), env=_env(), check=True, capture_output=True, cwd=ROOT)
    a = json.loads((whole / "manifest.json").read_text())
    rng = random.Random(1234)
    kills, sequence = 0, 0
    while kills < 10:                            # ≥ 10 kills in all, over one or more kill sequences
        sequence += 1
        killed = tmp_path / f"killed{sequence}"
        kills += _kill_sequence(cfg, killed, rng)
        b = json.loads((killed / "manifest.json").read_text())
        assert a["checkpoints"] == b["checkpoints"] and b["complete"] is True
        for c in a["checkpoints"]:
            wa = load_file(str(whole / c["path"] / "model.safetensors"))
            wb = load_file(str(killed / c["path"] / "model.safetensors"))
            assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), c["path"]
        strip = lambda p: [{k: v for k, v in json.loads(x).items() if not k.startswith("time_")}  # noqa: E731
                           for x in p.read_text().splitlines()]
        assert strip(whole / "metrics.jsonl") == strip(killed / "metrics.jsonl")
        assert [p for p in killed.rglob("*") if _TEMP.match(p.name) or p.name == "state"] == []
        assert sequence < 4, f"only {kills} kills in {sequence} sequences"
