"""The Pareto ✓ marks dominance beyond noise only: paired per-prompt intervals (from the records
`warp eval` keeps), or the points' own intervals when only means and s.e. are known."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.metrics import Z95, mean_se, pareto_front, pareto_front_unpaired

N = 64


def centred(rng, scale: float) -> np.ndarray:
    """Noise with mean exactly 0, so the means below are exactly as written."""
    x = rng.normal(0.0, scale, N)
    return x - x.mean()


def test_a_point_within_noise_of_a_better_one_keeps_its_check():
    rng = np.random.default_rng(0)
    kl_a, r_a = 1.0 + centred(rng, 0.3), 0.6 + centred(rng, 0.1)
    kl_b, r_b = kl_a - 0.01 + centred(rng, 0.3), r_a + 0.005 + centred(rng, 0.1)   # better on average, within noise
    kl_c, r_c = kl_b + 0.5 + centred(rng, 0.05), r_b - 0.2 + centred(rng, 0.02)    # clearly worse than B on both
    # the means alone would drop A (B has lower KL and higher reward), and C
    assert kl_b.mean() < kl_a.mean() and r_b.mean() > r_a.mean()
    assert pareto_front([kl_a, kl_b, kl_c], [r_a, r_b, r_c]) == [True, True, False]
    # the same rule written out: C's paired differences to B exclude 0 on both axes, A's do not
    d_kl, se_kl = mean_se(kl_b - kl_a)
    assert d_kl + Z95 * se_kl > 0


def test_paired_intervals_see_a_consistent_gain_the_unpaired_ones_miss():
    rng = np.random.default_rng(1)
    prompt_effect = rng.normal(0.0, 0.3, N)           # prompts drive most of the reward
    kl_a, r_a = 0.5 + centred(rng, 0.2), 0.5 + prompt_effect
    kl_b, r_b = kl_a - 0.05 + centred(rng, 0.01), r_a + 0.03 + centred(rng, 0.01)
    assert pareto_front([kl_a, kl_b], [r_a, r_b]) == [False, True]
    se = [mean_se(x)[1] for x in (kl_a, kl_b, r_a, r_b)]
    assert pareto_front_unpaired([kl_a.mean(), kl_b.mean()], [r_a.mean(), r_b.mean()], se[:2], se[2:]) == [True, True]


def test_unpaired_rule_needs_separated_intervals():
    # B better than A by 5 s.e. on both axes: dominated; by 1 s.e.: not
    assert pareto_front_unpaired([1.0, 0.5], [0.5, 1.0], [0.05, 0.05], [0.05, 0.05]) == [False, True]
    assert pareto_front_unpaired([1.0, 0.9], [0.5, 0.6], [0.05, 0.05], [0.05, 0.05]) == [True, True]
    assert pareto_front_unpaired([0.0, math.nan], [0.5, 0.9], [0.1, 0.1], [0.1, 0.1]) == [True, False]


def test_nan_points_and_too_few_prompts():
    assert pareto_front([[0.0, 0.1], [math.nan, math.nan]], [[0.5, 0.6], [0.9, 0.9]]) == [True, False]
    assert pareto_front([[1.0], [0.0]], [[0.0], [1.0]]) == [True, True]   # one prompt: nothing is beyond noise


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from harness.evaluate import run_eval
    from tests.harness.rundir import build_run_dir

    root = tmp_path_factory.mktemp("pareto")
    run = build_run_dir(root / "run", iterations=1, runs=1, steps=(10,))
    run_eval(run, root / "eval", etas=[0, 0.25, 0.5, 0.75, 1], n_prompts=8, batch_size=4)
    return root / "eval"


def test_eval_json_carries_the_paired_front_and_the_report_states_the_rule(evaluated, tmp_path):
    from harness.report import PARETO_RULES, write_report

    summary = json.loads((evaluated / "eval.json").read_text())
    assert summary["settings"]["pareto"] == {"rule": "paired", "level": 0.95}
    liti = [p for p in summary["points"] if p["kind"] == "liti"]
    assert all(isinstance(p["pareto"], bool) for p in liti)
    assert all(p["pareto"] is None for p in summary["points"] if p["kind"] != "liti")
    # recomputed independently from the completions kept in EVAL_DIR
    recs = [[json.loads(l) for l in (evaluated / "completions" / (p["name"].replace("/", "__") + ".jsonl")).read_text().splitlines()]
            for p in liti]
    assert [p["pareto"] for p in liti] == pareto_front([[r["kl_k1"] for r in rs] for rs in recs],
                                                       [[r["reward"] for r in rs] for rs in recs])
    md = (write_report(evaluated, tmp_path / "rep") / "report.md").read_text()
    assert PARETO_RULES["paired"] in md and PARETO_RULES["unpaired"] not in md
    table = md.split("### Iteration 1")[1].split("##")[0]
    rows = [l for l in table.splitlines() if l.startswith("| 0") or l.startswith("| 1")]
    assert [r.rstrip(" |").endswith("✓") for r in rows] == [p["pareto"] for p in liti]
