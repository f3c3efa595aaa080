"""WARP, Algorithm 1 of the paper (DESIGN.md): I iterations × M RL runs, SLERP, LITI.

    θ_init ← θ_sft
    for i in 1..I:
        θ_m ← RL(θ_init, seed m) for m in 1..M        (EMA anchor from θ_init; rl/run.py)
        θ_slerp ← SLERP(θ_init, {θ_m}, λ)             (merge.slerp, one angle per tensor)
        θ_init ← LITI(θ_init, θ_slerp, η)             (merge.liti; next iteration starts here)

Every step is skipped when its output already exists, so re-running the same command resumes.
"""
from __future__ import annotations

from pathlib import Path

import torch

import merge
from merge.errors import WarpError

from .config import RLConfig
from .engine import resolve_engine
from .models import resolve_model
from .rundir import RunDir
from .run import train_run


def warp(cfg: RLConfig, out: str | Path, progress: bool = True, **run_kwargs) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)   # once, before any work: a resumed process merges like the first
    # 'auto' becomes the engine that will sample, so the run directory records (and a resume checks) it
    cfg.engine.name = resolve_engine(cfg.engine.name, resolve_model(cfg.policy))
    with RunDir.open(out, cfg) as rd:   # checks inputs; refuses another config's run dir; locks it
        try:
            rd.prepare(progress=progress)                  # sft checkpoint, prompt files, reward model
        except WarpError:
            rd.discard()                                   # bad input found while preparing: leave nothing
            raise
        init = "sft"                                       # θ_init ← θ_sft
        for i in range(1, cfg.warp.iterations + 1):
            runs = rd.train_runs(i, init, train_run, progress=progress, **run_kwargs)   # θ_1..θ_M
            if not cfg.warp.merge:                         # plain REINFORCE baseline: no merging
                break
            lam, eta = cfg.warp.lam, cfg.warp.eta
            slerp = rd.merged(f"iter{i}/slerp", i, "slerp", like=init,           # SLERP of the task vectors θ_m − θ_init
                              compute=lambda: merge.slerp(rd.weights(init), [rd.weights(r) for r in runs], lam))
            liti = rd.merged(f"iter{i}/liti", i, "liti", like=init,              # (1−η)·θ_init + η·θ_slerp
                             compute=lambda: merge.liti(rd.weights(init), rd.weights(slerp), eta))
            init = liti                                                          # θ_init for the next iteration
        rd.finish()
        return rd.path
