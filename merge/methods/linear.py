"""Linear interpolation of weights: LERP, and LITI (paper Sec. 3.3, Eq. 5: (1−η)·θ_init + η·θ_slerp)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_unit_interval
from .base import Method


def lerp_tensor(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """(1−t)·a + t·b, computed in float32 (or wider) and returned in a's dtype. Shapes [*S] → [*S]."""
    wide = torch.promote_types(a.dtype, torch.float32)
    return torch.lerp(a.to(wide), b.to(wide), t).to(a.dtype)


def liti_tensor(init: torch.Tensor, merged: torch.Tensor, eta: float) -> torch.Tensor:
    """LITI (Eq. 5) of one tensor: (1−η)·θ_init + η·θ_merged; η=0 gives init, η=1 gives merged."""
    return lerp_tensor(init, merged, eta)


@dataclass
class LitiParams:
    eta: float = 0.3   # paper default η

    def checked(self, n_models: int) -> "LitiParams":
        return LitiParams(check_unit_interval("eta", self.eta))


@dataclass
class LerpParams:
    t: float = 0.5

    def checked(self, n_models: int) -> "LerpParams":
        return LerpParams(check_unit_interval("t", self.t))


LITI = Method("liti", LitiParams, uses_init=True, min_models=1, max_models=1,
              apply=lambda key, init, models, p: (liti_tensor(init, models[0], p.eta), False),
              summary="LITI (paper Eq. 5): (1−η)·θ_init + η·θ_merged")
LERP = Method("lerp", LerpParams, uses_init=False, min_models=2, max_models=2,
              apply=lambda key, init, models, p: (lerp_tensor(models[0], models[1], p.t), False),
              summary="LERP of two models: (1−t)·θ_a + t·θ_b")
