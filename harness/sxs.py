"""Side-by-side preference between two policies on the same prompts.

A judge maps the two completions of one prompt to P(A ≻ B):
- proxy judge (default): Bradley–Terry σ(r_A − r_B) with r the reward model's margin. For a
  classifier reward that returns p = P(positive), r = logit(p) = log p/(1−p) (its BT score).
- control judge: σ(s · (v_A − v_B)) with v the VADER compound score in [−1, 1] and the scale
  s = VADER_SCALE = 4 (a compound difference of 0.25 gives P ≈ 0.73, of 1 gives P ≈ 0.98).
Per prompt the outcome is a win (P ≥ 0.5 + TIE_BAND), a loss (P ≤ 0.5 − TIE_BAND) or a tie
(|P − 0.5| < TIE_BAND = 0.05, counted ½; the same band as the graded score's 0). Win rate = (wins + ½ ties) / n.
The paper's graded side-by-side score (per prompt, then averaged), thresholds on P:
    P ≥ 0.85 → +1.5 (much better)   0.70 ≤ P < 0.85 → +1 (better)   0.55 ≤ P < 0.70 → +0.5 (slightly better)
    |P − 0.5| < 0.05 → 0 (about the same), and symmetrically −0.5 / −1 / −1.5 below 0.5.
Intervals are percentile bootstrap 95% intervals over prompts (resampled with replacement),
seeded, so reports are reproducible.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .manifest import HarnessError

TIE_BAND = 0.05
VADER_SCALE = 4.0
# (lower bound on P, score) from the top: P ≥ 0.85 → 1.5, ≥ 0.70 → 1, ≥ 0.55 → 0.5; mirrored below 0.5.
GRADES = ((0.85, 1.5), (0.70, 1.0), (0.5 + TIE_BAND, 0.5))
LOGIT_EPS = 1e-6


def bt_margin(p: np.ndarray) -> np.ndarray:
    """Bradley–Terry score of a classifier reward p = P(positive): logit(p), clipped away from 0 and 1."""
    p = np.clip(np.asarray(p, dtype=np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def judge_proxy(reward_a: Sequence[float], reward_b: Sequence[float]) -> np.ndarray:
    """P(A ≻ B) per prompt = σ(logit r_A − logit r_B) for classifier rewards r ∈ [0, 1]."""
    return sigmoid(bt_margin(reward_a) - bt_margin(reward_b))


def judge_control(vader_a: Sequence[float], vader_b: Sequence[float], scale: float = VADER_SCALE) -> np.ndarray:
    """P(A ≻ B) per prompt = σ(scale · (v_A − v_B)), v the VADER compound score."""
    return sigmoid(scale * (np.asarray(vader_a, dtype=np.float64) - np.asarray(vader_b, dtype=np.float64)))


def outcomes(p: np.ndarray, tie_band: float = TIE_BAND) -> np.ndarray:
    """Per prompt: 1 win, 0.5 tie (|P − 0.5| < tie_band, the graded score's 0 band), 0 loss."""
    p = np.asarray(p, dtype=np.float64)
    decided = np.abs(p - 0.5) >= tie_band - 1e-12
    return np.where(decided & (p > 0.5), 1.0, np.where(decided & (p < 0.5), 0.0, 0.5))


def graded_score(p: np.ndarray) -> np.ndarray:
    """The paper's graded side-by-side score per prompt, in {±1.5, ±1, ±0.5, 0} (thresholds above)."""
    p = np.asarray(p, dtype=np.float64)
    d = np.abs(p - 0.5)
    score = np.zeros_like(p)
    for lo, s in reversed(GRADES):          # ascending, so the highest threshold met wins
        score = np.where(d >= lo - 0.5 - 1e-12, s, score)
    return np.sign(p - 0.5) * score + 0.0  # + 0.0 turns −0 into 0


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampled with replacement), seeded."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def win_rate(p: np.ndarray, n_boot: int = 1000, seed: int = 0, tie_band: float = TIE_BAND) -> dict[str, float]:
    """Win rate with ties and the graded score from per-prompt judge probabilities, with 95% intervals."""
    o = outcomes(p, tie_band)
    g = graded_score(p)
    wr_lo, wr_hi = bootstrap_ci(o, n_boot, seed)
    g_lo, g_hi = bootstrap_ci(g, n_boot, seed)
    n = max(len(o), 1)
    return {"win_rate": float(o.mean()) if len(o) else math.nan, "win_rate_lo": wr_lo, "win_rate_hi": wr_hi,
            "wins": float((o == 1).sum() / n), "ties": float((o == 0.5).sum() / n), "losses": float((o == 0).sum() / n),
            "sxs_score": float(g.mean()) if len(g) else math.nan, "sxs_score_lo": g_lo, "sxs_score_hi": g_hi,
            "p_mean": float(np.mean(p)) if len(o) else math.nan, "n": float(len(o))}


# ---- the leaderboard's pairs: every point against every opponent ------------------------------

def opponents(points: list) -> list:
    """Baselines for side-by-side: SFT, each REINFORCE run's last checkpoint, each iteration's SLERP
    (η=1, i.e. the other iterations), and the external baselines."""
    opp: dict[str, Point] = {p.name: p for p in points if p.kind == "sft"}
    last: dict[tuple, Point] = {}
    for p in points:
        if p.kind == "run":
            key = (p.iteration, p.run)
            if key not in last or p.step > last[key].step:
                last[key] = p
    for p in last.values():
        opp[p.name] = p
    for p in points:
        if (p.kind == "liti" and p.eta == 1.0) or p.kind == "baseline":
            opp.setdefault(p.name, p)
    return list(opp.values())


def side_by_side(points: list, records: dict[str, list[dict]], opps: list, proxy_is_vader: bool,
                 seed: int = 0, n_boot: int = 1000) -> list[dict]:
    """Win rate / graded score of every point against every opponent, for the proxy and control judges."""
    rows = []
    for a in points:
        ra = records[a.name]
        for b in opps:
            if b.hash == a.hash:
                continue
            rb = records[b.name]
            if [r["id"] for r in ra] != [r["id"] for r in rb]:
                raise HarnessError(f"side-by-side {a.name} vs {b.name}: the points were scored on different prompts")
            ya, yb = [r["reward"] for r in ra], [r["reward"] for r in rb]
            judges = {"proxy": judge_control(ya, yb) if proxy_is_vader else judge_proxy(ya, yb),
                      "control": judge_control([r["control_reward"] for r in ra], [r["control_reward"] for r in rb])}
            for judge, p in judges.items():
                rows.append({"point": a.name, "opponent": b.name, "judge": judge, **win_rate(p, n_boot=n_boot, seed=seed)})
    return rows
