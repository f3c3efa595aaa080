"""Pure metric functions: Monte Carlo KL estimators, mean ± standard error, distinct-n.

KL(π‖π_sft) is estimated from completions y ~ π (the policy as sampled). Per completion,
    k1(y) = Σ_t log π(y_t|x,y_<t) − log π_sft(y_t|x,y_<t)                (sequence log-ratio)
    k3(y) = Σ_t (r_t − 1) − log r_t,   r_t = π_sft(y_t|·) / π(y_t|·)      (per token, summed)
Both have expectation KL(π‖π_sft) over y ~ π (k3 per token: E_{y_t~π}[r_t − 1] = 0 exactly, so
E[k3] = E[k1]); k1 is the paper's estimator (sum of token log-ratios) and can be negative on one
sample, k3 is ≥ 0 per token and has lower variance when π ≈ π_sft (Schulman's "k3").
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def kl_estimates(logp: torch.Tensor, logp_sft: torch.Tensor, completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-completion k1 and k3 KL(π‖π_sft) estimates, both [B], in nats.

    logp, logp_sft: [B, L] per-token log-probabilities of the sampled tokens under π and π_sft
    (0 off the completion); completion_mask: [B, L], 1 on completion tokens.
    """
    mask = completion_mask.to(logp.dtype)
    log_ratio = (logp - logp_sft) * mask            # log π/π_sft per token
    k1 = log_ratio.sum(-1)
    log_r = -log_ratio                              # log r, r = π_sft/π
    k3 = ((torch.exp(log_r) - 1.0 - log_r) * mask).sum(-1)
    return k1, k3


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
