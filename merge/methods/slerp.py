"""Spherical interpolation of task vectors (paper Sec. 3.2, Eq. 4; Lemma 1), one angle per tensor.

For two task vectors δ1, δ2 of one tensor with angle Ω:
    slerp(δ1, δ2, λ) = sin((1−λ)Ω)/sinΩ · δ1 + sin(λΩ)/sinΩ · δ2
For M > 2 the paper's recursion: slerp_M = slerp(slerp_{M−1}, δ_M, λ=1/M).
A zero task vector or a near-zero sinΩ (parallel / anti-parallel) falls back to LERP.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

# Below these, the angle is numerically meaningless: use LERP instead of dividing by ~0.
NORM_EPS = 1e-12
SIN_EPS = 1e-6


def slerp_coefficients(d1: torch.Tensor, d2: torch.Tensor, lam: float) -> tuple[float, float, bool]:
    """Return (c1, c2, degenerate) such that slerp(d1, d2, lam) = c1·d1 + c2·d2.

    `degenerate` is True when the LERP fallback was used (c1 = 1−λ, c2 = λ).
    """
    n1 = torch.linalg.vector_norm(d1).item()
    n2 = torch.linalg.vector_norm(d2).item()
    if n1 < NORM_EPS or n2 < NORM_EPS:
        return 1.0 - lam, lam, True
    cos = max(-1.0, min(1.0, torch.dot(d1.flatten(), d2.flatten()).item() / (n1 * n2)))
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    if sin_omega < SIN_EPS:
        return 1.0 - lam, lam, True
    return math.sin((1.0 - lam) * omega) / sin_omega, math.sin(lam * omega) / sin_omega, False


def slerp_task_vectors(deltas: Sequence[torch.Tensor], lam: float | None = None) -> tuple[torch.Tensor, bool]:
    """SLERP of M ≥ 2 task vectors of one tensor (float32 or wider). Returns (merged δ, any fallback).

    M = 2 uses `lam` (default 0.5); M > 2 uses the recursion with λ = 1/m at step m.
    """
    if len(deltas) == 2:
        lam = 0.5 if lam is None else lam
        c1, c2, degenerate = slerp_coefficients(deltas[0], deltas[1], lam)
        return c1 * deltas[0] + c2 * deltas[1], degenerate
    acc, degenerate = slerp_task_vectors(deltas[:2], 0.5)
    for m, d in enumerate(deltas[2:], start=3):
        acc, deg = slerp_task_vectors([acc, d], 1.0 / m)
        degenerate = degenerate or deg
    return acc, degenerate


def slerp_tensor(init: torch.Tensor, models: Sequence[torch.Tensor], lam: float | None = None) -> tuple[torch.Tensor, bool]:
    """θ_init + SLERP of the task vectors (θ_m − θ_init); returned in init's dtype, plus the fallback flag."""
    wide = torch.promote_types(init.dtype, torch.float32)
    base = init.to(wide)
    merged, degenerate = slerp_task_vectors([m.to(wide) - base for m in models], lam)
    return (base + merged).to(init.dtype), degenerate
