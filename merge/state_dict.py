"""State-dict layer: validates key sets and shapes, then loops the tensor methods over keys.

`StateDict = Mapping[str, torch.Tensor]`. All functions here are pure (they return new tensors)
except `ema_update`, which updates in place. Non-floating-point tensors come from `init` unchanged.
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence, Union

import torch
from torch import nn

from .errors import MergeError
from .methods.linear import lerp_tensor
from .methods.slerp import slerp_tensor

StateDict = Mapping[str, torch.Tensor]


def check_unit_interval(name: str, value: float) -> float:
    """Raise MergeError unless 0 ≤ value ≤ 1 (λ, η, μ, t are all weights of a convex combination)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise MergeError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise MergeError(f"{name} must be in [0, 1], got {value!r}")
    return v


def check_compatible(reference: StateDict, others: Sequence[StateDict], ref_name: str = "init",
                     other_names: Sequence[str] | None = None) -> None:
    """Raise MergeError naming the first key that is missing, extra, or of another shape."""
    other_names = other_names or [f"models[{i}]" for i in range(len(others))]
    ref_keys = set(reference)
    for other, name in zip(others, other_names):
        keys = set(other)
        if keys != ref_keys:
            missing = sorted(ref_keys - keys)
            if missing:
                raise MergeError(f"key {missing[0]!r} is in {ref_name} but missing from {name}")
            extra = sorted(keys - ref_keys)
            raise MergeError(f"key {extra[0]!r} is in {name} but not in {ref_name}")
        for k, t in reference.items():
            if tuple(other[k].shape) != tuple(t.shape):
                raise MergeError(f"key {k!r}: shape {tuple(t.shape)} in {ref_name} vs {tuple(other[k].shape)} in {name}")


def warn_degenerate(method: str, keys: Sequence[str]) -> None:
    """One warning per merge (not per tensor) listing the tensors that fell back to LERP."""
    if keys:
        shown = ", ".join(keys[:5]) + (f", … (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        warnings.warn(f"{method}: {len(keys)} tensor(s) had a zero or (anti-)parallel task vector and "
                      f"fell back to LERP: {shown}", RuntimeWarning, stacklevel=3)


def task_vector(model: StateDict, base: StateDict) -> dict[str, torch.Tensor]:
    """δ = θ_model − θ_base per tensor (paper: task vector). Non-float tensors come from base."""
    check_compatible(base, [model], "base", ["model"])
    out = {}
    for k, b in base.items():
        if b.is_floating_point():
            wide = torch.promote_types(b.dtype, torch.float32)
            out[k] = (model[k].to(wide) - b.to(wide)).to(b.dtype)
        else:
            out[k] = b.clone()
    return out


def lerp(a: StateDict, b: StateDict, t: float) -> dict[str, torch.Tensor]:
    """(1−t)·a + t·b per tensor; t ∈ [0, 1]. Non-float tensors come from a."""
    t = check_unit_interval("t", t)
    check_compatible(a, [b], "a", ["b"])
    return {k: lerp_tensor(x, b[k], t) if x.is_floating_point() else x.clone() for k, x in a.items()}


def liti(init: StateDict, merged: StateDict, eta: float) -> dict[str, torch.Tensor]:
    """LITI (paper Eq. 5): (1−η)·θ_init + η·θ_merged; η ∈ [0, 1]. η=0 gives init, η=1 merged."""
    eta = check_unit_interval("eta", eta)
    check_compatible(init, [merged], "init", ["merged"])
    return {k: lerp_tensor(x, merged[k], eta) if x.is_floating_point() else x.clone() for k, x in init.items()}


def validate_slerp_args(n_models: int, lam: float | None) -> float | None:
    """Shared argument rules of SLERP for the in-memory and the streamed forms."""
    if n_models < 2:
        raise MergeError(f"slerp needs at least 2 models, got {n_models}")
    if n_models > 2 and lam is not None:
        raise MergeError(f"slerp with {n_models} models uses the paper's recursion with λ=1/m; lam must be None, got {lam!r}")
    return None if lam is None else check_unit_interval("lam", lam)


def slerp(init: StateDict, models: Sequence[StateDict], lam: float | None = None) -> dict[str, torch.Tensor]:
    """Task-vector SLERP (paper Eq. 4), one angle per tensor; M > 2 by the paper's recursion.

    M = 2: θ_init + sin((1−λ)Ω)/sinΩ·δ1 + sin(λΩ)/sinΩ·δ2 with δ_m = θ_m − θ_init, λ default 0.5
    (λ=0 gives models[0], λ=1 gives models[1]). M > 2: `lam` must be None.
    """
    lam = validate_slerp_args(len(models), lam)
    check_compatible(init, models)
    out, degenerate = {}, []
    for k, x in init.items():
        if not x.is_floating_point():
            out[k] = x.clone()
            continue
        out[k], deg = slerp_tensor(x, [m[k] for m in models], lam)
        if deg:
            degenerate.append(k)
    warn_degenerate("slerp", degenerate)
    return out


def _float_tensors(obj: Union[StateDict, nn.Module], name: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        items = list(obj.named_parameters()) + list(obj.named_buffers())
    elif isinstance(obj, Mapping):
        items = list(obj.items())
    else:
        raise MergeError(f"{name} must be a state dict or an nn.Module, got {type(obj).__name__}")
    return {k: t for k, t in items if t.is_floating_point()}


def ema_update(ema: Union[StateDict, nn.Module], model: Union[StateDict, nn.Module], mu: float) -> None:
    """In place: θ_ema ← (1−μ)·θ_ema + μ·θ_model (paper Eq. 2, the EMA anchor), fused over tensors.

    Runs every RL step, so it is one `torch._foreach_lerp_` over all floating tensors.
    """
    mu = check_unit_interval("mu", mu)
    e, m = _float_tensors(ema, "ema"), _float_tensors(model, "model")
    check_compatible(e, [m], "ema", ["model"])
    keys = list(e)
    with torch.no_grad():
        torch._foreach_lerp_([e[k] for k in keys], [m[k].detach() for k in keys], mu)
