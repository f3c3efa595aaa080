"""Task arithmetic (Ilharco et al. 2023): θ = θ_init + scale · Σ_m w_m·(θ_m − θ_init)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from ..checks import check_weights
from .base import Method


def task_arithmetic_tensor(init: torch.Tensor, models: Sequence[torch.Tensor], weights: Sequence[float],
                           scale: float = 1.0) -> torch.Tensor:
    """θ_init + scale·Σ w_m δ_m for one tensor, computed in float32 (or wider), in init's dtype."""
    wide = torch.promote_types(init.dtype, torch.float32)
    base = init.to(wide)
    out = base.clone()
    for w, m in zip(weights, models):
        out.add_(m.to(wide) - base, alpha=scale * w)
    return out.to(init.dtype)


@dataclass
class TaskArithmeticParams:
    scale: float = 1.0                      # λ of task arithmetic (any real number)
    weights: Optional[List[float]] = None   # per-model weights, default 1.0 each (may be negative: negation)

    def checked(self, n_models: int) -> "TaskArithmeticParams":
        return TaskArithmeticParams(float(self.scale), check_weights(self.weights, n_models, allow_negative=True))


TASK_ARITHMETIC = Method("task_arithmetic", TaskArithmeticParams, uses_init=True, min_models=1, max_models=None,
                         apply=lambda key, init, models, p: (task_arithmetic_tensor(init, models, p.weights, p.scale), False),
                         summary="task arithmetic: θ_init + scale·Σ w_m δ_m")
