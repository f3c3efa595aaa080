"""WARP, Algorithm 1 of the paper (DESIGN.md): I iterations × M RL runs, SLERP, LITI.

    θ_init ← θ_sft
    for i in 1..I:
        θ_m ← RL(θ_init, seed m) for m in 1..M        (EMA anchor from θ_init; rl/run.py; on the executor)
        θ_slerp ← SLERP(θ_init, {θ_m}, λ)             (merge.slerp, one angle per tensor; streamed from disk)
        θ_init ← LITI(θ_init, θ_slerp, η)             (merge.liti; next iteration starts here)

Every step is skipped when its output already exists, so re-running the same command resumes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from merge.errors import WarpError
from merge.threads import set_threads

from .config import RLConfig
from .engine import resolve_engine
from .executor import make_executor
from .models import resolve_model
from .rundir import RunDir
from .run import train_run
from .trl_backend import check_trl_config, train_run_trl


def warp(cfg: RLConfig, out: str | Path, progress: bool = True, executor=None, overrides: Sequence[str] = (),
         **run_kwargs) -> Path:
    """Run Algorithm 1 into the run directory `out` (resuming what is there); returns its path.
    `executor` (rl.executor) runs the M runs of an iteration; by default the config's. `overrides`
    (the `key=value` strings `cfg` was built with) are recorded in the manifest."""
    set_threads(cfg.threads)   # once, before any work: a resumed process merges like the first
    if cfg.trainer == "trl":
        check_trl_config(cfg)
    # 'auto' becomes the engine that will sample, so the run directory records (and a resume checks) it
    cfg.engine.name = resolve_engine(cfg.engine.name, resolve_model(cfg.policy))
    with RunDir.open(out, cfg, overrides) as rd:        # checks inputs; refuses another config's run dir; locks it
        try:
            rd.prepare(progress=progress)    # sft checkpoint, prompt files, reward model
        except WarpError:
            rd.discard()                     # bad input found while preparing: leave nothing
            raise
        executor = executor or make_executor(cfg.executor)
        rl_run = train_run if cfg.trainer == "native" else train_run_trl                # one RL run: ours or TRL's
        lam, eta, M = cfg.warp.lam, cfg.warp.eta, cfg.warp.runs
        init = "sft"                                                              # θ_init ← θ_sft
        for i in range(1, cfg.warp.iterations + 1):
            futures = [executor.submit(rl_run, cfg, rd.path, i, m, init, rd.manifest.task, progress=progress,
                                       **run_kwargs) for m in range(1, M + 1)]    # θ_m ← RL(θ_init), m = 1..M
            runs = [rd.add_run(f.result()) for f in futures]
            if not cfg.warp.merge:                                                # plain REINFORCE: no merging
                break
            slerp = rd.merge("slerp", f"iter{i}/slerp", i, init=init, models=runs, lam=lam)    # θ_slerp ← SLERP(θ_init, {θ_m}, λ)
            init = rd.merge("liti", f"iter{i}/liti", i, init=init, models=[slerp], eta=eta)    # θ_init ← LITI(θ_init, θ_slerp, η)
        rd.finish()
        return rd.path
