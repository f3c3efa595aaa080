"""The claims program end to end on tiny models: every claim a–g gets rows with intervals and a
verdict, and no verdict is computed from points scored on different prompts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from harness.claims import ClaimsError, Paired, curve_at, run_claims, training_minutes
from tests.rl.conftest import tiny_csv, tiny_rl_config  # noqa: F401  (fixtures)


@pytest.fixture
def program(tiny_rl_config, tmp_path):
    base = tiny_rl_config(engine={"name": "hf"}, generation={"max_new_tokens": 4},
                          reinforce={"batch_prompts": 2, "lr": 3e-2, "warmup_steps": 0}, threads=1)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    cfg = {"base": "base.yaml", "steps": 3, "save_every": 1, "ema_runs": 6, "seeds": 3, "iterations": 2,
           "prompts": 4, "etas": [0.5, 1.0], "subset_etas": [0.5, 1.0], "lambdas": [0.5], "extrapolate": [1.5],
           "max_m": 3, "subsets_per_m": 2, "kl_fractions": [0.5], "n_boot": 200, "engine": "hf",
           "warm_predictions": None}
    (tmp_path / "claims.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def test_the_program_writes_a_verdict_for_every_claim(program):
    from harness.cli import main

    res = program / "results"
    assert main(["claims", str(program / "claims.yaml"), "--out", str(program / "work"), "--results", str(res),
                 "--no-progress"]) == 0
    df = pd.read_csv(res / "claims.csv")
    assert list(df.columns) == ["claim", "setting", "metric", "estimate", "ci_low", "ci_high", "n", "seeds", "verdict"]
    assert set(df.claim) == set("abcdefg") and set(df.verdict) <= {"supported", "contradicted", "inconclusive"}
    ok = df[df.claim != "f"]
    assert (ok.ci_low <= ok.estimate + 1e-12).all() and (ok.estimate <= ok.ci_high + 1e-12).all()
    assert (df[df.claim.isin(["a", "c"])].seeds == 3).all() and (ok.n == 4).all()
    report = (res / "report.md").read_text()
    assert report.index("Verdict rule") < report.index("## Verdicts")     # the rule comes before the numbers
    assert "the training steps recorded in the runs' metrics took" in report
    for png in ("a_anchor_curves.png", "b_slerp_vs_lerp.png", "c_front_vs_reinforce.png", "d_reward_vs_M.png",
                "e_iterations.png", "g_extrapolation.png"):
        assert (res / png).stat().st_size > 10_000
    # resumable: everything again from the runs and the score cache, the same numbers
    again = run_claims(program / "claims.yaml", program / "work", program / "results2", progress=False)
    np.testing.assert_array_equal(pd.DataFrame(again)[["estimate", "ci_low", "ci_high"]].to_numpy(float),
                                  df[["estimate", "ci_low", "ci_high"]].to_numpy(float))
    # a point scored on other prompts (here: one cached record file reordered) stops the verdicts
    cached = sorted((program / "work" / "eval" / "cache" / "score").glob("*.jsonl"))
    lines = cached[-1].read_text().splitlines()
    cached[-1].write_text("\n".join(reversed(lines)) + "\n")
    with pytest.raises(ClaimsError, match="different prompts"):
        run_claims(program / "claims.yaml", program / "work", program / "results3", progress=False)
    assert not (program / "results3").exists()


def test_paired_refuses_mismatched_prompts_and_interpolates_curves():
    rec = lambda ids, r: [{"id": i, "reward": x, "control_reward": 0.0, "kl_k3": 0.0} for i, x in zip(ids, r)]  # noqa: E731
    with pytest.raises(ClaimsError, match="different prompts"):
        Paired({"a": rec(["1", "2"], [0, 1]), "b": rec(["1", "3"], [0, 1])}, n_boot=100, seed=0)
    with pytest.raises(ClaimsError, match="different prompts"):
        Paired({"a": rec(["1", "2"], [0, 1]), "b": rec(["2", "1"], [1, 0])}, n_boot=100, seed=0)
    P = Paired({"a": rec(["1", "2"], [0.0, 1.0]), "b": rec(["1", "2"], [1.0, 1.0])}, n_boot=100, seed=0)
    assert P.mean("a", "reward") == 0.5 and P.boot("a", "reward").shape == (100,)
    kl, rw = np.array([[0.0, 1.0, 2.0]]), np.array([[0.0, 0.5, 0.7]])
    assert curve_at(kl, rw, 1.5)[0] == pytest.approx(0.6)
    assert curve_at(np.array([[2.0, 0.0, 1.0]]), np.array([[0.7, 0.0, 0.5]]), 0.5)[0] == pytest.approx(0.25)


def test_training_minutes_sums_the_recorded_step_phases(tmp_path):
    import json

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "time_generate": 30.0, "time_ema": 6.0, "reward": 0.5}) + "\n"
        + json.dumps({"step": 2, "time_generate": 24.0, "kl_sft": None}) + "\n")
    (tmp_path / "b" / "metrics.jsonl").write_text(json.dumps({"time_push": 60.0}) + "\n")
    assert training_minutes([tmp_path / "a", tmp_path / "b", tmp_path / "missing"]) == pytest.approx(2.0)
