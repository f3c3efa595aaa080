"""`warp eval`: score every point of a run — the LITI fronts, the RL checkpoints, extra baselines.

Points (names are stable, they key the report):
- `iter{i}/eta={η}`: (1−η)·θ_sft + η·θ_slerp_i (paper Eq. 5 towards θ_sft: the front of iteration i),
  built in memory with `merge.liti` into one reusable model; η=0 is θ_sft, η=1 is θ_slerp_i.
- `iter{i}/run{m}/step{t}`: the saved REINFORCE checkpoints (trajectories), `iter{i}/liti`: the
  saved LITI checkpoint (the next iteration's init).
- `baseline/{name}`: extra checkpoint directories or hub ids.
Every point is cached by content hash (see harness.cache); side-by-side preferences are computed
from the cached per-completion rewards; benchmarks go through harness.bench (lm-eval).
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from merge import liti
from merge.io import atomic_write_json, atomic_write_text
from merge.state_dict import check_unit_interval
from merge.errors import MergeError

from .cache import ResultCache
from .manifest import HarnessError, Manifest, load_manifest, load_prompts
from .score import checkpoint_hash, liti_hash, load_policy, same_vocabulary, score_policy
from . import sxs

DEFAULT_ETAS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 1.0)
SCORE_METRIC = "score"


@dataclass
class Point:
    name: str
    kind: str                     # sft | liti | run | liti_ckpt | baseline
    hash: str
    iteration: int | None = None
    run: int | None = None
    step: int | None = None
    eta: float | None = None
    path: str | None = None       # on-disk checkpoint or hub id; None for in-memory LITI points

    def info(self) -> dict:
        return dataclasses.asdict(self)


def parse_etas(text: str | Sequence[float]) -> list[float]:
    """'0,0.1,0.5' -> [0.0, 0.1, 0.5]; each η must be in [0, 1] (HarnessError naming it)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        try:
            eta = check_unit_interval("eta", float(item) if isinstance(item, str) and item.strip() else item)
        except (MergeError, ValueError):
            raise HarnessError(f"--etas: η must be a number in [0, 1], got {str(item).strip()!r}") from None
        if eta not in out:
            out.append(eta)
    if not out:
        raise HarnessError("--etas: no η given")
    return sorted(out)


def eta_label(eta: float) -> str:
    return f"{eta:g}"


def state_dict_hash(sd: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, sorted by name (for hub baselines)."""
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class HashIndex:
    """Content hashes of on-disk checkpoints, remembered by (path, size, mtime) in EVAL_DIR/hashes.json."""

    def __init__(self, eval_dir: Path) -> None:
        self.file = eval_dir / "hashes.json"
        try:
            self.known = json.loads(self.file.read_text()) if self.file.is_file() else {}
        except (OSError, json.JSONDecodeError):
            self.known = {}

    def __call__(self, path: Path) -> str:
        files = sorted(Path(path).glob("*.safetensors"))
        stamp = ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
        key = str(Path(path).resolve())
        hit = self.known.get(key)
        if hit and hit.get("stamp") == stamp:
            return hit["hash"]
        h = checkpoint_hash(path)
        self.known[key] = {"stamp": stamp, "hash": h}
        atomic_write_json(self.file, self.known)
        return h


def baseline_name(spec: str) -> str:
    p = Path(spec)
    return "baseline/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", p.name if p.exists() else spec)


def check_baseline(spec: str) -> None:
    """Fail fast (before any scoring) on a baseline that cannot be loaded."""
    p = Path(spec)
    if p.exists():
        if not p.is_dir() or not any(p.glob("*.safetensors")):
            raise HarnessError(f"--baseline {spec}: not a checkpoint directory with *.safetensors weights")
        return
    from rl.models import check_model   # builtin aliases (e.g. smollm2-135m-instruct) and hub ids

    try:
        check_model(spec)
    except Exception as e:  # noqa: BLE001 — any failure here means the baseline cannot be loaded
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HarnessError(f"--baseline {spec}: cannot be loaded (not a directory; {first})") from None


def list_points(manifest: Manifest, etas: Sequence[float], hashes: HashIndex) -> list[Point]:
    """The run's points in report order: per iteration the LITI front, then its RL checkpoints."""
    sft_hash = hashes(manifest.sft.path)
    points = [Point("sft", "sft", sft_hash, iteration=0, step=0, eta=0.0, path=str(manifest.sft.path))]
    for i in manifest.iterations:
        slerp = manifest.slerp(i)
        slerp_hash = hashes(slerp.path)
        for eta in etas:
            points.append(Point(f"iter{i}/eta={eta_label(eta)}", "liti", liti_hash(sft_hash, slerp_hash, eta),
                                iteration=i, step=slerp.step, eta=eta))
    for c in sorted(manifest.by_role("run"), key=lambda c: (c.iteration, c.run, c.step)):
        points.append(Point(f"iter{c.iteration}/run{c.run}/step{c.step}", "run", hashes(c.path), iteration=c.iteration,
                            run=c.run, step=c.step, path=str(c.path)))
    for c in sorted(manifest.by_role("liti"), key=lambda c: c.iteration):
        points.append(Point(f"iter{c.iteration}/liti", "liti_ckpt", hashes(c.path), iteration=c.iteration,
                            step=c.step, path=str(c.path)))
    return points


def score_settings(manifest: Manifest, prompts: list[dict], sft_hash: str, seed: int, batch_size: int,
                   rm_hash: str | None) -> dict:
    """Everything a cached score depends on besides the policy's own weights."""
    phash = hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()
    return {"prompts": phash, "n_prompts": len(prompts), "generation": dataclasses.asdict(manifest.task.generation),
            "seed": seed, "batch_size": batch_size, "reward_model": manifest.task.reward_model,
            "reward_model_hash": rm_hash, "reward_with_prompt": manifest.task.reward_with_prompt,
            "control_reward": manifest.task.control_reward, "sft": sft_hash, "kl_temperature": "sampling"}


class Scorer:
    """Holds π_sft, the LITI work model and the reward models; scores points not yet cached."""

    def __init__(self, manifest: Manifest, prompts: list[dict], cache: ResultCache, settings: dict,
                 seed: int, batch_size: int, device: str | None = None) -> None:
        self.m, self.prompts, self.cache, self.settings = manifest, prompts, cache, settings
        self.seed, self.batch_size = seed, batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.sft_model, self.tok = load_policy(manifest.sft.path, "sft checkpoint")
        self.sft_model.to(self.device)
        self._work = None
        self._slerp_sd: tuple[int, dict] | None = None
        self._rewards = None
        self.computed: list[str] = []

    @property
    def rewards(self) -> dict:
        """The run's proxy and control rewards, built by the same function the training used."""
        if self._rewards is None:
            from rl.rewards import task_rewards

            t = self.m.task
            self._rewards = task_rewards(self.m.reward_model_spec(), t.control_reward, t.reward_with_prompt,
                                         base_dir=self.m.run_dir, device=self.device)
        return self._rewards

    def liti_model(self, point: Point):
        """The reusable work model loaded with (1−η)·θ_sft + η·θ_slerp_i (merge.liti); slerp_i loaded once per iteration."""
        if self._work is None:
            self._work = copy.deepcopy(self.sft_model)
        if self._slerp_sd is None or self._slerp_sd[0] != point.iteration:
            slerp_model, _ = load_policy(self.m.slerp(point.iteration).path, f"iteration {point.iteration} slerp checkpoint")
            self._slerp_sd = (point.iteration, {k: v.detach().to(self.device) for k, v in slerp_model.state_dict().items()})
            del slerp_model
        sft_sd = self.sft_model.state_dict()
        try:
            weights = liti(sft_sd, self._slerp_sd[1], point.eta)
        except MergeError as e:
            raise HarnessError(f"iteration {point.iteration}: slerp checkpoint does not match sft: {e}") from None
        self._work.load_state_dict(weights)
        return self._work, self.tok

    def entry(self, point: Point) -> dict | None:
        return self.cache.get(point.hash, SCORE_METRIC, self.settings)

    def score(self, point: Point) -> dict:
        """Metrics of `point`, from the cache or computed (then cached with its completions)."""
        hit = self.entry(point)
        if hit is not None:
            return hit["value"]
        if point.kind == "sft":
            model, tok = self.sft_model, self.tok
        elif point.kind == "liti":
            model, tok = self.liti_model(point)
        else:
            model, tok = load_policy(point.path, "baseline" if point.kind == "baseline" else "checkpoint")
            model.to(self.device)
        sft = self.sft_model if same_vocabulary(tok, self.tok) else None
        result = score_policy(model, tok, sft, self.prompts, self.rewards, self.m.task.generation,
                              seed=self.seed, batch_size=self.batch_size, desc=point.name)
        self.cache.put(point.hash, SCORE_METRIC, self.settings, result.metrics, result.records)
        self.computed.append(point.name)
        if model is not self._work and model is not self.sft_model:
            del model
            gc.collect()
        return result.metrics

    def records(self, point: Point) -> list[dict]:
        return self.cache.records(point.hash, SCORE_METRIC, self.settings)


def reward_model_hash(manifest: Manifest) -> str | None:
    spec = manifest.reward_model_spec()
    p = Path(spec)
    return checkpoint_hash(p) if p.is_dir() and any(p.glob("*.safetensors")) else None


def opponents(points: list[Point], manifest: Manifest) -> list[Point]:
    """Baselines for side-by-side: SFT, each REINFORCE run's last checkpoint, each iteration's SLERP
    (η=1, i.e. the other iterations), and the external baselines."""
    opp: dict[str, Point] = {p.name: p for p in points if p.kind == "sft"}
    last: dict[tuple, Point] = {}
    for p in points:
        if p.kind == "run":
            key = (p.iteration, p.run)
            if key not in last or p.step > last[key].step:
                last[key] = p
    for p in last.values():
        opp[p.name] = p
    for p in points:
        if (p.kind == "liti" and p.eta == 1.0) or p.kind == "baseline":
            opp.setdefault(p.name, p)
    return list(opp.values())


def side_by_side(points: list[Point], records: dict[str, list[dict]], opps: list[Point], proxy_is_vader: bool,
                 seed: int = 0, n_boot: int = 1000) -> list[dict]:
    """Win rate / graded score of every point against every opponent, for the proxy and control judges."""
    rows = []
    for a in points:
        ra = records[a.name]
        for b in opps:
            if b.hash == a.hash:
                continue
            rb = records[b.name]
            if [r["id"] for r in ra] != [r["id"] for r in rb]:
                raise HarnessError(f"side-by-side {a.name} vs {b.name}: the points were scored on different prompts")
            ya, yb = [r["reward"] for r in ra], [r["reward"] for r in rb]
            judges = {"proxy": sxs.judge_control(ya, yb) if proxy_is_vader else sxs.judge_proxy(ya, yb),
                      "control": sxs.judge_control([r["control_reward"] for r in ra], [r["control_reward"] for r in rb])}
            for judge, p in judges.items():
                rows.append({"point": a.name, "opponent": b.name, "judge": judge, **sxs.win_rate(p, n_boot=n_boot, seed=seed)})
    return rows


def select_points(points: Sequence[Point], selectors: Sequence[str]) -> list[Point]:
    """The points named by `selectors` (point names such as 'iter2/eta=1', or kinds: sft, liti,
    liti_ckpt, run, baseline); all points when there are none. An unmatched selector is an error."""
    if not selectors:
        return list(points)
    for sel in selectors:
        if not any(sel in (p.name, p.kind) for p in points):
            names = ", ".join(sorted({p.kind for p in points} | {p.name for p in points}))
            raise HarnessError(f"--bench-on: {sel!r} names no point (points and kinds: {names})")
    return [p for p in points if p.name in selectors or p.kind in selectors]


def run_eval(run_dir: str | Path, out: str | Path, etas: Sequence[float] = DEFAULT_ETAS, n_prompts: int | None = 64,
             baselines: Sequence[str] = (), batch_size: int = 16, seed: int = 0, tasks: Sequence[str] = (),
             limit: int | None = None, split: str = "test", num_fewshot: int | None = None,
             max_gen_toks: int | None = None, device: str | None = None, bench_on: Sequence[str] = ()) -> dict:
    """Score a run dir into EVAL_DIR (cached); write EVAL_DIR/eval.json and completions/*.jsonl.

    Returns the eval summary: points with metrics, side-by-side rows, benchmark rows, manifest info.
    """
    etas = parse_etas(etas)
    if tasks:
        from .bench import resolve_tasks

        resolve_tasks(tasks)  # an unknown task is an error before any work
    if batch_size < 1:
        raise HarnessError(f"--batch-size must be ≥ 1, got {batch_size}")
    if n_prompts is not None and n_prompts < 1:
        raise HarnessError(f"--prompts must be ≥ 1, got {n_prompts}")
    manifest = load_manifest(run_dir)
    if not manifest.complete:
        warnings.warn(f"{manifest.run_dir}: the run is not complete (still running, or stopped early); "
                      f"scoring the {len(manifest.checkpoints)} checkpoint(s) present", RuntimeWarning, stacklevel=2)
    for spec in baselines:
        check_baseline(spec)
    if split not in manifest.task.prompts:
        raise HarnessError(f"{manifest.run_dir / 'manifest.json'}: task.prompts has no split {split!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(manifest.prompt_file(split), n_prompts)
    hashes = HashIndex(out)
    cache = ResultCache(out)
    points = list_points(manifest, etas, hashes)
    settings = score_settings(manifest, prompts, hashes(manifest.sft.path), seed, batch_size, reward_model_hash(manifest))
    scorer = Scorer(manifest, prompts, cache, settings, seed, batch_size, device=device)
    for spec in baselines:
        path = Path(spec)
        if path.is_dir():
            h = hashes(path)
        else:
            model, _ = load_policy(spec, "baseline")
            h = state_dict_hash(model.state_dict())
            del model
        points.append(Point(baseline_name(spec), "baseline", h, path=str(path.resolve()) if path.is_dir() else spec))
    bench_points = select_points(points, bench_on) if tasks else []   # a bad selector fails before any work
    metrics = {}
    for p in tqdm(points, desc="points", unit="point"):
        metrics[p.name] = scorer.score(p)
    records = {p.name: scorer.records(p) for p in points}
    for p in points:
        atomic_write_text(out / "completions" / (p.name.replace("/", "__") + ".jsonl"),
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[p.name]))
    opps = opponents(points, manifest)
    records.update({o.name: records.get(o.name) or scorer.records(o) for o in opps})
    sxs_rows = side_by_side(points, records, opps, proxy_is_vader=manifest.task.reward_model == "vader", seed=seed)
    bench_rows: list[dict] = []
    if tasks:
        from .bench import run_benchmarks

        bench_rows = run_benchmarks(bench_points, scorer, cache, out, tasks, limit=limit, num_fewshot=num_fewshot,
                                    gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None, seed=seed)
    summary = {
        "format": 1,
        "run_dir": str(run_dir),   # as the user named it: reports should not record this machine's absolute paths
        "config": manifest.config,
        "task": {"reward_model": manifest.task.reward_model, "reward_with_prompt": manifest.task.reward_with_prompt,
                 "control_reward": manifest.task.control_reward,
                 "generation": dataclasses.asdict(manifest.task.generation), "split": split},
        "settings": {"etas": etas, "n_prompts": len(prompts), "seed": seed, "batch_size": batch_size,
                     "baselines": list(baselines), "tasks": list(tasks), "limit": limit, "bench_on": list(bench_on),
                     "num_fewshot": num_fewshot, "max_gen_toks": max_gen_toks,
                     "tie_band": sxs.TIE_BAND, "vader_scale": sxs.VADER_SCALE},
        "points": [{**p.info(), "metrics": metrics[p.name]} for p in points],
        "sxs": sxs_rows,
        "bench": bench_rows,
        "computed": scorer.computed,
    }
    atomic_write_json(out / "eval.json", _finite(summary))
    return summary


def _finite(obj):
    """JSON has no NaN: write NaN/inf as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
