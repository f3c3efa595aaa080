"""Uniform or weighted weight averaging: model soups (Wortsman et al. 2022), WARM reward models
(Ramé et al. 2024): θ = Σ_m w_m·θ_m / Σ_m w_m. No init needed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from ..checks import check_weights
from .base import Method


def average_tensor(models: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ w_m θ_m / Σ w_m for one tensor, in float32 (or wider), returned in models[0]'s dtype."""
    wide = torch.promote_types(models[0].dtype, torch.float32)
    total = float(sum(weights))
    out = torch.zeros(models[0].shape, dtype=wide)
    for w, m in zip(weights, models):
        out.add_(m.to(wide), alpha=w / total)
    return out.to(models[0].dtype)


@dataclass
class AverageParams:
    weights: Optional[List[float]] = None   # default: uniform (model soup / WARM)

    def checked(self, n_models: int) -> "AverageParams":
        return AverageParams(check_weights(self.weights, n_models))


AVERAGE = Method("average", AverageParams, uses_init=False, min_models=2, max_models=None,
                 apply=lambda key, init, models, p: (average_tensor(models, p.weights), False),
                 summary="uniform / weighted average of weights (model soups, WARM)")
