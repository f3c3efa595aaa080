"""Spherical interpolation of task vectors (paper Sec. 3.2, Eq. 4; Lemma 1), one angle per tensor.

For two task vectors δ1, δ2 of one tensor with angle Ω:
    slerp(δ1, δ2, λ) = sin((1−λ)Ω)/sinΩ · δ1 + sin(λΩ)/sinΩ · δ2
For M > 2 the paper's recursion: slerp_M = slerp(slerp_{M−1}, δ_M, λ=1/M).
A zero task vector or a near-zero sinΩ (parallel / anti-parallel) falls back to LERP.

Every step of the recursion is a linear combination of the δ_m, so the whole merge is
θ_init + Σ_m c_m·δ_m with coefficients c that depend only on the Gram matrix G_ij = <δ_i, δ_j>.
We compute G in one chunked pass over the inputs, the coefficients in float64 scalars, and the
output in a second chunked pass ((1 − Σc)·θ_init + Σ c_m·θ_m per chunk): two reads of each
input, no full-size float32 temporaries, which keeps the streamed merge near the I/O floor. A NaN
or Inf anywhere in the inputs makes G non-finite, so the Gram pass doubles as the NaN/Inf check
(`Method.checks_finite`): the streamed merge needs no third pass over the inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..checks import check_unit_interval
from ..errors import MergeError
from .base import Method

# Below NORM_EPS a task vector has no direction. Above COS_MAX (|cos Ω|, i.e. sinΩ < 0.032) the
# angle is too close to 0 or π: near 0 SLERP equals LERP to within 1e-4 anyway, and near π the
# coefficients 1/(2cos(Ω/2)) explode and amplify rounding, so fall back to LERP (mergekit's slerp uses the same 0.9995).
NORM_EPS = 1e-12
COS_MAX = 0.9995
# Elements per chunk (1 MB of float32 per buffer): fastest of 2^14..2^20 measured; stays in cache.
CHUNK = 1 << 18


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def task_vector_gram(init: torch.Tensor, models: Sequence[torch.Tensor], chunk: int = CHUNK) -> torch.Tensor:
    """G[i, j] = <θ_i − θ_init, θ_j − θ_init> over all elements of one tensor; float64 [M, M].

    One pass over cache-sized chunks: convert, subtract, dot in float32 (or wider), and sum the
    chunks' dots in float64, so cos Ω is accurate to ~1e-6 even for 10⁸-element tensors.
    """
    wide = _wide(init.dtype)
    base = init.reshape(-1)
    flats = [m.reshape(-1) for m in models]
    n, M = base.numel(), len(models)
    size = min(chunk, max(n, 1))
    fb = torch.empty(size, dtype=wide)
    fs = [torch.empty(size, dtype=wide) for _ in range(M)]
    gram = [[0.0] * M for _ in range(M)]
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        b = fb[: e - s]
        b.copy_(base[s:e])
        ds = [f[: e - s] for f in fs]
        for d, x in zip(ds, flats):
            d.copy_(x[s:e])
            d.sub_(b)
        for i in range(M):
            for j in range(i, M):
                gram[i][j] += torch.dot(ds[i], ds[j]).item()
    for i in range(M):
        for j in range(i):
            gram[i][j] = gram[j][i]
    return torch.tensor(gram, dtype=torch.float64)


def slerp_pair(n1sq: float, n2sq: float, dot: float, lam: float) -> tuple[float, float, bool]:
    """(c1, c2, degenerate) with slerp(δ1, δ2, λ) = c1·δ1 + c2·δ2, from ‖δ1‖², ‖δ2‖², <δ1, δ2>.

    `degenerate` is True when the LERP fallback was used (c1 = 1−λ, c2 = λ): a zero task vector,
    or |cos Ω| > COS_MAX (parallel or anti-parallel task vectors).
    """
    n1, n2 = math.sqrt(max(n1sq, 0.0)), math.sqrt(max(n2sq, 0.0))
    if n1 < NORM_EPS or n2 < NORM_EPS:
        return 1.0 - lam, lam, True
    cos = max(-1.0, min(1.0, dot / (n1 * n2)))
    if abs(cos) > COS_MAX:
        return 1.0 - lam, lam, True
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    return math.sin((1.0 - lam) * omega) / sin_omega, math.sin(lam * omega) / sin_omega, False


def slerp_weights(gram: torch.Tensor, lam: float | None = None) -> tuple[list[float], bool]:
    """Coefficients c (merged δ = Σ c_m δ_m) of the M-way SLERP, from the task vectors' Gram matrix.

    M = 2 uses `lam` (default 0.5); M > 2 the paper's recursion with λ = 1/m at step m.
    Returns (c, any step fell back to LERP).
    """
    G = gram.tolist()
    M = len(G)
    if M == 2:
        lam = 0.5 if lam is None else lam
        c1, c2, deg = slerp_pair(G[0][0], G[1][1], G[0][1], lam)
        return [c1, c2], deg
    c1, c2, degenerate = slerp_pair(G[0][0], G[1][1], G[0][1], 0.5)
    coef = [c1, c2] + [0.0] * (M - 2)
    for j in range(2, M):
        Gc = [sum(G[i][k] * coef[k] for k in range(M)) for i in range(M)]
        acc_sq = sum(coef[i] * Gc[i] for i in range(M))
        p, q, deg = slerp_pair(acc_sq, G[j][j], Gc[j], 1.0 / (j + 1))
        coef = [p * c for c in coef]
        coef[j] += q
        degenerate = degenerate or deg
    return coef, degenerate


def combine_task_vectors(init: torch.Tensor, models: Sequence[torch.Tensor], coef: Sequence[float],
                         chunk: int = CHUNK) -> torch.Tensor:
    """θ_init + Σ_m coef_m·(θ_m − θ_init), in init's dtype.

    Computed chunk-wise in float32 (or wider) as (1 − Σc)·θ_init + Σ c_m·θ_m: one conversion per
    input element and no subtraction; the rounding error is that of the final cast for bf16, and
    a few float32 ulps of |θ| for float32.
    """
    coef = [float(c) for c in coef]
    if sorted(coef) == [0.0] * (len(coef) - 1) + [1.0]:   # an endpoint (λ = 0 or 1): exactly that model
        return models[coef.index(1.0)].to(init.dtype, copy=True)
    wide = _wide(init.dtype)
    base = init.reshape(-1)
    flats = [m.reshape(-1) for m in models]
    n = base.numel()
    out = torch.empty(n, dtype=init.dtype)
    size = min(chunk, max(n, 1))
    fb, fx = torch.empty(size, dtype=wide), torch.empty(size, dtype=wide)
    c0 = 1.0 - sum(coef)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        acc, x = fb[: e - s], fx[: e - s]
        acc.copy_(base[s:e]).mul_(c0)
        for c, f in zip(coef, flats):
            x.copy_(f[s:e])
            acc.add_(x, alpha=c)
        out[s:e].copy_(acc)
    return out.view(init.shape)


def slerp_tensor(init: torch.Tensor, models: Sequence[torch.Tensor], lam: float | None = None,
                 key: str = "") -> tuple[torch.Tensor, bool]:
    """θ_init + SLERP of the task vectors (θ_m − θ_init) of one tensor; init's dtype, plus the fallback flag.

    Shapes: init and every model [*S] → [*S]. M = len(models) ≥ 2; lam only for M = 2. Raises
    MergeError (naming the tensor `key`) whenever the Gram matrix or the coefficients are not finite:
    always when an input holds a NaN/Inf (the callers then name that input), and when finite task
    vectors are so large that their dot products overflow.
    """
    if init.numel() == 0:
        return init.clone(), False
    gram = task_vector_gram(init, models)
    coef, degenerate = slerp_weights(gram, lam)
    if not (bool(torch.isfinite(gram).all()) and all(math.isfinite(c) for c in coef)):
        raise MergeError(f"slerp of tensor {key!r}: task vectors too large (their dot products overflow "
                         f"{_wide(init.dtype)}); non-finite SLERP coefficients")
    return combine_task_vectors(init, models, coef), degenerate


@dataclass
class SlerpParams:
    lam: Optional[float] = None   # λ for M = 2 (default 0.5); must be None for M > 2 (recursion, λ = 1/m)

    def checked(self, n_models: int) -> "SlerpParams":
        if n_models > 2 and self.lam is not None:
            raise MergeError(f"slerp with {n_models} models uses the paper's recursion with λ=1/m; "
                             f"lam must be None, got {self.lam!r}")
        return SlerpParams(None if self.lam is None else check_unit_interval("lam", self.lam))


SLERP = Method("slerp", SlerpParams, uses_init=True, min_models=2, max_models=None,
               apply=lambda key, init, models, p: slerp_tensor(init, models, p.lam, key),
               summary="task-vector SLERP, one angle per tensor (paper Eq. 4), M > 2 by recursion",
               checks_finite=True)
