"""GSM8K / MATH-style benchmarks through lm-eval.

Each point is evaluated by the project's lm-eval model (`harness.lm_eval_model.WarpLM`, registered
as `warp`) over the scorer's sampling engine: its weights (a LITI point built in memory, or a
checkpoint) are pushed into the running engine — vLLM where it runs, else transformers — and no
checkpoint is written to be read back. Tasks: the project's offline ones in harness/tasks
(`champ_math`, `synth_gsm8k`) and any lm-eval task by name (`gsm8k`, `gsm8k_cot`, `minerva_math`,
`hendrycks_math500`, ...; those need their datasets from the hub). Results are cached per
(checkpoint content hash, task, settings); the settings name the task's content (`task_fingerprint`),
limit, few-shot count, generation overrides, seeds, backend, device, dtype and batch size.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Sequence

from .manifest import HarnessError

TASKS_DIR = Path(__file__).parent / "tasks"
LOCAL_TASKS = ("champ_math", "synth_gsm8k")
PASS_THROUGH = ("gsm8k", "gsm8k_cot", "minerva_math", "hendrycks_math500")
DTYPE = "float32"     # the transformers weights (scoring passes; the HF engine's generation)

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


_FUNCTION = re.compile(r"!function\s+([\w.]+)\.\w+")
_INCLUDE = re.compile(r"^include:\s*['\"]?([^'\"\s#]+)", re.MULTILINE)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _task_files(yaml_path: Path, root: Path, out: dict[str, str]) -> None:
    """sha256 of a task YAML, of the YAMLs it includes and of the Python modules its `!function`
    tags name, keyed by their path relative to the task's folder."""
    name = os.path.relpath(yaml_path, root)
    if name in out or not yaml_path.is_file():
        return
    text = yaml_path.read_text(encoding="utf-8")
    out[name] = hashlib.sha256(text.encode()).hexdigest()
    for module in sorted(set(_FUNCTION.findall(text))):
        code = yaml_path.parent / (module.replace(".", "/") + ".py")
        if code.is_file():
            out[os.path.relpath(code, root)] = _sha256(code)
    for inc in _INCLUDE.findall(text):
        _task_files((yaml_path.parent / inc).resolve(), root, out)


def task_fingerprint(name: str) -> str:
    """sha256 of what an lm-eval task is: lm-eval's version, the task's config as lm-eval resolves
    it (includes merged; this machine's folder names taken out) and the content of every file it is
    made of (its YAML, included YAMLs, the Python modules its `!function` tags name); a group
    adds its subtasks' fingerprints. Its dataset is named by the config, not hashed."""
    import lm_eval

    index = task_manager().task_index
    entry = index[name]
    root = Path(entry.yaml_path).resolve().parent if entry.yaml_path else Path(".")
    files: dict[str, str] = {}
    if entry.yaml_path:
        _task_files(Path(entry.yaml_path).resolve(), root, files)
    config = json.dumps(entry.cfg, sort_keys=True, default=str).replace(str(root) + os.sep, "")
    subtasks = entry.cfg.get("task") if isinstance(entry.cfg, dict) and "group" in entry.cfg else None
    subs = {t: task_fingerprint(t) for t in (subtasks or []) if isinstance(t, str) and t in index and t != name}
    blob = json.dumps({"lm_eval": lm_eval.__version__, "config": config, "files": files, "subtasks": subs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def evaluate_lm(lm, tasks: Sequence[str], limit: int | None = None, num_fewshot: int | None = None,
                gen_kwargs: dict | None = None, seed: int = 0, what: str = "model") -> list[dict]:
    """Run lm-eval `tasks` on an lm-eval model instance. Returns rows {task, metric, value, se}."""
    import lm_eval

    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, num_fewshot=num_fewshot,
                                      gen_kwargs=gen_kwargs, task_manager=task_manager(), log_samples=False,
                                      random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                      fewshot_random_seed=seed, bootstrap_iters=1000)  # a mean's s.e. is closed-form
    except Exception as e:  # noqa: BLE001 — a dataset the hub must provide, a request the model cannot serve
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HarnessError(f"lm-eval on {what} ({', '.join(tasks)}): {first}") from None
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


def evaluate_checkpoint(path: str | Path, tasks: Sequence[str], limit: int | None = None, num_fewshot: int | None = None,
                        gen_kwargs: dict | None = None, seed: int = 0, device: str = "cpu", engine: str = "hf") -> list[dict]:
    """Run lm-eval on one checkpoint directory (or alias / hub id) through `WarpLM`."""
    from .lm_eval_model import WarpLM

    lm = WarpLM(pretrained=str(path), engine=engine, device=device, seed=seed)
    return evaluate_lm(lm, tasks, limit=limit, num_fewshot=num_fewshot, gen_kwargs=gen_kwargs, seed=seed, what=str(path))


def bench_settings(task: str, limit: int | None, num_fewshot: int | None, gen_kwargs: dict | None, seed: int,
                   device: str, engine: str = "hf", engine_dtype: str | None = None) -> dict:
    """Everything a cached lm-eval result depends on besides the checkpoint's content."""
    import lm_eval

    return {"task": task, "task_fingerprint": task_fingerprint(task), "lm_eval": lm_eval.__version__,
            "limit": limit, "num_fewshot": num_fewshot, "gen_kwargs": gen_kwargs, "seed": seed,
            "model": "warp", "engine": engine, "engine_dtype": engine_dtype if engine == "vllm" else None,
            "device": device.split(":")[0], "dtype": DTYPE}


def run_benchmarks(points, scorer, cache, out: Path, tasks: Sequence[str], limit: int | None = None,
                   num_fewshot: int | None = None, gen_kwargs: dict | None = None,
                   seed: int = 0) -> tuple[list[dict], list[str]]:
    """lm-eval `tasks` on every point (cached per point hash and task).

    Returns rows {point, task, metric, value, se} and the 'point:task' pairs computed (not cached).
    """
    from tqdm.auto import tqdm

    from .lm_eval_model import WarpLM

    settings = {t: bench_settings(t, limit, num_fewshot, gen_kwargs, seed, scorer.device, scorer.engine_name,
                                  scorer.engine_dtype) for t in tasks}
    rows, done, computed = [], {}, []
    for p in tqdm(points, desc="lm-eval", unit="point", disable=None):
        hits = {task: cache.get(p.hash, f"lmeval-{task}", settings[task]) for task in tasks if (p.hash, task) not in done}
        missing = [task for task, hit in hits.items() if hit is None]
        if missing:   # the point's weights go into the running engine once for all its tasks
            model, tok, model_dir = scorer.point_model(p)
            lm = WarpLM(model=model, tokenizer=tok, sampler=scorer.engine_for(model, tok, model_dir), seed=seed)
            for task in missing:
                res = evaluate_lm(lm, [task], limit=limit, num_fewshot=num_fewshot, gen_kwargs=gen_kwargs, seed=seed,
                                  what=p.name)
                cache.put(p.hash, f"lmeval-{task}", settings[task], {"rows": res})
                computed.append(f"{p.name}:{task}")
                hits[task] = {"value": {"rows": res}}
            scorer.release(model)
        for task, hit in hits.items():
            done[(p.hash, task)] = hit["value"]["rows"]
        for task in tasks:
            rows += [{"point": p.name, **r} for r in done[(p.hash, task)]]
    return rows, computed
