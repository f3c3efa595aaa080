"""Executors: the M runs on Ray give the weights the local executor gives, bit for bit, and a Ray
worker killed mid-run is retried and resumes to the same weights (a local Ray instance, 2 CPUs)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rl.executor import LocalExecutor, make_executor
from rl.warp import warp
from tests.rl.conftest import config

ROOT = Path(__file__).resolve().parents[2]
ray = pytest.importorskip("ray", reason="Ray is installed by the test command (CI requires it)")


def _weights(run: Path, rel: str) -> dict:
    return load_file(str(run / rel / "model.safetensors"))


def _same(a: Path, b: Path) -> None:
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["checkpoints"] == mb["checkpoints"] and mb["complete"] is True
    for c in ma["checkpoints"]:
        wa, wb = _weights(a, c["path"]), _weights(b, c["path"])
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), c["path"]
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if not k.startswith("time_")}  # noqa: E731
                       for x in p.read_text().splitlines()]
    assert strip(a / "metrics.jsonl") == strip(b / "metrics.jsonl")


def test_ray_and_local_executors_give_the_same_weights(tiny_rl_config, tmp_path):
    mapping = tiny_rl_config(warp={"iterations": 2, "runs": 2, "steps": 2, "save_every": 1}, threads=1,
                             executor={"local_cpus": 2, "num_cpus": 1})
    local = warp(config(mapping), tmp_path / "local", progress=False, executor=LocalExecutor())
    on_ray = warp(config({**mapping, "executor": {**mapping["executor"], "name": "ray"}}), tmp_path / "ray",
                  progress=False)
    assert ray.is_initialized()
    _same(local, on_ray)


def test_a_failing_task_raises_its_own_error(tiny_rl_config, tmp_path):
    from rl.config import ExecutorConfig

    ex = make_executor(ExecutorConfig(name="ray", local_cpus=2))
    with pytest.raises(ValueError, match="boom"):
        ex.submit(_fail).result()


def _fail():
    raise ValueError("boom")


def _worker_pids() -> list[int]:
    """Ray worker processes running a project task right now (their title is 'ray::_call')."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()[1:] if "ray::_call" in line]


def test_a_killed_worker_is_retried_and_the_run_resumes_bitwise(tiny_rl_config, tmp_path):
    mapping = tiny_rl_config(warp={"iterations": 1, "runs": 2, "steps": 12, "save_every": 0, "state_every": 2},
                             threads=1, executor={"name": "ray", "local_cpus": 2, "num_cpus": 1, "max_retries": 3})
    whole = warp(config({**mapping, "executor": {"name": "local"}}), tmp_path / "local", progress=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(mapping))
    out = tmp_path / "ray"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(cfg), "--out", str(out), "--no-progress"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 240
    while p.poll() is None and time.monotonic() < deadline and killed is None:
        log = out / "iter1" / "run1" / "metrics.jsonl"
        pids = _worker_pids()
        if pids and log.exists() and len(log.read_text().splitlines()) >= 3:   # a run is mid-way
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.05)
    stdout, stderr = p.communicate(timeout=600)
    assert killed is not None, f"no worker was caught mid-run (exit {p.returncode}): {stderr[-2000:]}"
    assert p.returncode == 0, stderr[-3000:]
    _same(whole, out)
