"""Pure metric functions: Monte Carlo KL estimators, mean ± standard error, distinct-n, and the
KL–reward Pareto front beyond noise.

KL(π‖π_sft) is estimated from completions y ~ π (the policy as sampled) by `kl_estimates`, the
same function the RL loop uses for its KL penalty and metrics (it lives in `rl.sampling`): k1, the
paper's sequence log-ratio (can be negative on one sample), and k3, ≥ 0 per token with lower
variance when π ≈ π_sft. Both have expectation KL(π‖π_sft).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rl.sampling import kl_estimates  # noqa: F401  (re-exported: one KL estimator)


def mean_se(values: Sequence[float] | torch.Tensor) -> tuple[float, float]:
    """(mean, standard error of the mean = s.d. with n−1 / √n); s.e. is NaN for n < 2; NaNs dropped."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    x = x[~torch.isnan(x)]
    n = x.numel()
    if n == 0:
        return float("nan"), float("nan")
    mean = x.mean().item()
    if n < 2:
        return mean, float("nan")
    return mean, x.std(unbiased=True).item() / math.sqrt(n)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique word n-grams / all word n-grams over the completions.

    Words are whitespace-separated; a completion shorter than n contributes nothing; 0 n-grams → NaN.
    """
    total, seen = 0, set()
    for t in texts:
        words = t.split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else float("nan")


Z95 = 1.959963984540054   # two-sided 95% normal quantile


def _front(n: int, valid: Sequence[bool], dominates) -> list[bool]:
    """Mask of the points (valid ones only) that no other valid point dominates."""
    return [valid[i] and not any(j != i and valid[j] and dominates(j, i) for j in range(n)) for i in range(n)]


def pareto_front(kl: Sequence[Sequence[float]], reward: Sequence[Sequence[float]], z: float = Z95) -> list[bool]:
    """KL–reward Pareto front beyond noise, from paired per-prompt values.

    kl, reward: one sequence per point of per-prompt values (k1 KL, reward), all points on the same
    prompts in the same order. Point B dominates point A when, over the prompts where both are
    finite, the per-prompt differences d = B − A have both intervals mean ± z·s.e. (paired, the
    s.e. of the mean difference) on B's side of 0: KL lower and reward higher. A point within noise
    of a better one is therefore kept. Points without finite values are never on the front; with
    fewer than 2 prompts nothing is beyond noise and every valid point is on the front.
    """
    pts = [(torch.as_tensor(k, dtype=torch.float64), torch.as_tensor(r, dtype=torch.float64)) for k, r in zip(kl, reward)]
    valid = [bool((torch.isfinite(k) & torch.isfinite(r)).any()) for k, r in pts]

    def dominates(j: int, i: int) -> bool:
        (kj, rj), (ki, ri) = pts[j], pts[i]
        ok = torch.isfinite(kj) & torch.isfinite(rj) & torch.isfinite(ki) & torch.isfinite(ri)
        d_kl, d_kl_se = mean_se(kj[ok] - ki[ok])
        d_r, d_r_se = mean_se(rj[ok] - ri[ok])
        return d_kl + z * d_kl_se < 0 and d_r - z * d_r_se > 0   # NaN s.e. (n < 2) compares False

    return _front(len(pts), valid, dominates)


def pareto_front_unpaired(kl: Sequence[float], reward: Sequence[float], kl_se: Sequence[float],
                          reward_se: Sequence[float], z: float = Z95) -> list[bool]:
    """KL–reward Pareto front beyond noise from per-point means and standard errors (when per-prompt
    values are not available): B dominates A when their intervals mean ± z·s.e. are separated on
    both axes, B.kl + z·B.kl_se < A.kl − z·A.kl_se and B.reward − z·B.reward_se > A.reward + z·A.reward_se.
    A missing s.e. counts as 0; points with a NaN mean are never on the front."""
    def f(v) -> float:
        return float(v) if v is not None else math.nan

    pts = [(f(k), f(r), f(ks) if not math.isnan(f(ks)) else 0.0, f(rs) if not math.isnan(f(rs)) else 0.0)
           for k, r, ks, rs in zip(kl, reward, kl_se, reward_se)]
    valid = [not (math.isnan(k) or math.isnan(r)) for k, r, _, _ in pts]

    def dominates(j: int, i: int) -> bool:
        (kj, rj, kjs, rjs), (ki, ri, kis, ris) = pts[j], pts[i]
        return kj + z * kjs < ki - z * kis and rj - z * rjs > ri + z * ris

    return _front(len(pts), valid, dominates)
