"""`warp claims CONFIG --out DIR --results results/NAME`: the paper's claims tested as claims.

One YAML (configs/claims.yaml) sizes the program; this module runs it in three resumable stages:
1. **runs** — run directories trained with `rl.warp.warp` from the base config plus overrides
   (each recorded in its manifest): `ema` (R EMA-anchored REINFORCE runs from θ_sft),
   `sft_anchor` (S runs anchored at θ_sft), `reinforce_s{k}` (plain REINFORCE, M·T steps: the
   compute of one WARP iteration), `iterations` (WARP with I iterations, M = 2);
2. **scores** — every point (checkpoints, and merges built in memory: SLERP / LERP of run pairs,
   LITI fronts, SLERP of run subsets, extrapolations η > 1) scored by the harness's Scorer on the
   same held-out prompts with the same sampling seeds, cached by content under DIR/eval;
3. **claims** — paired differences over prompts (and over seeds where the claim is about
   training), bootstrap 95% intervals, verdicts, `claims.csv`, `report.md` and plots.

Verdict rule (stated in the report before the numbers): a claim "A > B" is *supported* when the
95% interval of the difference excludes 0 on the positive side, *contradicted* when it excludes 0
on the negative side, *inconclusive* otherwise. "Matched KL" compares curves at common KL values
inside every compared curve's range, by linear interpolation of (mean KL, mean reward), with the
interpolation redone inside every bootstrap replicate so the interval carries it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from merge.errors import WarpError

from .manifest import HarnessError

VERDICT_RULE = ("A claim \"A > B\" is **supported** when the 95% interval of the difference A − B excludes 0 "
                "on the positive side, **contradicted** when it excludes 0 on the negative side, and "
                "**inconclusive** otherwise. Differences are paired: both sides are scored on the same "
                "held-out prompts with the same sampling seeds, and the bootstrap resamples prompts "
                "(and seeds, for claims about training: a, c, d), 2.5–97.5 percentiles.")


class ClaimsError(WarpError):
    """The claims program cannot compute a verdict from what it has (e.g. unpaired prompts)."""


@dataclass
class ClaimsConfig:
    """Sizes of the claims program. The same YAML scales to the paper's setting by changing
    `base` (model, batch, lr) and the budget keys (`steps`, `prompts`, `seeds`, ...)."""

    base: str = "configs/quick.yaml"          # the RL config every run starts from (relative to this file)
    overrides: list[str] = field(default_factory=list)   # applied to every run, before the program's own
    steps: int = 20                           # T, per run
    save_every: int = 5                       # trajectory checkpoints (claims a, c)
    ema_runs: int = 6                         # R: EMA-anchored runs (b, c use disjoint pairs; d uses subsets)
    seeds: int = 3                            # seeds for a (EMA vs SFT runs), c (pairs vs REINFORCE)
    iterations: int = 3                       # claim e
    prompts: int = 256                        # held-out prompts per score
    etas: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])      # LITI fronts (c, e)
    subset_etas: list[float] = field(default_factory=lambda: [0.5, 1.0])          # fronts of M-subsets (d)
    lambdas: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])        # SLERP vs LERP (b)
    extrapolate: list[float] = field(default_factory=lambda: [1.25, 1.5, 2.0])      # η > 1 (g)
    max_m: int = 5                            # d: M = 1..max_m
    subsets_per_m: int = 3                    # d: subsets of the R runs per M
    kl_fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])    # matched-KL grid
    n_boot: int = 2000
    seed: int = 0                             # sampling seed of the scores and the bootstrap
    engine: str = "auto"
    warm_predictions: Optional[str] = "results/warm3-minilm/held_out_predictions.json"   # claim f

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise HarnessError(msg)

        need(self.steps >= 1 and self.save_every >= 1, "steps and save_every must be ≥ 1")
        need(self.seeds >= 1 and self.ema_runs >= 2 * self.seeds,
             f"ema_runs must be ≥ 2·seeds (disjoint pairs), got {self.ema_runs} and {self.seeds}")
        need(2 <= self.max_m <= self.ema_runs, f"max_m must be in [2, ema_runs], got {self.max_m}")
        need(self.iterations >= 2, f"iterations must be ≥ 2, got {self.iterations}")
        need(self.prompts >= 1 and self.n_boot >= 100 and self.subsets_per_m >= 1, "prompts, n_boot, subsets_per_m")
        need(all(0 < e <= 1 for e in self.etas + self.subset_etas), "etas and subset_etas must be in (0, 1]")
        need(all(0 < x < 1 for x in self.lambdas), "lambdas must be in (0, 1)")
        need(all(e > 1 for e in self.extrapolate), "extrapolate values must be > 1")
        need(all(0 < f < 1 for f in self.kl_fractions), "kl_fractions must be in (0, 1)")


# ---- stage 1: runs ------------------------------------------------------------------------------

def run_specs(cc: ClaimsConfig, base_seed: int) -> dict[str, list[str]]:
    """Name → the overrides (on top of `cc.overrides`) of each run directory of the program."""
    T, common = cc.steps, [f"warp.steps={cc.steps}", f"warp.save_every={cc.save_every}", f"eval_prompts={cc.prompts}",
                           "warp.iterations=1"]
    specs = {
        "ema": common + [f"warp.runs={cc.ema_runs}", "warp.lam=null", "reinforce.anchor=ema"],
        "sft_anchor": common + [f"warp.runs={cc.seeds}", "warp.lam=null" if cc.seeds != 2 else "warp.lam=0.5",
                                "reinforce.anchor=sft"] if cc.seeds >= 2 else None,
        "iterations": [f"warp.steps={T}", f"warp.save_every={cc.save_every}", f"eval_prompts={cc.prompts}",
                       f"warp.iterations={cc.iterations}", "warp.runs=2", "warp.lam=0.5", "reinforce.anchor=ema"],
    }
    if specs["sft_anchor"] is None:   # one seed: a single SFT-anchored run (merge off)
        specs["sft_anchor"] = common + ["warp.runs=1", "warp.lam=null", "warp.merge=false", "reinforce.anchor=sft"]
    for s in range(cc.seeds):        # REINFORCE baselines: the compute of one WARP iteration (M = 2 runs of T)
        specs[f"reinforce_s{s}"] = [f"warp.steps={2 * T}", f"warp.save_every={max(1, 2 * T // 4)}",
                                    f"eval_prompts={cc.prompts}", "warp.iterations=1", "warp.runs=1", "warp.lam=null",
                                    "warp.merge=false", "reinforce.anchor=sft", f"seed={base_seed + 1000 + s}"]
    return specs


def load_claims_config(path: str | Path) -> tuple[ClaimsConfig, Path]:
    from merge.config import ConfigError, load_config

    try:
        cc = load_config(ClaimsConfig, path)
    except ConfigError as e:
        raise HarnessError(str(e)) from None
    base = (Path(path).resolve().parent / cc.base) if not Path(cc.base).is_absolute() else Path(cc.base)
    if not base.is_file():
        base = Path(cc.base)
    if not base.is_file():
        raise HarnessError(f"{path}: base: config {cc.base} does not exist")
    return cc, base


def run_stage(cc: ClaimsConfig, base: Path, out: Path, progress: bool = True) -> dict[str, Path]:
    """Train (or resume, or find finished) every run directory; returns name → path."""
    from merge.config import load_config
    from rl.config import RLConfig
    from rl.warp import warp

    base_seed = load_config(RLConfig, base, cc.overrides).seed
    dirs = {}
    for name, extra in run_specs(cc, base_seed).items():
        overrides = list(cc.overrides) + extra
        cfg = load_config(RLConfig, base, overrides)
        path = out / "runs" / name
        manifest = path / "manifest.json"
        if not (manifest.is_file() and json.loads(manifest.read_text()).get("complete")):
            warp(cfg, path, progress=progress, overrides=overrides)
        dirs[name] = path
    return dirs
