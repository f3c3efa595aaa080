"""GSM8K / MATH-style benchmarks through lm-eval.

Each point is a checkpoint on disk (LITI points are saved once into EVAL_DIR/checkpoints/<hash>,
atomically, safetensors) and evaluated with lm-eval's `vllm` backend when vLLM and CUDA are
present, else `hf`. Tasks: the project's offline ones in harness/tasks (`champ_math`,
`synth_gsm8k`) and any lm-eval task by name (`gsm8k`, `gsm8k_cot`, `minerva_math`,
`hendrycks_math500`, ...; those need their datasets from the hub). Results are cached per
(checkpoint hash, task, settings).
"""
from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path
from typing import Sequence

from merge.io import atomic_directory

from .manifest import HarnessError

TASKS_DIR = Path(__file__).parent / "tasks"
LOCAL_TASKS = ("champ_math", "synth_gsm8k")
PASS_THROUGH = ("gsm8k", "gsm8k_cot", "minerva_math", "hendrycks_math500")

_manager = None


def task_manager():
    """lm-eval's TaskManager with the project's task folder included (built once)."""
    global _manager
    if _manager is None:
        from lm_eval.tasks import TaskManager

        logging.getLogger("lm-eval").setLevel(logging.WARNING)
        _manager = TaskManager(include_path=str(TASKS_DIR))
    return _manager


def resolve_tasks(tasks: Sequence[str]) -> list[str]:
    """Check every task name against lm-eval's registry (plus ours); unknown → HarnessError naming it."""
    known = set(task_manager().all_tasks)
    for t in tasks:
        if t not in known:
            raise HarnessError(f"--tasks: unknown lm-eval task {t!r} (offline tasks here: {', '.join(LOCAL_TASKS)}; "
                               f"with the hub: {', '.join(PASS_THROUGH)}, ...)")
    return list(tasks)


def backend() -> str:
    """'vllm' when vLLM is importable and CUDA is available, else 'hf'."""
    import torch

    return "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "hf"


def evaluate_checkpoint(path: str | Path, tasks: Sequence[str], limit: int | None = None, num_fewshot: int | None = None,
                        gen_kwargs: dict | None = None, batch_size: int = 8, seed: int = 0) -> list[dict]:
    """Run lm-eval on one checkpoint directory. Returns rows {task, metric, value, se}."""
    import lm_eval

    be = backend()
    import torch

    model_args = {"pretrained": str(path), "dtype": "auto"}
    if be == "hf":
        model_args["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        out = lm_eval.simple_evaluate(model=be, model_args=model_args, tasks=list(tasks), limit=limit,
                                      num_fewshot=num_fewshot, batch_size=batch_size, gen_kwargs=gen_kwargs,
                                      task_manager=task_manager(), log_samples=False, random_seed=seed,
                                      numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                                      bootstrap_iters=1000)  # for a mean metric the s.e. is closed-form
    except Exception as e:  # noqa: BLE001 — a dataset the hub must provide, a model lm-eval cannot run
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HarnessError(f"lm-eval on {path} ({', '.join(tasks)}): {first}") from None
    rows = []
    for task, res in out["results"].items():
        for key, value in res.items():
            if key in ("alias", "sample_len") or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(",")
            se = res.get(f"{metric}_stderr,{filt}")
            rows.append({"task": task, "metric": key, "value": float(value),
                         "se": float(se) if isinstance(se, (int, float)) and math.isfinite(se) else None})
    return rows


def bench_settings(limit, num_fewshot, gen_kwargs, seed) -> dict:
    import lm_eval

    return {"limit": limit, "num_fewshot": num_fewshot, "gen_kwargs": gen_kwargs, "seed": seed, "backend": backend(),
            "lm_eval": lm_eval.__version__}


def point_checkpoint(point, scorer, out: Path) -> Path:
    """The point as a checkpoint directory: its own path, or the LITI weights saved under EVAL_DIR."""
    if point.path is not None:
        return Path(point.path) if Path(point.path).exists() else point.path
    target = out / "checkpoints" / point.hash[:16]
    if not (target / "config.json").is_file():
        model, tok = scorer.liti_model(point)
        with atomic_directory(target, overwrite=True) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
    return target


def run_benchmarks(points, scorer, cache, out: Path, tasks: Sequence[str], limit: int | None = None,
                   num_fewshot: int | None = None, gen_kwargs: dict | None = None, seed: int = 0) -> list[dict]:
    """lm-eval `tasks` on every point (cached per point hash and task); rows {point, task, metric, value, se}."""
    from tqdm.auto import tqdm

    settings = bench_settings(limit, num_fewshot, gen_kwargs, seed)
    rows, done = [], {}
    for p in tqdm(points, desc="lm-eval", unit="point"):
        for task in tasks:
            key = (p.hash, task)
            if key not in done:
                hit = cache.get(p.hash, f"lmeval-{task}", settings)
                if hit is None:
                    res = evaluate_checkpoint(point_checkpoint(p, scorer, out), [task], limit=limit, num_fewshot=num_fewshot,
                                              gen_kwargs=gen_kwargs, seed=seed)
                    cache.put(p.hash, f"lmeval-{task}", settings, {"rows": res})
                    hit = {"value": {"rows": res}}
                done[key] = hit["value"]["rows"]
            rows += [{"point": p.name, **r} for r in done[key]]
    return rows
