"""Side-by-side judges, win rate with ties, graded score, bootstrap intervals."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.manifest import Generation
from harness.score import score_policy
from harness.sxs import (TIE_BAND, bootstrap_ci, bt_margin, graded_score, judge_control, judge_proxy, outcomes,
                         win_rate)
from tests.tiny import tiny_causal_lm


def lowercase_share(prompts, completions):
    return torch.tensor([sum(ch.islower() for ch in c) / max(len(c), 1) for c in completions])


def test_win_rate_of_a_model_against_itself_is_one_half():
    model, tok = tiny_causal_lm(seed=0)
    prompts = [{"id": str(i), "prompt": f"prompt {i}"} for i in range(60)]
    gen = Generation(max_new_tokens=8)
    a = score_policy(model, tok, None, prompts, {"reward": lowercase_share}, gen, seed=0, batch_size=30).records
    # identical completions: every prompt a tie
    same = win_rate(judge_proxy([r["reward"] for r in a], [r["reward"] for r in a]))
    assert same["win_rate"] == 0.5 and same["win_rate_lo"] <= 0.5 <= same["win_rate_hi"] and same["ties"] == 1.0
    assert same["sxs_score"] == 0.0
    # independent samples of the same policy (other seed): 0.5 within the bootstrap interval
    b = score_policy(model, tok, None, prompts, {"reward": lowercase_share}, gen, seed=1, batch_size=30).records
    p = judge_proxy([r["reward"] for r in a], [r["reward"] for r in b])
    assert not np.allclose(p, 0.5)  # the judge does see differences per prompt
    wr = win_rate(p, seed=0)
    assert wr["win_rate_lo"] <= 0.5 <= wr["win_rate_hi"]
    assert wr["sxs_score_lo"] <= 0.0 <= wr["sxs_score_hi"]
    # antisymmetry: swapping A and B mirrors the win rate and the graded score
    wr_ba = win_rate(judge_proxy([r["reward"] for r in b], [r["reward"] for r in a]), seed=0)
    assert wr_ba["win_rate"] == pytest.approx(1 - wr["win_rate"])
    assert wr_ba["sxs_score"] == pytest.approx(-wr["sxs_score"])


def test_judges_are_bradley_terry_probabilities():
    pa, pb = np.array([0.9, 0.5]), np.array([0.5, 0.8])
    expected = 1 / (1 + np.exp(-(np.log(pa / (1 - pa)) - np.log(pb / (1 - pb)))))
    assert np.allclose(judge_proxy(pa, pb), expected)
    assert np.allclose(judge_control([0.5], [0.25]), 1 / (1 + math.exp(-4 * 0.25)))
    assert np.isfinite(bt_margin(np.array([0.0, 1.0]))).all()


def test_outcomes_and_graded_thresholds():
    p = np.array([0.95, 0.85, 0.8, 0.7, 0.6, 0.55, 0.54, 0.5, 0.46, 0.45, 0.3, 0.15, 0.05])
    assert graded_score(p).tolist() == [1.5, 1.5, 1, 1, 0.5, 0.5, 0, 0, 0, -0.5, -1, -1.5, -1.5]
    assert outcomes(p).tolist() == [1, 1, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0, 0, 0, 0]
    # the tie band of the win rate is the graded score's 0 band
    assert ((outcomes(p) == 0.5) == (graded_score(p) == 0)).all() and TIE_BAND == 0.05
    wr = win_rate(p)
    assert wr["win_rate"] == pytest.approx((6 + 0.5 * 3) / 13)
    assert wr["wins"] + wr["ties"] + wr["losses"] == pytest.approx(1)


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    x = np.random.default_rng(0).normal(1.0, 1.0, size=200)
    lo, hi = bootstrap_ci(x, seed=3)
    assert (lo, hi) == bootstrap_ci(x, seed=3)
    assert lo < x.mean() < hi
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))   # the normal interval, as an independent check
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.2)
