"""TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean of task vectors.

1. trim: keep the `density` fraction of largest-magnitude entries of each δ_m, zero the rest;
2. elect: per entry, the sign of Σ_m trimmed δ_m (the sign with the larger total mass);
3. disjoint mean: average only the trimmed entries that agree with the elected sign.
Result: θ_init + scale · merged δ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..checks import check_density
from .base import Method


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ceil(density·n) entries of largest |δ| (ties broken by index order), zero the rest."""
    n = delta.numel()
    k = min(n, math.ceil(density * n))
    if k >= n:
        return delta.clone()
    flat = delta.reshape(-1)
    out = torch.zeros_like(flat)
    if k > 0:
        idx = torch.topk(flat.abs(), k, sorted=False).indices
        out[idx] = flat[idx]
    return out.view(delta.shape)


def ties_tensor(init: torch.Tensor, models: Sequence[torch.Tensor], density: float, scale: float = 1.0) -> torch.Tensor:
    """TIES merge of one tensor: θ_init + scale·disjoint_mean(trimmed δ_m with the elected sign)."""
    wide = torch.promote_types(init.dtype, torch.float32)
    base = init.to(wide)
    trimmed = torch.stack([trim(m.to(wide) - base, density) for m in models])   # [M, *S]
    sign = torch.sign(trimmed.sum(dim=0))                                          # elected sign
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    total = (trimmed * agree).sum(dim=0)
    count = agree.sum(dim=0).clamp(min=1)
    return (base + scale * total / count).to(init.dtype)


@dataclass
class TiesParams:
    density: float = 0.2   # fraction of entries kept per task vector (the TIES paper's k = 20%)
    scale: float = 1.0

    def checked(self, n_models: int) -> "TiesParams":
        return TiesParams(check_density(self.density), float(self.scale))


TIES = Method("ties", TiesParams, uses_init=True, min_models=2, max_models=None,
              apply=lambda key, init, models, p: (ties_tensor(init, models, p.density, p.scale), False),
              summary="TIES: trim to top-density magnitudes, elect sign, disjoint mean")
