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


# ---- stage 2: scores ----------------------------------------------------------------------------

class ClaimScorer:
    """Scores checkpoints and in-memory merges on the program's held-out prompts (one Scorer: one
    engine, π_sft and reward models of the `ema` run directory; the same prompts and seeds for every
    point, so all differences are paired), cached by content under OUT/eval."""

    def __init__(self, dirs: dict[str, Path], out: Path, cc: ClaimsConfig, progress: bool = True) -> None:
        import torch

        from rl.engine import EngineError, resolve_engine

        from .cache import HashIndex, ResultCache
        from .evaluate import DEFAULT_BATCH, Scorer, resolve_device, score_settings
        from .manifest import load_manifest, load_prompts

        self.cc, self.dirs, self.progress = cc, dirs, progress
        m = load_manifest(dirs["ema"])
        prompts = load_prompts(m.prompt_file("test"), cc.prompts)
        if len(prompts) < cc.prompts:
            raise HarnessError(f"{dirs['ema']}: only {len(prompts)} held-out prompts, the program asks for {cc.prompts}")
        try:
            engine = resolve_engine(cc.engine, m.sft.path)
        except EngineError as e:
            raise HarnessError(str(e)) from None
        device = resolve_device(None)
        (out / "eval").mkdir(parents=True, exist_ok=True)
        self.hashes = HashIndex(out / "eval")
        settings = score_settings(m, prompts, self.hashes(m.sft.path), cc.seed, DEFAULT_BATCH[engine], device,
                                  self.hashes, engine=engine)
        self.scorer = Scorer(m, prompts, ResultCache(out / "eval"), settings, cc.seed, DEFAULT_BATCH[engine],
                             device=device, engine=engine)
        self.engine, self.n_prompts = engine, len(prompts)
        self._sd: dict[str, dict] = {}
        self._torch = torch

    # -- weights ----------------------------------------------------------------------------------
    def weights(self, path: Path) -> dict:
        """A checkpoint's state dict (as its model holds it: tied weights under both names), memoised."""
        key = str(path)
        if key not in self._sd:
            from rl.models import load_causal_lm

            if len(self._sd) >= 8:
                self._sd.pop(next(iter(self._sd)))
            self._sd[key] = {k: v.detach().clone() for k, v in load_causal_lm(key)[0].state_dict().items()}
        return self._sd[key]

    def content(self, path: Path) -> str:
        return self.hashes(path)

    # -- points -----------------------------------------------------------------------------------
    def checkpoint(self, name: str, path: Path):
        from .evaluate import Point

        if not (path / "config.json").is_file():
            raise HarnessError(f"{name}: checkpoint {path} does not exist (run stage not finished?)")
        return Point(name, "run", self.hashes(path), path=str(path))

    def merged(self, name: str, recipe: dict, build: Callable[[], dict]):
        """A merge built in memory, named by its recipe (method, parameters, inputs' content)."""
        from .evaluate import Point

        h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
        return Point(name, "merge", h, build=build)

    def records(self, point) -> list[dict]:
        self.scorer.score(point)
        return self.scorer.records(point)


def _recipe_slerp(sc: ClaimScorer, init: Path, models: Sequence[Path], lam) -> dict:
    return {"method": "slerp", "lam": lam, "init": sc.content(init), "models": [sc.content(m) for m in models]}


def build_points(sc: ClaimScorer, cc: ClaimsConfig, dirs: dict[str, Path]) -> dict[str, object]:
    """Every point the claims need, by name (built lazily: a cached score never builds its weights)."""
    import merge
    import torch

    T, pts = cc.steps, {}
    ema, sftd = dirs["ema"], dirs["ema"] / "sft"
    final = lambda r: ema / f"iter1/run{r}/final"  # noqa: E731

    def ckpt(run_dir: Path, r: int, t: int, total: int) -> Path:
        return run_dir / f"iter1/run{r}" / ("final" if t == total else f"step_{t:06d}")

    pts["sft"] = sc.checkpoint("sft", sftd)
    steps = list(range(cc.save_every, T + 1, cc.save_every)) + ([T] if T % cc.save_every else [])
    for r in range(1, cc.ema_runs + 1):   # trajectories of the runs claim a compares; finals of all
        for t in (steps if r <= cc.seeds else [T]):
            pts[f"ema/run{r}/step{t}"] = sc.checkpoint(f"ema/run{r}/step{t}", ckpt(ema, r, t, T))
    n_sft = cc.seeds if cc.seeds >= 2 else 1
    for r in range(1, n_sft + 1):
        for t in steps:
            pts[f"sft_anchor/run{r}/step{t}"] = sc.checkpoint(f"sft_anchor/run{r}/step{t}", ckpt(dirs["sft_anchor"], r, t, T))
    RT = 2 * T
    rsteps = list(range(max(1, RT // 4), RT + 1, max(1, RT // 4)))
    for s in range(cc.seeds):
        d = dirs[f"reinforce_s{s}"]
        for t in rsteps:
            pts[f"reinforce_s{s}/step{t}"] = sc.checkpoint(f"reinforce_s{s}/step{t}", ckpt(d, 1, t, RT))

    def slerp_of(runs: Sequence[int], lam=None):
        paths = [final(r) for r in runs]
        lam = 0.5 if len(runs) == 2 and lam is None else lam
        recipe = _recipe_slerp(sc, sftd, paths, lam)
        return recipe, lambda: merge.slerp(sc.weights(sftd), [sc.weights(p) for p in paths], lam)

    def liti_of(name: str, base_recipe: dict, base_build, eta: float):
        recipe = {"method": "liti", "eta": eta, "init": sc.content(sftd), "merged": base_recipe}
        if eta == 1.0:
            recipe = base_recipe
            return sc.merged(name, recipe, base_build)
        if eta > 1.0:   # ExPO-style extrapolation: θ_sft + η·(θ_merged − θ_sft), η > 1
            recipe = {"method": "extrapolate", "eta": eta, "init": sc.content(sftd), "merged": base_recipe}
            def extrapolated():
                init, merged = sc.weights(sftd), base_build()
                return {k: torch.lerp(v.float(), merged[k].float(), eta).to(v.dtype) if v.is_floating_point() else v
                        for k, v in init.items()}
            return sc.merged(name, recipe, extrapolated)
        return sc.merged(name, recipe, lambda: merge.liti(sc.weights(sftd), base_build(), eta))

    for p in range(1, cc.seeds + 1):
        a, b = 2 * p - 1, 2 * p
        for lam in cc.lambdas:
            rec, build = slerp_of([a, b], lam)
            pts[f"pair{p}/slerp/lam={lam:g}"] = sc.merged(f"pair{p}/slerp/lam={lam:g}", rec, build)
            lrec = {"method": "lerp", "t": lam, "models": [sc.content(final(a)), sc.content(final(b))]}
            pts[f"pair{p}/lerp/lam={lam:g}"] = sc.merged(
                f"pair{p}/lerp/lam={lam:g}", lrec,
                (lambda a=a, b=b, lam=lam: merge.lerp(sc.weights(final(a)), sc.weights(final(b)), lam)))
        rec, build = slerp_of([a, b])
        for eta in sorted(set(cc.etas) | ({1.0} | set(cc.extrapolate) if p == 1 else {1.0})):
            pts[f"pair{p}/front/eta={eta:g}"] = liti_of(f"pair{p}/front/eta={eta:g}", rec, build, eta)
    for M in range(1, cc.max_m + 1):
        for subset in subsets(cc.ema_runs, M, cc.subsets_per_m, cc.seeds):
            tag = f"M{M}/" + "-".join(map(str, subset))
            if M == 1:
                rec = {"checkpoint": sc.content(final(subset[0]))}
                build = (lambda r=subset[0]: sc.weights(final(r)))
            else:
                rec, build = slerp_of(subset)
            for eta in cc.subset_etas:
                if M == 1 and eta == 1.0:   # the run's own final checkpoint
                    pts[f"{tag}/eta=1"] = pts[f"ema/run{subset[0]}/step{T}"]
                else:
                    pts[f"{tag}/eta={eta:g}"] = liti_of(f"{tag}/eta={eta:g}", rec, build, eta)
    itd = dirs["iterations"]
    for i in range(1, cc.iterations + 1):
        sl = itd / f"iter{i}/slerp"
        rec = {"checkpoint": sc.content(sl)} if (sl / "config.json").is_file() else {"missing": str(sl)}
        for eta in cc.etas:
            pts[f"iter{i}/front/eta={eta:g}"] = liti_of(f"iter{i}/front/eta={eta:g}", rec,
                                                       (lambda sl=sl: sc.weights(sl)), eta)
    return pts


def subsets(n_runs: int, M: int, k: int, n_pairs: int) -> list[tuple[int, ...]]:
    """k subsets of size M of runs 1..n_runs: for M = 2 the disjoint pairs (1,2), (3,4), ... (shared
    with claims b, c); otherwise k combinations spread evenly over the sorted list."""
    if M == 2:
        return [(2 * p - 1, 2 * p) for p in range(1, min(k, n_pairs) + 1)]
    combos = list(itertools.combinations(range(1, n_runs + 1), M))
    if len(combos) <= k:
        return combos
    return [combos[round(j * (len(combos) - 1) / (k - 1))] for j in range(k)] if k > 1 else combos[:1]


def score_stage(sc: ClaimScorer, points: dict) -> dict[str, list[dict]]:
    """Per-prompt records of every point (scored now or from the cache)."""
    from tqdm.auto import tqdm

    return {name: sc.records(p) for name, p in tqdm(points.items(), desc="claims: points", unit="point",
                                                    disable=None if sc.progress else True)}


# ---- stage 3: claims ------------------------------------------------------------------------------

class Paired:
    """Per-prompt values of points aligned on the same prompt ids, and one shared bootstrap."""

    def __init__(self, records: dict[str, list[dict]], n_boot: int, seed: int) -> None:
        names = list(records)
        if not names:
            raise ClaimsError("no scored points")
        ids = [r["id"] for r in records[names[0]]]
        for n in names[1:]:
            other = [r["id"] for r in records[n]]
            if other != ids:
                raise ClaimsError(f"points {names[0]!r} and {n!r} were scored on different prompts (or in another "
                                  "order): a paired difference needs the same prompts, so no verdict is computed")
        self.ids, self.names = ids, {n: i for i, n in enumerate(names)}
        self.values = {key: np.array([[float(r[key]) for r in records[n]] for n in names])
                       for key in ("reward", "control_reward", "kl_k3")}
        self.n = len(ids)
        rng = np.random.default_rng(seed)
        self.idx = rng.integers(0, self.n, size=(n_boot, self.n))
        self.rng, self.n_boot = rng, n_boot

    def mean(self, name: str, key: str) -> float:
        return float(self.values[key][self.names[name]].mean())

    def boot(self, name: str, key: str) -> np.ndarray:
        """[n_boot] means of `key` over resampled prompts (the same resample for every point)."""
        return self.values[key][self.names[name]][self.idx].mean(axis=1)

    def seeds_idx(self, n_seeds: int) -> np.ndarray:
        """[n_boot, n_seeds] resampled seed indices (a second level of the bootstrap)."""
        return self.rng.integers(0, n_seeds, size=(self.n_boot, n_seeds))


def curve_at(kl: np.ndarray, reward: np.ndarray, k_star: float) -> np.ndarray:
    """Reward at KL = k_star by linear interpolation along each row's curve ([B, P] → [B]); points
    sorted by KL within each row (clamped at the ends)."""
    kl, reward = np.atleast_2d(kl), np.atleast_2d(reward)
    order = np.argsort(kl, axis=1)
    ks, rs = np.take_along_axis(kl, order, 1), np.take_along_axis(reward, order, 1)
    return np.array([np.interp(k_star, k, r) for k, r in zip(ks, rs)])


def _row(claim: str, setting: str, metric: str, est: float, boot: np.ndarray, n: int, seeds: int,
         direction: int = 1) -> dict:
    lo, hi = (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))) if len(boot) else (math.nan, math.nan)
    s_lo, s_hi = (lo, hi) if direction > 0 else (-hi, -lo)
    verdict = "supported" if s_lo > 0 else "contradicted" if s_hi < 0 else "inconclusive"
    return {"claim": claim, "setting": setting, "metric": metric, "estimate": est, "ci_low": lo, "ci_high": hi,
            "n": n, "seeds": seeds, "verdict": verdict}


def _curves(P: Paired, curves: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full-data and bootstrap (KL, reward) of each curve: ([C, P], [C, P], [C, B, P], [C, B, P])."""
    kl = np.array([[P.mean(n, "kl_k3") for n in c] for c in curves])
    rw = np.array([[P.mean(n, "reward") for n in c] for c in curves])
    bkl = np.array([[P.boot(n, "kl_k3") for n in c] for c in curves]).transpose(0, 2, 1)
    brw = np.array([[P.boot(n, "reward") for n in c] for c in curves]).transpose(0, 2, 1)
    return kl, rw, bkl, brw


def matched_kl(P: Paired, a: list[list[str]], b: list[list[str]], fractions: Sequence[float], claim: str,
               metric: str, seed_level: bool) -> tuple[list[dict], list[float]]:
    """Rows: mean over seeds of [curve_a(K*) − curve_b(K*)] at K* = fraction × (the smallest of all
    curves' largest KL), so K* lies inside every curve; bootstrap over prompts (and seeds)."""
    kla, rwa, bkla, brwa = _curves(P, a)
    klb, rwb, bklb, brwb = _curves(P, b)
    top = float(min(kla.max(axis=1).min(), klb.max(axis=1).min()))
    if not top > 0:
        raise ClaimsError(f"claim {claim}: the curves have no KL range to compare on (largest KL {top:.3g})")
    S = len(a)
    sidx = P.seeds_idx(S) if seed_level and S > 1 else np.tile(np.arange(S), (P.n_boot, 1))
    rows, grid = [], []
    for f in fractions:
        k = f * top
        est = float(np.mean([curve_at(kla[s], rwa[s], k)[0] - curve_at(klb[s], rwb[s], k)[0] for s in range(S)]))
        per_seed = np.stack([curve_at(bkla[s], brwa[s], k) - curve_at(bklb[s], brwb[s], k) for s in range(S)], 1)
        boot = np.take_along_axis(per_seed, sidx, 1).mean(axis=1)
        rows.append(_row(claim, f"KL={k:.3g} nats ({f:g} of the common range)", metric, est, boot, P.n, S))
        grid.append(k)
    return rows, grid


def claims_a(P: Paired, cc: ClaimsConfig, steps: list[int]) -> list[dict]:
    n = cc.seeds if cc.seeds >= 2 else 1
    ema = [["sft"] + [f"ema/run{r}/step{t}" for t in steps] for r in range(1, n + 1)]
    sft = [["sft"] + [f"sft_anchor/run{r}/step{t}" for t in steps] for r in range(1, n + 1)]
    rows, _ = matched_kl(P, ema, sft, cc.kl_fractions, "a", "reward(EMA anchor) − reward(SFT anchor) at matched KL",
                         seed_level=True)
    return rows


def claims_b(P: Paired, cc: ClaimsConfig) -> list[dict]:
    rows, S = [], cc.seeds
    sidx = P.seeds_idx(S)
    for lam in cc.lambdas:
        for key, metric in (("reward", "reward(SLERP) − reward(LERP)"), ("kl_k3", "KL(SLERP) − KL(LERP)")):
            d_full = [P.mean(f"pair{p}/slerp/lam={lam:g}", key) - P.mean(f"pair{p}/lerp/lam={lam:g}", key)
                      for p in range(1, S + 1)]
            d_boot = np.stack([P.boot(f"pair{p}/slerp/lam={lam:g}", key) - P.boot(f"pair{p}/lerp/lam={lam:g}", key)
                               for p in range(1, S + 1)], 1)
            rows.append(_row("b", f"λ={lam:g}", metric, float(np.mean(d_full)),
                             np.take_along_axis(d_boot, sidx, 1).mean(1), P.n, S))
    mid, sides = 0.5, [x for x in cc.lambdas if x != 0.5]
    if 0.5 in cc.lambdas and sides:
        full = [P.mean(f"pair{p}/slerp/lam=0.5", "reward") - np.mean([P.mean(f"pair{p}/slerp/lam={x:g}", "reward")
                                                                        for x in sides]) for p in range(1, S + 1)]
        boot = np.stack([P.boot(f"pair{p}/slerp/lam=0.5", "reward") - np.mean(
            [P.boot(f"pair{p}/slerp/lam={x:g}", "reward") for x in sides], 0) for p in range(1, S + 1)], 1)
        rows.append(_row("b", f"λ={mid:g} vs λ∈{{{', '.join(f'{x:g}' for x in sides)}}}",
                         "reward(SLERP, λ=0.5) − mean reward(SLERP, other λ)", float(np.mean(full)),
                         np.take_along_axis(boot, sidx, 1).mean(1), P.n, S))
    return rows


def claims_c(P: Paired, cc: ClaimsConfig, rsteps: list[int]) -> tuple[list[dict], list[list[str]], list[list[str]]]:
    fronts = [["sft"] + [f"pair{p}/front/eta={e:g}" for e in sorted(cc.etas)] for p in range(1, cc.seeds + 1)]
    trajs = [["sft"] + [f"reinforce_s{s}/step{t}" for t in rsteps] for s in range(cc.seeds)]
    rows, _ = matched_kl(P, fronts, trajs, cc.kl_fractions, "c",
                         "reward(LITI front) − reward(REINFORCE, same compute) at matched KL", seed_level=True)
    return rows, fronts, trajs


def claims_d(P: Paired, cc: ClaimsConfig) -> tuple[list[dict], dict]:
    curves = {M: [["sft"] + [f"M{M}/{'-'.join(map(str, s))}/eta={e:g}" for e in sorted(cc.subset_etas)]
                  for s in subsets(cc.ema_runs, M, cc.subsets_per_m, cc.seeds)] for M in range(1, cc.max_m + 1)}
    tops = [float(np.max([P.mean(n, "kl_k3") for n in c])) for cs in curves.values() for c in cs]
    frac = cc.kl_fractions[len(cc.kl_fractions) // 2]
    k = frac * min(tops)
    if not k > 0:
        raise ClaimsError("claim d: the subset fronts have no KL range to compare on")
    at, boots = {}, {}
    for M, cs in curves.items():
        full = [curve_at(np.array([P.mean(n, "kl_k3") for n in c]), np.array([P.mean(n, "reward") for n in c]), k)[0]
                for c in cs]
        per = np.stack([curve_at(np.stack([P.boot(n, "kl_k3") for n in c], 1), np.stack([P.boot(n, "reward") for n in c], 1), k)
                        for c in cs], 1)
        sidx = P.seeds_idx(len(cs))
        at[M] = (float(np.mean(full)), full)
        boots[M] = np.take_along_axis(per, sidx, 1).mean(1)
    rows = [_row("d", f"M={M} vs M=1 at KL={k:.3g}", "reward at fixed KL (M runs) − (1 run)", at[M][0] - at[1][0],
                 boots[M] - boots[1], P.n, len(curves[M])) for M in range(2, cc.max_m + 1)]
    return rows, {"k": k, "at": at, "boots": boots, "curves": curves}


def claims_e(P: Paired, cc: ClaimsConfig) -> tuple[list[dict], list[list[str]]]:
    fronts = [["sft"] + [f"iter{i}/front/eta={e:g}" for e in sorted(cc.etas)] for i in range(1, cc.iterations + 1)]
    rows = []
    for i in range(2, cc.iterations + 1):
        r, _ = matched_kl(P, [fronts[i - 1]], [fronts[0]], cc.kl_fractions, "e",
                          f"reward(iteration {i} front) − reward(iteration 1 front) at matched KL", seed_level=False)
        rows += [{**x, "setting": f"iteration {i} vs 1, {x['setting']}"} for x in r]
    return rows, fronts


def claims_f(path: Path | None, n_boot: int, seed: int) -> list[dict]:
    """WARM vs its members, paired over the same held-out tweets (from `warp train-rm --warm`)."""
    if path is None or not path.is_file():
        return [{"claim": "f", "setting": "no WARM predictions", "metric": "WARM accuracy − mean member accuracy",
                 "estimate": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0, "seeds": 0,
                 "verdict": "inconclusive"}]
    data = json.loads(path.read_text())
    y = np.array(data["labels"])
    rows = []
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    for noise, preds in data["p_positive"].items():
        correct = {k: ((np.array(v) > 0.5).astype(int) == y).astype(float) for k, v in preds.items()}
        members = [v for k, v in correct.items() if k.startswith("member")]
        d = correct["warm"] - np.mean(members, 0)
        rows.append(_row("f", f"{float(noise):.0%} training labels flipped", "WARM accuracy − mean member accuracy",
                         float(d.mean()), d[idx].mean(1), len(y), len(members)))
    return rows


def claims_g(P: Paired, cc: ClaimsConfig) -> list[dict]:
    rows = []
    for eta in cc.extrapolate:
        for key, metric in (("reward", "proxy reward(η) − proxy reward(η=1)"),
                            ("control_reward", "control reward(η) − control reward(η=1)")):
            a, b = f"pair1/front/eta={eta:g}", "pair1/front/eta=1"
            rows.append(_row("g", f"η={eta:g}", metric, P.mean(a, key) - P.mean(b, key), P.boot(a, key) - P.boot(b, key),
                             P.n, 1))
    return rows


# ---- the report -------------------------------------------------------------------------------------

CLAIMS = {
    "a": ("EMA anchor beats the SFT anchor (Fig. 3)", "At matched KL to π_sft, the policy trained against an EMA "
          "anchor has higher reward than one trained against the fixed SFT anchor."),
    "b": ("SLERP beats LERP (Fig. 2, Fig. 3c)", "Merging two policies, SLERP of their task vectors gives higher "
          "reward (and higher KL) than LERP across λ, best near λ = 0.5."),
    "c": ("The LITI front lies above the REINFORCE trajectories (Fig. 4a)", "At matched KL, the LITI front of a "
          "WARP iteration has higher reward than REINFORCE given the same compute."),
    "d": ("More policies, better front (Fig. 4b)", "Reward at a fixed KL grows with the number M of merged policies."),
    "e": ("Iterations push the front up (Fig. 4c)", "At matched KL, a later iteration's LITI front has higher reward "
          "than the first one's."),
    "f": ("WARM beats single reward models under label noise (WARM poster)", "The weight-averaged reward model is "
          "more accurate than its members on held-out data, more so with noisy labels."),
    "g": ("Beyond the paper: extrapolation η > 1 (ExPO)", "Past θ_slerp, does the proxy reward keep rising, and does "
          "the control reward (never optimised) follow it, or fall (reward hacking)?"),
}
COLUMNS = ["claim", "setting", "metric", "estimate", "ci_low", "ci_high", "n", "seeds", "verdict"]


def why_not(claim: str, cc: ClaimsConfig, base_cfg) -> str:
    """A reason, from the program's own sizes, why our task may not reproduce a claim."""
    mu, T = base_cfg.reinforce.mu, cc.steps
    reasons = {
        "a": f"with μ = {mu:g} over T = {T} steps the EMA anchor moves only {1 - (1 - mu) ** T:.0%} of the way towards "
             "the policy, so the two anchors differ little; the paper trains 9k steps",
        "b": "with T = {T} steps the two runs' task vectors are short and their angle near 90°, where SLERP and LERP "
             "differ by a constant factor ≤ √2 that the reward only partly reflects".replace("{T}", str(T)),
        "c": "a 135M policy, a 32-token horizon and a few dozen steps leave REINFORCE far from the regime where its "
             "trajectory bends away from the front",
        "d": f"{cc.ema_runs} runs of T = {T} steps; subsets share runs, so their fronts are correlated",
        "e": f"each iteration trains only T = {T} steps from its init, so the front moves by little per iteration",
        "f": "1,000 training tweets per member, 3 members; a single held-out set",
        "g": "the proxy reward model is small (MiniLM) and saturates; extrapolation also leaves the region it was "
             "trained on",
    }
    return reasons.get(claim, "")


def render(rows: list[dict], figures: dict[str, str], cc: ClaimsConfig, base_cfg, meta: dict) -> str:
    out = ["# Paper claims on the offline tweets task\n",
           f"Program: `{meta['command']}` ({meta['base']}: {meta['policy']}, batch {base_cfg.reinforce.batch_prompts}, "
           f"{base_cfg.generation.max_new_tokens} new tokens, T = {cc.steps} steps per run, β = {base_cfg.reinforce.beta:g}, "
           f"μ = {base_cfg.reinforce.mu:g}, η = {base_cfg.warp.eta:g}). Every score is on the same {meta['n_prompts']} "
           f"held-out prompts with the same sampling seeds (engine: {meta['engine']}); KL is KL(π^T‖π_sft^T) at "
           f"T = {base_cfg.generation.temperature:g}, estimated by k3 (unbiased like k1, but ≥ 0 per token and of lower "
           f"variance, which keeps the curves' KL axis ordered). Wall time: {meta['wall']}.\n",
           "## Verdict rule (fixed before the numbers)\n", VERDICT_RULE + "\n",
           "## Verdicts\n"]
    head = "| claim | setting | metric | estimate [95% CI] | n | seeds | verdict |\n|---|---|---|---|---|---|---|\n"
    table = "".join(f"| {r['claim']} | {r['setting']} | {r['metric']} | {_fmt(r)} | {r['n']} | {r['seeds']} | "
                    f"{r['verdict']} |\n" for r in rows)
    out.append(head + table)
    for c, (title, text) in CLAIMS.items():
        mine = [r for r in rows if r["claim"] == c]
        counts = {v: sum(r["verdict"] == v for r in mine) for v in ("supported", "contradicted", "inconclusive")}
        out.append(f"## {c}. {title}\n")
        out.append(f"Claim: {text}\n")
        out.append(f"Here: {counts['supported']} of {len(mine)} settings supported, {counts['contradicted']} "
                   f"contradicted, {counts['inconclusive']} inconclusive. " + _summary(c, mine) + "\n")
        if counts["supported"] < len(mine) and c != "g":
            out.append(f"Why our task may not reproduce it: {why_not(c, cc, base_cfg)}.\n")
        if c in figures:
            out.append(f"![{c}]({figures[c]})\n")
    return "\n".join(out)


def _fmt(r: dict) -> str:
    if r["estimate"] is None or (isinstance(r["estimate"], float) and math.isnan(r["estimate"])):
        return "–"
    return f"{r['estimate']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"


def _summary(c: str, rows: list[dict]) -> str:
    """One sentence per setting that says only what its interval supports."""
    parts = []
    for r in rows:
        if r["verdict"] == "supported":
            parts.append(f"{r['setting']}: {r['metric']} is positive ({_fmt(r)})")
        elif r["verdict"] == "contradicted":
            parts.append(f"{r['setting']}: {r['metric']} is negative ({_fmt(r)})")
        else:
            parts.append(f"{r['setting']}: not resolved ({_fmt(r)})")
    return "; ".join(parts) + "." if parts else "No rows."


def plot_all(P: Paired, cc: ClaimsConfig, out: Path, steps: list[int], rsteps: list[int], fronts_c, trajs_c,
             d_info: dict, fronts_e, dirs: dict[str, Path]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    figs = {}

    def band(ax, curves, color, label):
        """Seed-averaged reward along a KL grid inside every curve's range, with a bootstrap 95% band."""
        kl, rw, bkl, brw = _curves(P, curves)
        top = float(kl.max(axis=1).min())
        grid = np.linspace(0, top, 25)
        mean = np.array([np.mean([curve_at(kl[s], rw[s], g)[0] for s in range(len(curves))]) for g in grid])
        boot = np.array([np.mean([curve_at(bkl[s], brw[s], g) for s in range(len(curves))], 0) for g in grid])
        lo, hi = np.quantile(boot, 0.025, axis=1), np.quantile(boot, 0.975, axis=1)
        ax.plot(grid, mean, color=color, lw=2, label=label)
        ax.fill_between(grid, lo, hi, color=color, alpha=0.2)
        for s in range(len(curves)):
            ax.plot(kl[s], rw[s], color=color, marker="o", ms=3, lw=0.7, alpha=0.5)

    # a: training curves per anchor, and KL to SFT of the scored checkpoints
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for anchor, color in (("ema", "tab:blue"), ("sft_anchor", "tab:orange")):
        n = cc.seeds if cc.seeds >= 2 or anchor == "ema" else 1
        for r in range(1, n + 1):
            m = dirs[anchor] / f"iter1/run{r}/metrics.jsonl"
            rows = [json.loads(x) for x in m.read_text().splitlines()] if m.is_file() else []
            axes[0].plot([x["step"] for x in rows], [x["reward"] for x in rows], color=color, alpha=0.5,
                         label=f"{'EMA' if anchor == 'ema' else 'SFT'} anchor" if r == 1 else None)
            axes[1].plot([0] + steps, [0] + [P.mean(f"{anchor}/run{r}/step{t}", "kl_k3") for t in steps], color=color,
                         marker="o", alpha=0.7, label=f"{'EMA' if anchor == 'ema' else 'SFT'} anchor" if r == 1 else None)
        band(axes[2], [["sft"] + [f"{anchor}/run{r}/step{t}" for t in steps] for r in range(1, n + 1)], color,
             f"{'EMA' if anchor == 'ema' else 'SFT'} anchor")
    axes[0].set(xlabel="step", ylabel="training reward (batch mean)", title="reward during training")
    axes[1].set(xlabel="step", ylabel="KL(π^T‖π_sft^T), held-out", title="KL to SFT of the checkpoints")
    axes[2].set(xlabel="KL to SFT", ylabel="held-out proxy reward", title="reward vs KL (95% band over prompts, seeds)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "a_anchor_curves.png", dpi=110)
    plt.close(fig)
    figs["a"] = "a_anchor_curves.png"

    # b: reward vs λ, SLERP and LERP
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    lams = [0.0] + list(cc.lambdas) + [1.0]
    for method, color in (("slerp", "tab:green"), ("lerp", "tab:gray")):
        for ax, key, lab in ((axes[0], "reward", "held-out proxy reward"), (axes[1], "kl_k3", "KL to SFT")):
            per_pair = []
            for p in range(1, cc.seeds + 1):
                names = [f"ema/run{2 * p - 1}/step{cc.steps}"] + [f"pair{p}/{method}/lam={x:g}" for x in cc.lambdas] + \
                        [f"ema/run{2 * p}/step{cc.steps}"]
                per_pair.append(np.stack([P.boot(n, key) for n in names], 1))
                ax.plot(lams, [P.mean(n, key) for n in names], color=color, alpha=0.35, lw=0.8)
            boot = np.mean(per_pair, 0)
            mean = np.mean([[P.mean(n, key) for n in [f"ema/run{2 * p - 1}/step{cc.steps}"] +
                             [f"pair{p}/{method}/lam={x:g}" for x in cc.lambdas] + [f"ema/run{2 * p}/step{cc.steps}"]]
                            for p in range(1, cc.seeds + 1)], 0)
            ax.plot(lams, mean, color=color, marker="o", lw=2, label=method.upper())
            ax.fill_between(lams, np.quantile(boot, 0.025, 0), np.quantile(boot, 0.975, 0), color=color, alpha=0.2)
            ax.set(xlabel="λ (0: run a, 1: run b)", ylabel=lab)
    axes[0].set_title("reward vs λ (mean of pairs, 95% band)")
    axes[1].set_title("KL vs λ")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "b_slerp_vs_lerp.png", dpi=110)
    plt.close(fig)
    figs["b"] = "b_slerp_vs_lerp.png"

    # c: fronts with bands and REINFORCE trajectories (Fig. 4a)
    fig, ax = plt.subplots(figsize=(7, 5))
    band(ax, fronts_c, "tab:green", "LITI fronts (WARP, M=2), mean of seeds")
    band(ax, trajs_c, "tab:red", "REINFORCE trajectories (same compute), mean of seeds")
    ax.set(xlabel="KL(π^T‖π_sft^T)", ylabel="held-out proxy reward", title="LITI front vs REINFORCE (95% bands)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "c_front_vs_reinforce.png", dpi=110)
    plt.close(fig)
    figs["c"] = "c_front_vs_reinforce.png"

    # d: reward at fixed KL vs M
    fig, ax = plt.subplots(figsize=(6, 4.5))
    Ms = sorted(d_info["at"])
    for M in Ms:
        ax.scatter([M] * len(d_info["at"][M][1]), d_info["at"][M][1], color="tab:purple", alpha=0.5, s=20)
    means = [d_info["at"][M][0] for M in Ms]
    lo = [np.quantile(d_info["boots"][M], 0.025) for M in Ms]
    hi = [np.quantile(d_info["boots"][M], 0.975) for M in Ms]
    ax.errorbar(Ms, means, yerr=[np.subtract(means, lo), np.subtract(hi, means)], color="black", marker="s", capsize=3,
                label="mean over subsets, 95% CI")
    ax.set(xlabel="M (policies merged by SLERP)", ylabel=f"reward at KL = {d_info['k']:.3g}",
           title="reward at fixed KL vs M (dots: subsets)", xticks=Ms)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "d_reward_vs_M.png", dpi=110)
    plt.close(fig)
    figs["d"] = "d_reward_vs_M.png"

    # e: fronts per iteration
    fig, ax = plt.subplots(figsize=(7, 5))
    palette = sns.color_palette("viridis", len(fronts_e))
    for i, (front, color) in enumerate(zip(fronts_e, palette), start=1):
        kl = [P.mean(n, "kl_k3") for n in front]
        rw = [P.mean(n, "reward") for n in front]
        lo = [np.quantile(P.boot(n, "reward"), 0.025) for n in front]
        hi = [np.quantile(P.boot(n, "reward"), 0.975) for n in front]
        ax.errorbar(kl, rw, yerr=[np.subtract(rw, lo), np.subtract(hi, rw)], color=color, marker="o", capsize=2,
                    label=f"iteration {i}")
    ax.set(xlabel="KL(π^T‖π_sft^T)", ylabel="held-out proxy reward", title="LITI fronts per iteration (95% CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "e_iterations.png", dpi=110)
    plt.close(fig)
    figs["e"] = "e_iterations.png"

    # g: proxy and control reward along η, past 1
    fig, ax = plt.subplots(figsize=(7, 4.5))
    etas = [0.0] + sorted(set(cc.etas) | {1.0}) + sorted(cc.extrapolate)
    names = ["sft"] + [f"pair1/front/eta={e:g}" for e in etas[1:]]
    for key, color, lab in (("reward", "tab:green", "proxy reward (optimised)"),
                            ("control_reward", "tab:blue", "control reward (VADER, never optimised)")):
        m = [P.mean(n, key) for n in names]
        lo = [np.quantile(P.boot(n, key), 0.025) for n in names]
        hi = [np.quantile(P.boot(n, key), 0.975) for n in names]
        ax.errorbar(etas, m, yerr=[np.subtract(m, lo), np.subtract(hi, m)], color=color, marker="o", capsize=2, label=lab)
    ax.axvline(1.0, color="gray", ls=":")
    ax.set(xlabel="η ((1−η)·θ_sft + η·θ_slerp; η > 1 extrapolates)", ylabel="mean (95% CI)",
           title="extrapolation past θ_slerp (pair 1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "g_extrapolation.png", dpi=110)
    plt.close(fig)
    figs["g"] = "g_extrapolation.png"
    return figs


def training_minutes(run_dirs) -> float:
    """Minutes of REINFORCE steps recorded in the run directories' metrics.jsonl (the `time_*` phases)."""
    from merge.io import read_jsonl

    rows = [r for d in run_dirs for r in read_jsonl(Path(d) / "metrics.jsonl", torn_tail_ok=True)]
    return sum(v for r in rows for k, v in r.items() if k.startswith("time_") and isinstance(v, (int, float))) / 60


def run_claims(config: str | Path, out: str | Path, results: str | Path | None, stage: str = "all",
               progress: bool = True, overwrite: bool = False) -> list[dict]:
    """The whole program (or one stage): runs, scores, claims → RESULTS/{claims.csv, report.md, *.png}."""
    import time

    import pandas as pd

    from merge.config import load_config
    from merge.io import DirectoryLock, atomic_directory
    from rl.config import RLConfig

    t0 = time.perf_counter()
    cc, base = load_claims_config(config)
    cc.validate()
    out = Path(out)
    if results is not None and Path(results).exists() and not overwrite and stage in ("all", "claims"):
        raise HarnessError(f"--results {results} already exists (pass --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    with DirectoryLock(out, "warp claims"):
        dirs = run_stage(cc, base, out, progress)
        if stage == "runs":
            return []
        sc = ClaimScorer(dirs, out, cc, progress)
        points = build_points(sc, cc, dirs)
        records = score_stage(sc, points)
        if stage == "scores":
            return []
        P = Paired(records, cc.n_boot, cc.seed)
        base_cfg = load_config(RLConfig, base, cc.overrides)
        T = cc.steps
        steps = list(range(cc.save_every, T + 1, cc.save_every)) + ([T] if T % cc.save_every else [])
        rsteps = list(range(max(1, 2 * T // 4), 2 * T + 1, max(1, 2 * T // 4)))
        rows = claims_a(P, cc, steps) + claims_b(P, cc)
        c_rows, fronts_c, trajs_c = claims_c(P, cc, rsteps)
        d_rows, d_info = claims_d(P, cc)
        e_rows, fronts_e = claims_e(P, cc)
        warm = (Path(config).resolve().parent / cc.warm_predictions) if cc.warm_predictions else None
        rows += c_rows + d_rows + e_rows + claims_f(warm, cc.n_boot, cc.seed) + claims_g(P, cc)
        if results is not None:
            meta = {"command": f"warp claims {config} --out {out}", "base": cc.base, "policy": base_cfg.policy,
                    "n_prompts": P.n, "engine": sc.engine,
                    "wall": f"{(time.perf_counter() - t0) / 60:.1f} min for this invocation; the training steps "
                            f"recorded in the runs' metrics took {training_minutes(dirs.values()):.0f} min (runs and "
                            "scores computed by earlier invocations are reused, not re-timed)"}
            with atomic_directory(results, overwrite=overwrite) as tmp:
                pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp / "claims.csv", index=False)
                figs = plot_all(P, cc, tmp, steps, rsteps, fronts_c, trajs_c, d_info, fronts_e, dirs)
                (tmp / "report.md").write_text(render(rows, figs, cc, base_cfg, meta), encoding="utf-8")
                (tmp / "meta.json").write_text(json.dumps({**meta, "config": dataclasses.asdict(cc)}, indent=2) + "\n")
        return rows
