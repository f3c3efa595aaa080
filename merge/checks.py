"""Argument checks shared by the in-memory, streamed and CLI forms of every merge (one place, one wording)."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from .errors import MergeError



def check_unit_interval(name: str, value: float) -> float:
    """Raise MergeError unless 0 ≤ value ≤ 1 (λ, η, μ, t are all weights of a convex combination)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise MergeError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise MergeError(f"{name} must be in [0, 1], got {value!r}")
    return v


def check_density(value: float) -> float:
    """Raise MergeError unless 0 < density ≤ 1 (fraction of task-vector entries kept)."""
    v = check_unit_interval("density", value)
    if v == 0.0:
        raise MergeError("density must be in (0, 1], got 0")
    return v


def check_weights(weights: Sequence[float] | None, n_models: int, allow_negative: bool = False) -> list[float]:
    """Per-model weights: default all 1.0; one per model; non-negative with a positive sum unless allowed."""
    if weights is None:
        return [1.0] * n_models
    w = [float(x) for x in weights]
    if len(w) != n_models:
        raise MergeError(f"weights has {len(w)} entries but there are {n_models} models")
    if not allow_negative and (any(x < 0 for x in w) or sum(w) <= 0):
        raise MergeError(f"weights must be non-negative with a positive sum, got {w}")
    return w


def check_shapes(reference: Mapping[str, tuple], others: Sequence[Mapping[str, tuple]], ref_name: str,
                 other_names: Sequence[str]) -> None:
    """Raise MergeError naming the first key that is missing, extra, or of another shape.

    Takes key → shape mappings, so state dicts and checkpoint headers share the same check.
    """
    ref_keys = set(reference)
    for other, name in zip(others, other_names):
        keys = set(other)
        if keys != ref_keys:
            missing = sorted(ref_keys - keys)
            if missing:
                raise MergeError(f"key {missing[0]!r} is in {ref_name} but missing from {name}")
            extra = sorted(keys - ref_keys)
            raise MergeError(f"key {extra[0]!r} is in {name} but not in {ref_name}")
        for k, shape in reference.items():
            if tuple(other[k]) != tuple(shape):
                raise MergeError(f"key {k!r}: shape {tuple(shape)} in {ref_name} vs {tuple(other[k])} in {name}")


@torch.no_grad()   # parameters that require grad: no graph
def first_nonfinite(tensors: Sequence[torch.Tensor]) -> Optional[int]:
    """Index of the first floating-point tensor holding a NaN or ±Inf, or None.

    Cheap enough for every RL step: one sum per tensor (NaN and ±Inf propagate through it; fp16
    and float8 summed in float32) and one isfinite over the stacked sums, so one host sync. A sum is
    about twice as fast as `torch._foreach_norm` here (measured: 20 vs 40 ms for 269M floats on 2
    threads). A sum that overflows on finite values is confirmed element-wise before it counts.
    """
    ids = [i for i, t in enumerate(tensors) if t.is_floating_point() and t.numel()]
    if not ids:
        return None
    sums = torch.stack([_sum(tensors[i]) for i in ids])
    finite = torch.isfinite(sums)
    if bool(finite.all()):
        return None
    for j in (~finite).nonzero().flatten().tolist():
        if not bool(torch.isfinite(_summable(tensors[ids[j]])).all()):
            return ids[j]
    return None


def _summable(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else t.float()   # float8


def _sum(t: torch.Tensor) -> torch.Tensor:
    if t.dtype in (torch.bfloat16, torch.float64):
        # bf16 has float32's range (its sum accumulates in float32 and overflows no sooner), and
        # sum(dtype=float32) would first make a float32 copy of it on CPU: 6× slower, measured
        return t.sum()
    return _summable(t).sum(dtype=torch.float32)


def check_finite(inputs: Sequence[tuple[str, Mapping[str, torch.Tensor]]]) -> None:
    """Raise MergeError naming the input and the tensor key of the first NaN/±Inf, e.g.
    "models[1] tensor 'model.layers.0.q_proj.weight' has NaN/Inf values". inputs: (name, state dict)."""
    named = [(name, key, t) for name, sd in inputs for key, t in sd.items()]
    bad = first_nonfinite([t for _, _, t in named])
    if bad is not None:
        name, key, _ = named[bad]
        raise MergeError(f"{name} tensor {key!r} has NaN/Inf values")
