"""One `warp eval` per EVAL_DIR, and killed anywhere it loses nothing: a re-run of the same command
resumes and ends with the eval.json of an uninterrupted run."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main
from tests.harness.rundir import build_run_dir

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
HOLD_LOCK = """
import os, sys, time
from merge.io import DirectoryLock, atomic_write_text
DirectoryLock(sys.argv[1], "warp eval").acquire()
def hang(*args, **kwargs):            # killed between writing a temporary and renaming it
    print("ready", flush=True)
    time.sleep(600)
os.replace = hang
atomic_write_text(os.path.join(sys.argv[1], "cache", "score", "half.json"), '{"half": ')
"""


def warp(*args: str, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], env=ENV, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def entries(eval_dir: Path) -> list[Path]:
    return list((eval_dir / "cache").rglob("*.json"))


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return build_run_dir(tmp_path_factory.mktemp("run") / "run", iterations=1, runs=1, steps=(10,))


def test_a_second_eval_is_refused_and_a_killed_holders_lock_is_taken_over(run_dir, tmp_path, capsys):
    ev = tmp_path / "eval"
    ev.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(ev)], env=ENV, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = snapshot(ev)
        args = ["eval", str(run_dir), "--out", str(ev), "--etas", "0,1", "--prompts", "2"]
        cli = warp(*args)                                   # the real command line: one line, exit 2
        out, err = cli.communicate(timeout=120)
        assert cli.returncode == 2 and err.strip().count("\n") == 0, err
        assert err.startswith("warp eval: error: ") and f"in use by another warp eval (pid {holder.pid})" in err
        assert snapshot(ev) == before                       # nothing written, nothing swept
    finally:
        holder.kill()
        holder.wait()
    assert len(temporaries(ev)) == 1                        # the holder died mid-write
    capsys.readouterr()
    assert main(args) == 0                                  # its lock is taken over, its temporary swept
    assert temporaries(ev) == [] and json.loads((ev / "eval.json").read_text())["points"]


def test_killed_at_random_moments_a_rerun_gives_the_uninterrupted_result(tmp_path):
    """SIGKILL `warp eval` at ≥ 5 random moments of its work (loading, scoring between and during cache
    writes, side-by-side, writing completions and eval.json), re-running the same command each time."""
    run = build_run_dir(tmp_path / "run", iterations=1, runs=2, steps=(10, 20))
    args = ["--etas", "0,0.25,0.5,0.75,1", "--prompts", "8", "--batch-size", "4", "--threads", "1"]
    ref, ev, log = tmp_path / "ref", tmp_path / "eval", tmp_path / "stderr.log"

    def start(out: Path) -> tuple[subprocess.Popen, float]:
        """Start `warp eval` into `out`; return it and the (wall-clock) time it took EVAL_DIR's lock."""
        with open(log, "w") as f:
            p = warp("eval", str(run), "--out", str(out), *args, stderr=f)
        lock = out / ".warp.lock"
        while p.poll() is None and not (lock.is_file() and lock.read_text().strip() == str(p.pid)):
            time.sleep(0.005)
        return p, time.time()

    def finished_since(out: Path, t: float) -> float | None:
        """Seconds from `t` to this run's eval.json, or None when it wrote none."""
        f = out / "eval.json"
        return f.stat().st_mtime - t if f.is_file() and f.stat().st_mtime >= t else None

    p, t_lock = start(ref)
    assert p.wait(timeout=300) == 0, log.read_text()
    written = sorted(f.stat().st_mtime - t_lock for f in (ref / "cache").rglob("*.json"))   # when each score was cached
    per_point, done = (written[-1] - written[0]) / (len(written) - 1), finished_since(ref, t_lock)
    rng = random.Random(1234)
    kills, attempts = [], 0            # (cached scores before, after) per kill
    while len(kills) < 5:
        attempts += 1
        assert attempts <= 15, f"only {len(kills)} kills landed: {kills}"
        have = len(entries(ev))
        p, t_lock = start(ev)
        if have < len(written) and len(kills) < 3:
            # scoring: kill after a random number more scores are cached, a random part into the next point
            target = rng.randint(have, len(written) - 1)
            while p.poll() is None and len(entries(ev)) < target:
                time.sleep(0.005)
            delay = rng.uniform(0, per_point)
        elif have < len(written):
            delay = 300.0                       # let this run finish the scoring
        else:   # nothing left to score: a random moment of the run's last second (side-by-side, completions, eval.json)
            delay = rng.uniform(done - 1.0, done) - (time.time() - t_lock)
        try:
            p.wait(timeout=max(delay, 0.0))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
        assert p.returncode in (0, -signal.SIGKILL), log.read_text()
        finished = finished_since(ev, t_lock)
        if finished is None:
            kills.append((have, len(entries(ev))))
        else:
            done = finished
    assert sum(after < len(written) for _, after in kills) == 3 and kills[-1][0] == len(written)   # both phases
    p, _ = start(ev)
    assert p.wait(timeout=300) == 0, log.read_text()
    got, want = (json.loads((d / "eval.json").read_text()) for d in (ev, ref))
    assert [(q["name"], q["metrics"]) for q in got["points"]] == [(q["name"], q["metrics"]) for q in want["points"]]
    assert got["sxs"] == want["sxs"]
    for f in entries(ev):                                    # nothing half-written
        json.loads(f.read_text())
    for f in [*(ev / "cache").rglob("*.jsonl"), *(ev / "completions").glob("*.jsonl")]:
        [json.loads(line) for line in f.read_text().splitlines()]
    assert temporaries(ev) == []
