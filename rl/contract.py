"""The run-directory contract: the schema of RUN_DIR/manifest.json, in one place.

The RL loop writes a run directory (`rl.rundir`), the harness reads it (`harness.manifest`), and
the tests fake one (`tests/harness/rundir.py`): all three go through this module, so the schema is
written down once. A manifest is

    {"format": 1,
     "config": {...},                        # the RLConfig that produced the run (informational)
     "task": {"prompts": {"validation": REL, "test": REL},
              "reward_model": REL | hub id | "vader", "reward_with_prompt": bool,
              "control_reward": "vader" | ..., "generation": GenerationConfig},
     "complete": bool,                       # false while the RL loop is running or after a kill
     "overrides": ["key=value", ...],        # command-line overrides the config was built with (optional)
     "checkpoints": [{"path": REL, "iteration": int, "run": int | null,
                      "role": "sft" | "run" | "slerp" | "liti", "step": int}, ...]}

Paths are relative to RUN_DIR, so a run directory can be moved. Every checkpoint is a Hugging Face
directory with safetensors weights.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from merge.config import ConfigError, from_mapping
from merge.errors import WarpError
from merge.io import atomic_write_json

from .config import GenerationConfig

FORMAT = 1
SUPPORTED_FORMATS = (1,)
MANIFEST = "manifest.json"
ROLES = ("sft", "run", "slerp", "liti")


class ContractError(WarpError):
    """A manifest that does not follow the contract (names the file and key at fault)."""


@dataclass(frozen=True)
class Checkpoint:
    """One manifest entry; `path` is absolute when read from a run directory (RUN_DIR / rel)."""

    rel: str
    iteration: int
    run: Optional[int]
    role: str
    step: int
    path: Optional[Path] = None

    def to_json(self) -> dict:
        return {"path": self.rel, "iteration": self.iteration, "run": self.run, "role": self.role, "step": self.step}


@dataclass
class Task:
    """What a score means: held-out prompts, reward models, and the sampling settings."""

    prompts: dict[str, str]                    # split -> prompt file, relative to RUN_DIR
    reward_model: str
    reward_with_prompt: bool = False
    control_reward: str = "vader"
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def to_json(self) -> dict:
        return {"prompts": dict(self.prompts), "reward_model": self.reward_model,
                "reward_with_prompt": self.reward_with_prompt, "control_reward": self.control_reward,
                "generation": asdict(self.generation)}


@dataclass
class Manifest:
    task: Task
    config: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    complete: bool = False
    run_dir: Optional[Path] = None             # set when read from (or written to) a directory
    format: int = FORMAT
    overrides: list[str] = field(default_factory=list)

    # -- reading helpers ------------------------------------------------------------------------
    @property
    def sft(self) -> Checkpoint:
        return next(c for c in self.checkpoints if c.role == "sft")

    @property
    def iterations(self) -> list[int]:
        """Iterations that have a SLERP checkpoint (a LITI front to score)."""
        return sorted({c.iteration for c in self.checkpoints if c.role == "slerp"})

    def slerp(self, iteration: int) -> Checkpoint:
        return next(c for c in self.checkpoints if c.role == "slerp" and c.iteration == iteration)

    def by_role(self, role: str) -> list[Checkpoint]:
        return [c for c in self.checkpoints if c.role == role]

    def prompt_file(self, split: str) -> Path:
        return self._abs(self.task.prompts[split])

    def reward_model_spec(self) -> str:
        """The reward model as an absolute path when it names a directory inside RUN_DIR, else as given."""
        spec = self.task.reward_model
        if spec != "vader" and not Path(spec).is_absolute() and self.run_dir is not None and (self.run_dir / spec).exists():
            return str((self.run_dir / spec).resolve())
        return spec

    def _abs(self, rel: str) -> Path:
        return (self.run_dir / rel) if self.run_dir is not None else Path(rel)

    # -- writing --------------------------------------------------------------------------------
    def add(self, entry: Checkpoint) -> bool:
        """Add (or replace the entry with the same path); True when the manifest changed."""
        entry = Checkpoint(entry.rel, entry.iteration, entry.run, entry.role, entry.step)
        old = [c for c in self.checkpoints if c.rel == entry.rel]
        if old and Checkpoint(old[0].rel, old[0].iteration, old[0].run, old[0].role, old[0].step) == entry:
            return False
        self.checkpoints = [c for c in self.checkpoints if c.rel != entry.rel] + [entry]
        return True

    def to_json(self) -> dict:
        out = {"format": self.format, "config": self.config, "task": self.task.to_json(),
               "complete": self.complete, "checkpoints": [c.to_json() for c in self.checkpoints]}
        if self.overrides:
            out["overrides"] = list(self.overrides)
        return out

    def write(self, run_dir: str | Path | None = None) -> Path:
        """Write RUN_DIR/manifest.json atomically."""
        run_dir = Path(run_dir) if run_dir is not None else self.run_dir
        if run_dir is None:
            raise ValueError("Manifest.write needs a run directory")
        self.run_dir = run_dir
        path = run_dir / MANIFEST
        atomic_write_json(path, self.to_json())
        return path


# ---- reading and validating --------------------------------------------------------------------

def _tname(types: type | tuple) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


class _Where:
    """A position in a manifest for messages: 'FILE: key.path' (the file, then the key path)."""

    def __init__(self, source: str, path: str = "") -> None:
        self.source, self.path = source, path

    def __truediv__(self, key: str) -> "_Where":
        return _Where(self.source, f"{self.path}{key}" if key.startswith("[") or not self.path else f"{self.path}.{key}")

    def __str__(self) -> str:
        return f"{self.source}: {self.path}" if self.path else self.source


def _get(obj: dict, key: str, types: type | tuple, where: _Where, default: Any = ...) -> Any:
    if key not in obj:
        if default is ...:
            raise ContractError(f"{where}: missing key {key!r}")
        return default
    value = obj[key]
    allowed = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
        raise ContractError(f"{where / key}: expected {_tname(types)}, got {value!r}"[:300])
    return value


def parse_manifest(data: Any, source: str = MANIFEST, complete_sft: bool = True) -> Manifest:
    """Validate a manifest's JSON form (no file-system checks); ContractError names the file, then
    the key path ('run/manifest.json: checkpoints[1].role: ...').

    `complete_sft=False` (the writer resuming its own directory) accepts a manifest written before
    the sft checkpoint was added; readers need exactly one."""
    where = _Where(source)
    if not isinstance(data, dict):
        raise ContractError(f"{where}: expected a JSON object")
    fmt = _get(data, "format", int, where)
    if fmt not in SUPPORTED_FORMATS:
        raise ContractError(f"{where / 'format'}: unsupported manifest format {fmt!r} "
                            f"(this version reads {', '.join(map(str, SUPPORTED_FORMATS))})")
    config = _get(data, "config", dict, where, default={})
    t = _get(data, "task", dict, where)
    tw = where / "task"
    prompts = _get(t, "prompts", dict, tw)
    if "test" not in prompts:
        raise ContractError(f"{tw / 'prompts'}: missing key 'test' (the held-out prompts the harness scores)")
    for split, rel in prompts.items():
        if not isinstance(rel, str):
            raise ContractError(f"{tw / 'prompts' / split}: expected a path, got {rel!r}")
    try:
        gen = from_mapping(GenerationConfig, _get(t, "generation", dict, tw, default={}), where="task.generation")
    except ConfigError as e:
        raise ContractError(f"{where}: {e}") from None
    task = Task(prompts=dict(prompts), reward_model=_get(t, "reward_model", str, tw),
                reward_with_prompt=_get(t, "reward_with_prompt", bool, tw, False),
                control_reward=_get(t, "control_reward", str, tw, "vader"), generation=gen)
    cps = []
    for i, c in enumerate(_get(data, "checkpoints", list, where)):
        cw = where / "checkpoints" / f"[{i}]"
        if not isinstance(c, dict):
            raise ContractError(f"{cw}: expected an object, got {c!r}"[:300])
        role = _get(c, "role", str, cw)
        if role not in ROLES:
            raise ContractError(f"{cw / 'role'}: {role!r} is not one of {list(ROLES)}")
        run = _get(c, "run", (int, type(None)), cw, None)
        if role == "run" and run is None:
            raise ContractError(f"{cw / 'run'}: a role 'run' checkpoint needs a run number")
        cps.append(Checkpoint(_get(c, "path", str, cw), _get(c, "iteration", int, cw), run, role, _get(c, "step", int, cw, 0)))
    n_sft = sum(c.role == "sft" for c in cps)
    if n_sft > 1 or (n_sft == 0 and complete_sft):
        raise ContractError(f"{where / 'checkpoints'}: expected exactly one role 'sft' checkpoint, found {n_sft}")
    overrides = _get(data, "overrides", list, where, [])
    if not all(isinstance(o, str) for o in overrides):
        raise ContractError(f"{where / 'overrides'}: expected a list of 'key=value' strings")
    return Manifest(task=task, config=config, checkpoints=cps, complete=_get(data, "complete", bool, where, True),
                    format=fmt, overrides=list(overrides))


def read_manifest(run_dir: str | Path, check_files: bool = True) -> Manifest:
    """Read RUN_DIR/manifest.json; with `check_files`, also that every prompt file and checkpoint
    (a directory with *.safetensors) exists. Paths in the result are absolute."""
    run_dir = Path(run_dir)
    mpath = run_dir / MANIFEST
    if not run_dir.is_dir():
        raise ContractError(f"run directory {run_dir} does not exist")
    if not mpath.is_file():
        raise ContractError(f"{mpath}: no manifest.json in the run directory")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ContractError(f"{mpath}: cannot read JSON ({e})") from None
    m = parse_manifest(data, str(mpath))
    m.run_dir = run_dir.resolve()
    m.checkpoints = [Checkpoint(c.rel, c.iteration, c.run, c.role, c.step, (m.run_dir / c.rel).resolve())
                     for c in m.checkpoints]
    if check_files:
        for split, rel in m.task.prompts.items():
            if not (run_dir / rel).is_file():
                raise ContractError(f"{mpath}: task.prompts.{split}: prompt file {run_dir / rel} does not exist")
        for i, c in enumerate(m.checkpoints):
            cw = f"{mpath}: checkpoints[{i}].path"
            if not c.path.is_dir():
                raise ContractError(f"{cw}: checkpoint directory {run_dir / c.rel} does not exist")
            if not any(c.path.glob("*.safetensors")):
                raise ContractError(f"{cw}: no *.safetensors weights in {run_dir / c.rel}")
    return m
