"""`warp eval --executor ray`: the points spread over Ray tasks give the eval.json of a local run."""
from __future__ import annotations

import pytest

from harness.evaluate import run_eval
from tests.harness.rundir import build_run_dir

pytest.importorskip("ray", reason="Ray is installed by the test command (CI requires it)")


def test_ray_workers_score_what_one_process_scores(tmp_path):
    from rl.config import ExecutorConfig
    from rl.executor import make_executor

    run = build_run_dir(tmp_path / "run", iterations=1, runs=2, steps=(10,))
    args = dict(etas=[0.0, 0.5, 1.0], n_prompts=4, engine="hf")
    local = run_eval(run, tmp_path / "local", **args)
    ex = make_executor(ExecutorConfig(name="ray", local_cpus=2, num_cpus=1))
    spread = run_eval(run, tmp_path / "ray", executor=ex, workers=2, **args)
    assert spread["computed"] == []                      # the workers scored everything into the cache
    strip = lambda s: [(p["name"], p["metrics"]) for p in s["points"]]  # noqa: E731
    assert strip(spread) == strip(local) and spread["sxs"] == local["sxs"]
    again = run_eval(run, tmp_path / "ray", executor=ex, workers=2, **args)
    assert again["computed"] == [] and strip(again) == strip(local)
