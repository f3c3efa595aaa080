"""State-dict layer: validates key sets and shapes, then loops the registered tensor methods over keys.

`StateDict = Mapping[str, torch.Tensor]`. All functions here are pure (they return new tensors)
except `ema_update`, which updates in place. Non-floating-point tensors come from `init` unchanged
(from models[0] for the methods without an init: `average`, `lerp`).
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .checks import check_finite, check_shapes, check_unit_interval
from .errors import MergeError
from .registry import get_method
from .threads import one_intra_op_thread

StateDict = Mapping[str, torch.Tensor]

__all__ = ["StateDict", "check_unit_interval", "check_compatible", "task_vector", "lerp", "liti", "slerp",
           "task_arithmetic", "ties", "dare", "average", "merge_state_dicts", "ema_update"]


def check_compatible(reference: StateDict, others: Sequence[StateDict], ref_name: str = "init",
                     other_names: Sequence[str] | None = None) -> None:
    """Raise MergeError naming the first key that is missing, extra, or of another shape."""
    other_names = other_names or [f"models[{i}]" for i in range(len(others))]
    for obj, name in [(reference, ref_name), *zip(others, other_names)]:
        if not isinstance(obj, Mapping):
            raise MergeError(f"{name} must be a state dict (a mapping of name to tensor), got {type(obj).__name__}")
    check_shapes({k: tuple(t.shape) for k, t in reference.items()},
                 [{k: tuple(t.shape) for k, t in o.items()} for o in others], ref_name, other_names)


def warn_degenerate(method: str, keys: Sequence[str], stacklevel: int = 3) -> None:
    """One warning per merge (not per tensor) listing the tensors that fell back to LERP."""
    if keys:
        shown = ", ".join(keys[:5]) + (f", … (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        warnings.warn(f"{method}: {len(keys)} tensor(s) had a zero or (anti-)parallel task vector and "
                      f"fell back to LERP: {shown}", RuntimeWarning, stacklevel=stacklevel)


def merge_state_dicts(method: str, init: Optional[StateDict], models: Sequence[StateDict],
                      params: Mapping[str, Any] | None = None, _stacklevel: int = 3) -> dict[str, torch.Tensor]:
    """Apply registered merge `method` key by key. `init` is required iff the method uses θ_init.

    Non-float tensors come from the reference (init, or models[0]) unchanged. A NaN/Inf in any
    floating-point input is refused (MergeError naming the input and key) before any arithmetic.
    """
    m = get_method(method)
    models = list(models)
    m.check_count(len(models))
    p = m.make_params(len(models), params)
    if m.uses_init:
        if init is None:
            raise MergeError(f"{method} needs an init state dict")
        ref, ref_name, rest, names = init, "init", models, [f"models[{i}]" for i in range(len(models))]
    else:
        ref, ref_name, rest, names = models[0], "models[0]", models[1:], [f"models[{i}]" for i in range(1, len(models))]
    check_compatible(ref, rest, ref_name, names)
    floats = [k for k, x in ref.items() if x.is_floating_point()]
    out, degenerate = {}, []
    with one_intra_op_thread():   # the same bits on any thread count, and as the streamed merge
        check_finite([(n, {k: sd[k] for k in floats}) for n, sd in [(ref_name, ref), *zip(names, rest)]])
        for k, x in ref.items():
            if not x.is_floating_point():
                out[k] = x.clone()
                continue
            merged, deg = m.apply(k, x if m.uses_init else None, [t[k] for t in models], p)
            out[k] = merged.to(x.dtype)
            if deg:
                degenerate.append(k)
    warn_degenerate(method, degenerate, stacklevel=_stacklevel)
    return out


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
    return merge_state_dicts("lerp", None, [a, b], {"t": check_unit_interval("t", t)}, 4)


def liti(init: StateDict, merged: StateDict, eta: float) -> dict[str, torch.Tensor]:
    """LITI (paper Eq. 5): (1−η)·θ_init + η·θ_merged; η ∈ [0, 1]. η=0 gives init, η=1 merged."""
    check_unit_interval("eta", eta)
    if not isinstance(merged, Mapping):
        raise MergeError(f"merged must be one state dict, got {type(merged).__name__}")
    return merge_state_dicts("liti", init, [merged], {"eta": eta}, 4)


def slerp(init: StateDict, models: Sequence[StateDict], lam: float | None = None) -> dict[str, torch.Tensor]:
    """Task-vector SLERP (paper Eq. 4), one angle per tensor; M > 2 by the paper's recursion.

    M = 2: θ_init + sin((1−λ)Ω)/sinΩ·δ1 + sin(λΩ)/sinΩ·δ2 with δ_m = θ_m − θ_init, λ default 0.5
    (λ=0 gives models[0], λ=1 gives models[1]). M > 2: `lam` must be None, and
    slerp_M = SLERP(θ_init, [slerp_{M−1}, θ_M], λ=1/M). Degenerate tensors fall back to LERP (warned).
    """
    return merge_state_dicts("slerp", init, models, {"lam": lam}, 4)


def task_arithmetic(init: StateDict, models: Sequence[StateDict], scale: float = 1.0,
                    weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """θ_init + scale·Σ_m w_m·(θ_m − θ_init) (task arithmetic); weights default to 1."""
    return merge_state_dicts("task_arithmetic", init, models, {"scale": scale, "weights": weights}, 4)


def ties(init: StateDict, models: Sequence[StateDict], density: float = 0.2, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """TIES-merging of the task vectors: trim to `density`, elect sign, disjoint mean; θ_init + scale·δ."""
    return merge_state_dicts("ties", init, models, {"density": density, "scale": scale}, 4)


def dare(init: StateDict, models: Sequence[StateDict], density: float = 0.5, seed: int = 0, scale: float = 1.0,
         weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """DARE: seeded drop (p = 1 − density) and rescale (1/density) of each task vector, then task arithmetic."""
    return merge_state_dicts("dare", init, models, {"density": density, "seed": seed, "scale": scale,
                                                    "weights": weights}, 4)


def average(models: Sequence[StateDict], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Uniform (default) or weighted average of weights: model soups, WARM. Σ w_m θ_m / Σ w_m."""
    return merge_state_dicts("average", None, models, {"weights": weights}, 4)


def _float_tensors(obj: Union[StateDict, nn.Module], name: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):   # what a checkpoint holds: parameters and persistent buffers, aliases included
        items = list(obj.state_dict(keep_vars=True).items())
    elif isinstance(obj, Mapping):
        items = list(obj.items())
    else:
        raise MergeError(f"{name} must be a state dict or an nn.Module, got {type(obj).__name__}")
    return {k: t for k, t in items if t.is_floating_point()}


def ema_update(ema: Union[StateDict, nn.Module], model: Union[StateDict, nn.Module], mu: float) -> None:
    """In place: θ_ema ← (1−μ)·θ_ema + μ·θ_model (paper Eq. 2, the EMA anchor), fused over tensors.

    Runs every RL step, so it is one `torch._foreach_lerp_` per dtype group (no tensor allocation:
    only Python lists), after one fused NaN/Inf check of both inputs (`checks.first_nonfinite`;
    a non-finite input raises MergeError and nothing is updated). Element-wise, so its bits do not
    depend on the thread count (tested; no `merge.threads` pin needed). A module contributes its
    state_dict entries (parameters and persistent buffers) that are floating point; tensors sharing
    storage (tied weights) are updated once. Tensors of another dtype in `model` are cast (that
    allocates; avoid it).
    """
    mu = check_unit_interval("mu", mu)
    e, m = _float_tensors(ema, "ema"), _float_tensors(model, "model")
    check_compatible(e, [m], "ema", ["model"])
    keys, seen = [], set()
    for k, t in e.items():
        if t.data_ptr() not in seen:   # a tied weight (e.g. lm_head = embed_tokens) is updated once
            seen.add(t.data_ptr())
            keys.append(k)
    check_finite([("ema", {k: e[k] for k in keys}), ("model", {k: m[k] for k in keys})])
    same, cast = ([], []), []
    for k in keys:
        if m[k].dtype == e[k].dtype:
            same[0].append(e[k])
            same[1].append(m[k])
        else:
            cast.append((e[k], m[k]))
    with torch.no_grad():
        if same[0]:
            torch._foreach_lerp_(same[0], same[1], mu)
        for t, src in cast:
            t.lerp_(src.to(t.dtype), mu)
