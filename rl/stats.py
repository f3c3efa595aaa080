"""Intervals for paired comparisons on the same held-out examples (seeded, so reports reproduce)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampled with replacement), seeded."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def paired_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0) -> dict:
    """mean(a − b) over the same examples, with its bootstrap 95% interval over examples and n."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs the same examples: {a.shape} vs {b.shape}")
    d = a - b
    lo, hi = bootstrap_ci(d, n_boot, seed)
    return {"estimate": float(d.mean()) if d.size else math.nan, "ci_low": lo, "ci_high": hi, "n": int(d.size)}


def verdict(diff: dict, direction: int = 1) -> str:
    """'supported' when the 95% interval excludes 0 in `direction` (+1: a > b), 'contradicted' when
    it excludes 0 the other way, else 'inconclusive'."""
    lo, hi = diff["ci_low"] * direction, diff["ci_high"] * direction
    lo, hi = min(lo, hi), max(lo, hi)
    if lo > 0:
        return "supported"
    if hi < 0:
        return "contradicted"
    return "inconclusive"
