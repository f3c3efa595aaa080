"""Reading a run directory: `RUN_DIR/manifest.json`, its checkpoints and its prompt files.

This is the only thing the harness reads from a run (see the run-directory contract): the RL
loop's internals stay out of view. Every problem is a `HarnessError` naming the file and key.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merge.errors import WarpError

ROLES = ("sft", "run", "slerp", "liti")


class HarnessError(WarpError):
    """Bad input to the harness: a missing or malformed manifest, checkpoint, prompt file, option."""


@dataclass(frozen=True)
class Generation:
    """Sampling settings of the run (the harness scores with the same ones)."""

    max_new_tokens: int = 16
    temperature: float = 0.9
    top_p: float = 1.0
    chat_template: bool = False


@dataclass(frozen=True)
class Checkpoint:
    """One manifest entry; `path` is absolute (resolved against RUN_DIR)."""

    path: Path
    rel: str
    iteration: int
    run: int | None
    role: str
    step: int


@dataclass
class Task:
    prompts: dict[str, Path]
    reward_model: str
    reward_with_prompt: bool
    control_reward: str
    generation: Generation


@dataclass
class Manifest:
    run_dir: Path
    config: dict[str, Any]
    task: Task
    checkpoints: list[Checkpoint] = field(default_factory=list)
    complete: bool = True   # False while the RL run is still going (or was killed before its end)

    @property
    def sft(self) -> Checkpoint:
        return next(c for c in self.checkpoints if c.role == "sft")

    @property
    def iterations(self) -> list[int]:
        return sorted({c.iteration for c in self.checkpoints if c.role == "slerp"})

    def slerp(self, iteration: int) -> Checkpoint:
        return next(c for c in self.checkpoints if c.role == "slerp" and c.iteration == iteration)

    def by_role(self, role: str) -> list[Checkpoint]:
        return [c for c in self.checkpoints if c.role == role]

    def reward_model_spec(self) -> str:
        """The reward model as a path when it names one relative to RUN_DIR, else as given (hub id, 'vader')."""
        spec = self.task.reward_model
        if spec != "vader" and not Path(spec).is_absolute() and (self.run_dir / spec).exists():
            return str((self.run_dir / spec).resolve())
        return spec


def _get(obj: dict, key: str, types: type | tuple, where: str, default: Any = ...) -> Any:
    if key not in obj:
        if default is ...:
            raise HarnessError(f"{where}: missing key {key!r}")
        return default
    value = obj[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise HarnessError(f"{where}.{key}: expected {_tname(types)}, got {value!r}")
    if not isinstance(value, types):
        raise HarnessError(f"{where}.{key}: expected {_tname(types)}, got {value!r}")
    return value


def _tname(types: type | tuple) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def load_manifest(run_dir: str | Path) -> Manifest:
    """Read and validate RUN_DIR/manifest.json: fields, roles, and that every checkpoint exists.

    Raises HarnessError naming the file and the key (or checkpoint path) at fault.
    """
    run_dir = Path(run_dir)
    mpath = run_dir / "manifest.json"
    if not run_dir.is_dir():
        raise HarnessError(f"run directory {run_dir} does not exist")
    if not mpath.is_file():
        raise HarnessError(f"{mpath}: no manifest.json in the run directory")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise HarnessError(f"{mpath}: cannot read JSON ({e})") from None
    where = str(mpath)
    if not isinstance(data, dict):
        raise HarnessError(f"{where}: expected a JSON object")
    fmt = _get(data, "format", int, where)
    if fmt != 1:
        raise HarnessError(f"{where}.format: unsupported manifest format {fmt!r} (expected 1)")
    config = _get(data, "config", dict, where, default={})
    t = _get(data, "task", dict, where)
    tw = f"{where}.task"
    prompts_raw = _get(t, "prompts", dict, tw)
    if "test" not in prompts_raw:
        raise HarnessError(f"{tw}.prompts: missing key 'test' (the held-out prompts the harness scores)")
    prompts = {}
    for split, rel in prompts_raw.items():
        if not isinstance(rel, str):
            raise HarnessError(f"{tw}.prompts.{split}: expected a path, got {rel!r}")
        p = run_dir / rel
        if not p.is_file():
            raise HarnessError(f"{tw}.prompts.{split}: prompt file {p} does not exist")
        prompts[split] = p
    g = _get(t, "generation", dict, tw, default={})
    gw = f"{tw}.generation"
    known = {"max_new_tokens", "temperature", "top_p", "chat_template"}
    unknown = sorted(set(g) - known)
    if unknown:
        raise HarnessError(f"{gw}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    gen = Generation(max_new_tokens=_get(g, "max_new_tokens", int, gw, 16),
                     temperature=float(_get(g, "temperature", (int, float), gw, 0.9)),
                     top_p=float(_get(g, "top_p", (int, float), gw, 1.0)),
                     chat_template=_get(g, "chat_template", bool, gw, False))
    if gen.max_new_tokens < 1:
        raise HarnessError(f"{gw}.max_new_tokens: must be ≥ 1, got {gen.max_new_tokens}")
    if gen.temperature <= 0:
        raise HarnessError(f"{gw}.temperature: must be > 0, got {gen.temperature}")
    if not 0 < gen.top_p <= 1:
        raise HarnessError(f"{gw}.top_p: must be in (0, 1], got {gen.top_p}")
    task = Task(prompts=prompts, reward_model=_get(t, "reward_model", str, tw),
                reward_with_prompt=_get(t, "reward_with_prompt", bool, tw, False),
                control_reward=_get(t, "control_reward", str, tw, "vader"), generation=gen)
    cps_raw = _get(data, "checkpoints", list, where)
    cps = []
    for i, c in enumerate(cps_raw):
        cw = f"{where}.checkpoints[{i}]"
        if not isinstance(c, dict):
            raise HarnessError(f"{cw}: expected an object, got {c!r}")
        rel = _get(c, "path", str, cw)
        role = _get(c, "role", str, cw)
        if role not in ROLES:
            raise HarnessError(f"{cw}.role: {role!r} is not one of {list(ROLES)}")
        it = _get(c, "iteration", int, cw)
        run = _get(c, "run", (int, type(None)), cw, None)
        step = _get(c, "step", int, cw, 0)
        if role == "run" and run is None:
            raise HarnessError(f"{cw}.run: a role 'run' checkpoint needs a run number")
        path = run_dir / rel
        if not path.is_dir():
            raise HarnessError(f"{cw}.path: checkpoint directory {path} does not exist")
        if not any(path.glob("*.safetensors")):
            raise HarnessError(f"{cw}.path: no *.safetensors weights in {path}")
        cps.append(Checkpoint(path=path.resolve(), rel=rel, iteration=it, run=run, role=role, step=step))
    if sum(c.role == "sft" for c in cps) != 1:
        raise HarnessError(f"{where}.checkpoints: expected exactly one role 'sft' checkpoint, "
                           f"found {sum(c.role == 'sft' for c in cps)}")
    complete = _get(data, "complete", bool, where, True)
    return Manifest(run_dir=run_dir.resolve(), config=config, task=task, checkpoints=cps, complete=complete)


def load_prompts(path: Path, n: int | None = None) -> list[dict]:
    """The first `n` records {"id", "prompt"} of a JSON-lines prompt file (all when n is None)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise HarnessError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                raise HarnessError(f"{path}:{lineno}: expected an object with a string 'prompt'")
            out.append({"id": str(rec.get("id", lineno)), "prompt": rec["prompt"]})
            if n is not None and len(out) >= n:
                break
    if not out:
        raise HarnessError(f"{path}: no prompts")
    return out
