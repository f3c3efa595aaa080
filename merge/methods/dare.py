"""DARE (Yu et al. 2024): drop each task-vector entry with probability p = 1 − density, rescale the
survivors by 1/density (so the expectation is unchanged), then add the task vectors:
θ = θ_init + scale · Σ_m w_m · DARE(δ_m).

Seeded and order-independent: the mask of (tensor key, model m) comes from a generator seeded by
(seed, key, m), so in-memory and streamed merges draw the same masks.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from ..checks import check_density, check_weights
from .base import Method


def dare_generator(seed: int, key: str, index: int) -> torch.Generator:
    """A CPU generator determined by (seed, tensor key, model index) only."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + zlib.crc32(key.encode()) * 101 + index) % (2**63))
    return g


def drop_and_rescale(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Keep each entry with probability `density`, scaled by 1/density; the rest become 0."""
    if density >= 1.0:
        return delta.clone()
    keep = torch.rand(delta.shape, generator=generator) < density
    return torch.where(keep, delta / density, torch.zeros_like(delta))


def dare_tensor(init: torch.Tensor, models: Sequence[torch.Tensor], density: float, seed: int, key: str,
                weights: Sequence[float], scale: float = 1.0) -> torch.Tensor:
    """DARE merge of one tensor (named `key`, for the seeded masks), in init's dtype."""
    wide = torch.promote_types(init.dtype, torch.float32)
    base = init.to(wide)
    out = base.clone()
    for i, (w, m) in enumerate(zip(weights, models)):
        out.add_(drop_and_rescale(m.to(wide) - base, density, dare_generator(seed, key, i)), alpha=scale * w)
    return out.to(init.dtype)


@dataclass
class DareParams:
    density: float = 0.5
    seed: int = 0
    scale: float = 1.0
    weights: Optional[List[float]] = None

    def checked(self, n_models: int) -> "DareParams":
        return DareParams(check_density(self.density), int(self.seed), float(self.scale),
                          check_weights(self.weights, n_models, allow_negative=True))


DARE = Method("dare", DareParams, uses_init=True, min_models=1, max_models=None,
              apply=lambda key, init, models, p: (dare_tensor(init, models, p.density, p.seed, key, p.weights, p.scale), False),
              summary="DARE: seeded drop-and-rescale of task vectors, then task arithmetic")
