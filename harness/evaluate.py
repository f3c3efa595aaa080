"""`warp eval`: score every point of a run — the LITI fronts, the RL checkpoints, extra baselines.

Points (names are stable, they key the report):
- `iter{i}/eta={η}`: (1−η)·θ_sft + η·θ_slerp_i (paper Eq. 5 towards θ_sft: the front of iteration i),
  built in memory with `merge.liti` into one reusable model; η=0 is θ_sft, η=1 is θ_slerp_i.
- `iter{i}/run{m}/step{t}`: the saved REINFORCE checkpoints (trajectories), `iter{i}/liti`: the
  saved LITI checkpoint (the next iteration's init).
- `baseline/{name}`: extra checkpoint directories or hub ids.
Every point is cached by its content hash under settings that name everything else its score
depends on (see harness.cache, `score_settings`); side-by-side preferences and the Pareto ✓ are
computed from the cached per-completion records; benchmarks go through harness.bench (lm-eval).
One `warp eval` writes an EVAL_DIR at a time (a lock); killed at any moment, a re-run of the same
command resumes from the entries already written and gives the same eval.json.
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import hashlib
import importlib.metadata
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from merge import liti
from merge.io import DirectoryLock, atomic_write_json, atomic_write_text, sweep_stale
from merge.state_dict import check_unit_interval
from merge.errors import MergeError

from .cache import HashIndex, ResultCache
from .manifest import HarnessError, Manifest, load_manifest, load_prompts
from .metrics import Z95, pareto_front
from .score import liti_hash, load_policy, same_vocabulary, score_policy
from . import sxs

DEFAULT_ETAS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 1.0)
SCORE_METRIC = "score"
# Part of every cached score's key. Bump SCORE_VERSION whenever the scoring math changes (harness/score.py,
# the reward functions, the KL estimators), so no cached score computed the old way is reused.
SCORE_VERSION = 4
DTYPE = "float32"      # policies are loaded and scored in this dtype (rl.models.load_causal_lm's default)
DEFAULT_BATCH = {"hf": 16, "vllm": 256}   # prompts per generate call when --batch-size is not given
PARETO_LEVEL = 0.95    # the Pareto ✓ needs dominance beyond paired intervals at this level (z = Z95)


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
    # in-memory weights built on demand (a merge of checkpoints): () -> state dict; `hash` names them
    build: Callable[[], dict] | None = dataclasses.field(default=None, repr=False, compare=False)

    def info(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "build"}


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


def baseline_name(spec: str) -> str:
    p = Path(spec)
    return "baseline/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", p.name if p.exists() else spec)


def check_weights(path: Path, what: str) -> None:
    """Read the header of every *.safetensors file of a checkpoint (a few KB): a truncated or corrupt
    file is an error now, before any work, not halfway through scoring."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise HarnessError(f"{what} {path}: no *.safetensors weights")
    for f in files:
        try:
            with safe_open(str(f), "pt") as fh:
                fh.keys()
        except Exception as e:  # noqa: BLE001 — safetensors raises its own error type for a bad file
            raise HarnessError(f"{what} {f}: unreadable safetensors file ({str(e).strip() or type(e).__name__})") from None


def check_baseline(spec: str) -> None:
    """Fail fast (before any scoring) on a baseline that cannot be loaded."""
    p = Path(spec)
    if p.exists():
        if not p.is_dir():
            raise HarnessError(f"--baseline {spec}: not a checkpoint directory")
        check_weights(p, "--baseline")
        return
    from rl.models import check_model   # builtin aliases (e.g. smollm2-135m-instruct) and hub ids

    try:
        check_model(spec)
    except Exception as e:  # noqa: BLE001 — any failure here means the baseline cannot be loaded
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HarnessError(f"--baseline {spec}: cannot be loaded (not a directory; {first})") from None


def list_points(manifest: Manifest, etas: Sequence[float], hashes: Callable[[Path], str]) -> list[Point]:
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


def model_content_hash(spec: str, hashes: Callable[[Path], str]) -> str | None:
    """Content hash (`hashes`, see harness.cache.content_hash) of the files a model spec loads from:
    a local directory, a builtin alias's directory, or a hub id's snapshot in the local hub cache.
    None when those files are not on this machine (yet), or hold no safetensors weights."""
    p = Path(spec)
    if p.is_dir():
        return hashes(p)
    from rl.models import ALIASES, resolve_model

    if spec in ALIASES:
        return hashes(Path(resolve_model(spec)))
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(spec, local_files_only=True))
    except Exception:  # noqa: BLE001 — not a hub id, or not downloaded: the caller decides
        return None
    return hashes(snapshot) if any(snapshot.glob("*.safetensors")) else None


def reward_identity(spec: str, hashes: Callable[[Path], str]) -> str:
    """What a reward spec scores with: VADER's package version, a model's content hash, or (a hub id
    not in the local cache yet) its name."""
    if spec == "vader":
        return f"vader {importlib.metadata.version('vaderSentiment')}"
    h = model_content_hash(spec, hashes)
    return f"sha256 {h}" if h else f"hub id {spec}"


def resolve_device(device: str | None) -> str:
    """The torch device to score on: `device` checked (HarnessError naming it), else cuda when available."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise HarnessError(f"--device: {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"--device {device}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise HarnessError(f"--device {device}: only cpu and cuda devices are supported")
    return str(dev)


def score_settings(manifest: Manifest, prompts: list[dict], sft_hash: str, seed: int, batch_size: int,
                   device: str, hashes: Callable[[Path], str], engine: str = "hf", engine_dtype: str = "float32") -> dict:
    """Everything a cached score depends on besides the policy's own content (its point hash): the
    scoring code, engine, device and dtype, the library versions, the prompts, the sampling settings,
    π_sft's content (the KL's reference), the reward models' content."""
    import transformers

    t = manifest.task
    dev = torch.device(device)

    # the reward specs as Scorer.rewards resolves them (a path relative to RUN_DIR when there is one)
    control = t.control_reward
    control = str(manifest.run_dir / control) if control != "vader" and (manifest.run_dir / control).exists() else control
    return {"version": SCORE_VERSION, "engine": engine, "engine_dtype": engine_dtype if engine == "vllm" else None,
            "dtype": DTYPE, "device": dev.type,
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "prompts": hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest(),
            "n_prompts": len(prompts), "generation": dataclasses.asdict(t.generation),
            "seed": seed, "batch_size": batch_size, "sft": sft_hash, "kl_temperature": "sampling",
            "reward_model": reward_identity(manifest.reward_model_spec(), hashes),
            "reward_with_prompt": t.reward_with_prompt, "control_reward": reward_identity(control, hashes)}


class Scorer:
    """Holds π_sft, the LITI work model and the reward models; scores points not yet cached."""

    def __init__(self, manifest: Manifest, prompts: list[dict], cache: ResultCache, settings: dict,
                 seed: int, batch_size: int, device: str, engine: str = "hf", engine_dtype: str = "float32") -> None:
        self.m, self.prompts, self.cache, self.settings = manifest, prompts, cache, settings
        self.seed, self.batch_size = seed, batch_size
        self.device = device
        self.engine_name, self.engine_dtype = engine, engine_dtype
        self.engine_used: dict[str, str] = {}      # point name -> engine that sampled it
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

    def weights_model(self, weights: dict):
        """The reusable work model (π_sft's architecture) loaded with `weights`."""
        if self._work is None:
            self._work = copy.deepcopy(self.sft_model)
        self._work.load_state_dict(weights)
        return self._work, self.tok

    def point_model(self, point: Point):
        """(model, tokenizer, directory of its config) of a point: π_sft, the LITI work model loaded
        in memory, or a checkpoint / baseline loaded from its path."""
        if point.kind == "sft":
            return self.sft_model, self.tok, self.m.sft.path
        if point.kind == "liti":
            return (*self.liti_model(point), self.m.sft.path)
        if point.build is not None:
            return (*self.weights_model(point.build()), self.m.sft.path)
        model, tok = load_policy(point.path, "baseline" if point.kind == "baseline" else "checkpoint")
        model.to(self.device)
        from rl.models import resolve_model

        return model, tok, Path(point.path) if Path(str(point.path)).is_dir() else Path(resolve_model(str(point.path)))

    def release(self, model) -> None:
        """Free a point's model unless it is one the scorer keeps (π_sft, the LITI work model)."""
        if model is not self._work and model is not self.sft_model:
            del model
            gc.collect()

    def engine_for(self, model, tok, model_dir):
        """The sampling engine loaded with `model`'s weights (pushed in memory into the one running
        vLLM engine; a model of another architecture is sampled with transformers, with a warning)."""
        from rl.engine import EngineError, get_engine

        try:
            return get_engine(self.engine_name, model, tok, model_dir=model_dir, dtype=self.engine_dtype)
        except EngineError as e:
            raise HarnessError(str(e)) from None

    def score(self, point: Point) -> dict:
        """Metrics of `point`, from the cache or computed (then cached with its completions)."""
        hit = self.cache.get(point.hash, SCORE_METRIC, self.settings)
        if hit is not None and self.cache.path(point.hash, SCORE_METRIC, self.settings, ".jsonl").is_file():
            value = dict(hit["value"])
            self.engine_used[point.name] = value.pop("engine", self.engine_name)
            return value
        model, tok, model_dir = self.point_model(point)
        sft = self.sft_model if same_vocabulary(tok, self.tok) else None
        engine = self.engine_for(model, tok, model_dir)
        result = score_policy(model, tok, sft, self.prompts, self.rewards, self.m.task.generation,
                              seed=self.seed, batch_size=self.batch_size, desc=point.name, engine=engine)
        self.cache.put(point.hash, SCORE_METRIC, self.settings, {**result.metrics, "engine": result.engine}, result.records)
        self.engine_used[point.name] = result.engine
        self.computed.append(point.name)
        self.release(model)
        return result.metrics

    def records(self, point: Point) -> list[dict]:
        return self.cache.records(point.hash, SCORE_METRIC, self.settings)


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


def check_options(n_prompts: int | None, batch_size: int, seed: int, limit: int | None, num_fewshot: int | None,
                  max_gen_toks: int | None) -> None:
    """Refuse out-of-range options (HarnessError naming the option) before any work."""
    bounds = {"--prompts": (n_prompts, 1), "--batch-size": (batch_size, 1), "--seed": (seed, 0), "--limit": (limit, 1),
              "--num-fewshot": (num_fewshot, 0), "--max-gen-toks": (max_gen_toks, 1)}
    for option, (value, low) in bounds.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise HarnessError(f"{option} must be an integer ≥ {low}, got {value!r}")


def check_inputs(manifest: Manifest, baselines: Sequence[str]) -> None:
    """Every checkpoint's weights readable (headers only), the reward model's too, every baseline loadable."""
    for c in manifest.checkpoints:
        check_weights(c.path, "checkpoint")
    rm = Path(manifest.reward_model_spec())
    if rm.is_dir():
        check_weights(rm, "reward model")
    for spec in baselines:
        check_baseline(spec)


def baseline_point(spec: str, hashes: HashIndex) -> Point:
    """A --baseline as a point, hashed by content (a hub model is loaded first, which fetches its files)."""
    path = Path(spec)
    h = model_content_hash(spec, hashes)
    if h is None:
        load_policy(spec, "baseline")
        h = model_content_hash(spec, hashes)
    if h is None:
        raise HarnessError(f"--baseline {spec}: its files are not in the local hub cache, so they cannot be hashed")
    return Point(baseline_name(spec), "baseline", h, path=str(path.resolve()) if path.is_dir() else spec)


def liti_pareto(points: Sequence[Point], records: dict[str, list[dict]]) -> dict[str, bool]:
    """Per LITI point: on its iteration's KL–reward front beyond noise (metrics.pareto_front: paired
    per-prompt differences, both PARETO_LEVEL intervals excluding 0)."""
    out: dict[str, bool] = {}
    for i in sorted({p.iteration for p in points if p.kind == "liti"}):
        front = [p for p in points if p.kind == "liti" and p.iteration == i]
        ids = [r["id"] for r in records[front[0].name]]
        if any([r["id"] for r in records[p.name]] != ids for p in front):
            raise HarnessError(f"iteration {i}: the LITI points were scored on different prompts")
        mask = pareto_front([[r["kl_k1"] for r in records[p.name]] for p in front],
                            [[r["reward"] for r in records[p.name]] for p in front], z=Z95)
        out.update({p.name: on for p, on in zip(front, mask)})
    return out


def run_eval(run_dir: str | Path, out: str | Path, etas: Sequence[float] = DEFAULT_ETAS, n_prompts: int | None = 64,
             baselines: Sequence[str] = (), batch_size: int | None = None, seed: int = 0, tasks: Sequence[str] = (),
             limit: int | None = None, split: str = "test", num_fewshot: int | None = None,
             max_gen_toks: int | None = None, device: str | None = None, bench_on: Sequence[str] = (),
             engine: str = "auto", engine_dtype: str = "float32", executor=None, workers: int = 2) -> dict:
    """Score a run dir into EVAL_DIR (cached); write EVAL_DIR/eval.json and completions/*.jsonl.

    Every input is checked before EVAL_DIR is touched; then EVAL_DIR is locked for the whole run
    (one `warp eval` per EVAL_DIR) and the temporaries of killed writers are swept.
    `engine` samples every point ('auto': vLLM where it can run the policy, else transformers);
    `batch_size` defaults to the engine's (DEFAULT_BATCH). With a Ray `executor` (rl.executor) the
    points not yet cached are spread over `workers` tasks, each holding one engine and writing into
    the cache; this process then reads them back. Returns the eval summary: points with metrics,
    side-by-side rows, benchmark rows, manifest info.
    """
    etas = parse_etas(etas)
    check_options(n_prompts, batch_size if batch_size is not None else 1, seed, limit, num_fewshot, max_gen_toks)
    if engine_dtype not in ("float32", "bfloat16"):
        raise HarnessError(f"--engine-dtype must be float32 or bfloat16, got {engine_dtype!r}")
    device = resolve_device(device)
    if tasks:
        from .bench import resolve_tasks

        resolve_tasks(tasks)
    manifest = load_manifest(run_dir)
    from rl.engine import EngineError, resolve_engine

    try:
        engine = resolve_engine(engine, manifest.sft.path)
    except EngineError as err:
        raise HarnessError(f"--engine: {err}") from None
    batch_size = batch_size if batch_size is not None else DEFAULT_BATCH[engine]
    if not manifest.complete:
        warnings.warn(f"{manifest.run_dir}: the run is not complete (still running, or stopped early); "
                      f"scoring the {len(manifest.checkpoints)} checkpoint(s) present", RuntimeWarning, stacklevel=2)
    if split not in manifest.task.prompts:
        raise HarnessError(f"{manifest.run_dir / 'manifest.json'}: task.prompts has no split {split!r}")
    prompts = load_prompts(manifest.prompt_file(split), n_prompts)
    check_inputs(manifest, baselines)
    if tasks:   # a bad selector fails here, on the point names (no hashing yet)
        select_points(list_points(manifest, etas, lambda path: "") + [Point(baseline_name(b), "baseline", "")
                                                                      for b in baselines], bench_on)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HarnessError(f"--out {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    with DirectoryLock(out, "warp eval"):
        sweep_stale(out)
        return _evaluate(manifest, run_dir, out, etas, prompts, baselines, batch_size, seed, tasks, limit, split,
                         num_fewshot, max_gen_toks, device, bench_on, engine, engine_dtype, executor, workers)


def _scorer(manifest: Manifest, out: Path, etas, prompts, baselines, batch_size, seed, device, engine, engine_dtype):
    """The points of this evaluation (report order) and the Scorer that scores them into the cache."""
    hashes = HashIndex(out)
    points = list_points(manifest, etas, hashes) + [baseline_point(spec, hashes) for spec in baselines]
    settings = score_settings(manifest, prompts, hashes(manifest.sft.path), seed, batch_size, device, hashes,
                              engine=engine, engine_dtype=engine_dtype)
    return points, Scorer(manifest, prompts, ResultCache(out), settings, seed, batch_size, device=device,
                          engine=engine, engine_dtype=engine_dtype)


def score_points_task(run_dir: str, out: str, names: list[str], args: dict) -> list[str]:
    """A worker's share of `warp eval` (an executor task): score the named points into EVAL_DIR's
    cache with this process's own engine. The driver holds EVAL_DIR's lock meanwhile."""
    manifest = load_manifest(run_dir)
    prompts = load_prompts(manifest.prompt_file(args["split"]), args["n_prompts"])
    points, scorer = _scorer(manifest, Path(out), args["etas"], prompts, args["baselines"], args["batch_size"],
                             args["seed"], args["device"], args["engine"], args["engine_dtype"])
    for p in points:
        if p.name in names:
            scorer.score(p)
    return names


def _evaluate(manifest: Manifest, run_dir, out: Path, etas: list[float], prompts: list[dict], baselines, batch_size,
              seed, tasks, limit, split, num_fewshot, max_gen_toks, device, bench_on, engine, engine_dtype,
              executor=None, workers: int = 2) -> dict:
    points, scorer = _scorer(manifest, out, etas, prompts, baselines, batch_size, seed, device, engine, engine_dtype)
    cache = scorer.cache
    if executor is not None and executor.name != "local":
        todo = [p.name for p in points if scorer.cache.get(p.hash, SCORE_METRIC, scorer.settings) is None]
        groups = [todo[w::workers] for w in range(max(1, workers)) if todo[w::workers]]
        args = {"split": split, "n_prompts": len(prompts), "etas": etas, "baselines": list(baselines),
                "batch_size": batch_size, "seed": seed, "device": device, "engine": engine, "engine_dtype": engine_dtype}
        for f in [executor.submit(score_points_task, str(manifest.run_dir), str(out.resolve()), g, args) for g in groups]:
            f.result()
    metrics = {p.name: scorer.score(p) for p in tqdm(points, desc="points", unit="point", disable=None)}
    records = {p.name: scorer.records(p) for p in points}
    for p in points:
        atomic_write_text(out / "completions" / (p.name.replace("/", "__") + ".jsonl"),
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[p.name]))
    on_front = liti_pareto(points, records)
    opps = sxs.opponents(points)
    sxs_rows = sxs.side_by_side(points, records, opps, proxy_is_vader=manifest.task.reward_model == "vader", seed=seed)
    bench_rows, bench_computed = [], []
    if tasks:
        from .bench import run_benchmarks

        bench_rows, bench_computed = run_benchmarks(
            select_points(points, bench_on), scorer, cache, out, tasks, limit=limit, num_fewshot=num_fewshot,
            gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None, seed=seed)
    summary = {
        "format": 1,
        "run_dir": str(run_dir),   # as the user named it: reports should not record this machine's absolute paths
        "config": manifest.config,
        "task": {"reward_model": manifest.task.reward_model, "reward_with_prompt": manifest.task.reward_with_prompt,
                 "control_reward": manifest.task.control_reward,
                 "generation": dataclasses.asdict(manifest.task.generation), "split": split},
        "settings": {"etas": etas, "n_prompts": len(prompts), "seed": seed, "batch_size": batch_size,
                     "engine": engine, "engine_dtype": engine_dtype if engine == "vllm" else None,
                     "baselines": list(baselines), "tasks": list(tasks), "limit": limit, "bench_on": list(bench_on),
                     "num_fewshot": num_fewshot, "max_gen_toks": max_gen_toks,
                     "tie_band": sxs.TIE_BAND, "vader_scale": sxs.VADER_SCALE,
                     "kl_temperature": manifest.task.generation.temperature,
                     "pareto": {"rule": "paired", "level": PARETO_LEVEL}},
        "points": [{**p.info(), "metrics": metrics[p.name], "pareto": on_front.get(p.name),
                    "engine": scorer.engine_used.get(p.name, engine)} for p in points],
        "sxs": sxs_rows,
        "bench": bench_rows,
        "computed": scorer.computed,
        "bench_computed": bench_computed,
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
