"""Pure metric functions: Monte Carlo KL estimators, mean ± standard error, distinct-n.

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


def pareto_front(kl: Sequence[float], reward: Sequence[float]) -> list[bool]:
    """Mask of the KL–reward Pareto front: points no other point beats on both (lower KL, higher
    reward, one strictly). NaNs are never on the front."""
    pts = [(float(k), float(r)) for k, r in zip(kl, reward)]
    out = []
    for i, (k, r) in enumerate(pts):
        if math.isnan(k) or math.isnan(r):
            out.append(False)
            continue
        dominated = any(j != i and not (math.isnan(k2) or math.isnan(r2)) and k2 <= k and r2 >= r and (k2 < k or r2 > r)
                        for j, (k2, r2) in enumerate(pts))
        out.append(not dominated)
    return out
