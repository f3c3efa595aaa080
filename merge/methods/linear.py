"""Linear interpolation of weights: LERP, and LITI (paper Sec. 3.3, Eq. 5: (1−η)·θ_init + η·θ_slerp)."""
from __future__ import annotations

import torch


def lerp_tensor(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """(1−t)·a + t·b, computed in float32 (or wider) and returned in a's dtype."""
    wide = torch.promote_types(a.dtype, torch.float32)
    return torch.lerp(a.to(wide), b.to(wide), t).to(a.dtype)
