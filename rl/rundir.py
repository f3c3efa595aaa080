"""The run directory (the contract the harness reads): manifest.json (schema: rl.contract), the
checkpoints (rl.store), prompt files, the reward model, metrics.jsonl. This module is the only
writer of manifest.json; it neither trains (rl.run) nor schedules runs (rl.executor).

A run directory belongs to one config: opening it with another is a RunDirError and nothing is
written; opening it checks its inputs and locks it, nothing more. Every file goes through
merge.io's atomic writers.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence


from merge.config import to_mapping
from merge.errors import WarpError
from merge.io import LOCK_NAME, DirectoryLock, atomic_directory, read_jsonl, sweep_stale, write_jsonl

from .config import RLConfig, without_runtime_keys
from .contract import MANIFEST, Checkpoint, ContractError, Manifest, Task, parse_manifest
from .data import load_splits, prompts as make_prompts
from .models import check_model, load_causal_lm, save_checkpoint
from .rm import check_reward_spec, resolve_reward_spec
from .store import CheckpointStore


class RunDirError(WarpError):
    """A run directory that is not ours to write (another config, not a run directory)."""


def _plain(obj):
    return json.loads(json.dumps(obj))


class RunDir:
    """An open run directory, held by this process (one writer per directory, `merge.io.DirectoryLock`)."""

    def __init__(self, path: Path, cfg: RLConfig, manifest: Manifest, lock: DirectoryLock, created: bool = False) -> None:
        self.path, self.cfg, self.manifest, self._lock = path, cfg, manifest, lock
        self.store = CheckpointStore(path)
        self.created = created          # this invocation made the directory (nothing of value in it yet)

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, out: str | Path, cfg: RLConfig, overrides: Sequence[str] = ()) -> "RunDir":
        """Open (resume) or create RUN_DIR for `cfg`; another config's run dir is refused untouched.

        Resuming is refused only when a key that changes the weights differs (`config.RUNTIME_KEYS`,
        such as threads or device, may change between invocations). The directory stays locked
        against other writers until `close()` (or process exit).
        """
        path = Path(out).expanduser().resolve()
        config = _plain(to_mapping(cfg))
        mpath = path / MANIFEST
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path} exists and is not a directory; use another --out")
        if mpath.exists():
            lock = DirectoryLock(path, "warp run").acquire()
            try:
                try:
                    manifest = parse_manifest(json.loads(mpath.read_text(encoding="utf-8")), str(mpath), complete_sft=False)
                except (OSError, UnicodeDecodeError, ValueError) as e:
                    raise RunDirError(f"{mpath}: unreadable manifest ({e}); use another --out") from None
                except ContractError as e:
                    raise RunDirError(f"{e}; use another --out") from None
                old, new = without_runtime_keys(manifest.config), without_runtime_keys(config)
                if old != new:
                    raise RunDirError(f"{path} holds a run of a different config ({_first_difference(old, new)}); "
                                      "use another --out")
                sweep_stale(path)
            except BaseException:
                lock.release()
                raise
            manifest.run_dir = path
            rd = cls(path, cfg, manifest, lock)
            if manifest.config != config:            # only runtime keys differ: record this invocation's
                manifest.config = config
                rd._write_manifest()
            return rd
        if path.exists() and any(p.name != LOCK_NAME for p in path.iterdir()):
            raise RunDirError(f"{path} exists and is not a warp run directory (no manifest.json); use another --out")
        # Check every input before the directory exists, so bad input leaves nothing behind.
        check_model(cfg.policy)
        splits = load_splits(cfg.data)
        task = Task(prompts={"validation": "prompts/validation.jsonl", "test": "prompts/test.jsonl"},
                    reward_model=check_reward_spec(cfg.reward_model), reward_with_prompt=cfg.reward_with_prompt,
                    control_reward=cfg.control_reward, generation=cfg.generation)
        path.mkdir(parents=True, exist_ok=True)
        lock = DirectoryLock(path, "warp run").acquire()
        if mpath.exists():   # another process created it between our check and our lock
            lock.release()
            raise RunDirError(f"{path} was created by another warp run meanwhile; re-run to resume it")
        rd = cls(path, cfg, Manifest(task=task, config=config, complete=False, run_dir=path, overrides=list(overrides)),
                 lock, created=True)
        rd._splits = splits
        rd._write_manifest()
        return rd

    def discard(self) -> None:
        """Remove a directory this invocation created, when preparing it found bad input (e.g. a
        policy with NaN weights): a failed start leaves nothing behind."""
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)

    def close(self) -> None:
        """Release the directory (the lock); the object must not be used afterwards."""
        self._lock.release()

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- preparing ----------------------------------------------------------------------------
    def prepare(self, progress: bool = True) -> None:
        """sft checkpoint, prompt files and the reward model (each skipped when already there)."""
        cfg = self.cfg
        if not self.store.exists("sft"):
            model, tok = load_causal_lm(cfg.policy)
            save_checkpoint(model, tok, self.path / "sft", overwrite=True)
            del model
        pdir = self.path / "prompts"
        if not (pdir / "train.jsonl").exists():
            splits = getattr(self, "_splits", None) or load_splits(cfg.data)
            for name in ("validation", "test"):
                write_jsonl(pdir / f"{name}.jsonl", make_prompts(splits[name], cfg.data, cfg.eval_prompts))
            write_jsonl(pdir / "train.jsonl", make_prompts(splits["train"], cfg.data))
        self._own_reward_model(progress)
        self.add_checkpoint("sft", 0, "sft", step=0)

    def _own_reward_model(self, progress: bool = True) -> None:
        """Resolve the reward model (an `rm:<name>` spec is trained once into the cache here) and
        copy a local directory into RUN_DIR/reward_model (≈90 MB for MiniLM), so the run directory
        is self-contained for the harness; the manifest then names it relatively."""
        spec = self.manifest.task.reward_model
        if spec.startswith("rm:"):
            spec = resolve_reward_spec(spec, progress=progress)
        src = Path(spec)
        if src.is_absolute() and src.is_dir():
            dest = self.path / "reward_model"
            if not dest.exists():
                with atomic_directory(dest) as tmp:
                    shutil.copytree(src, tmp, dirs_exist_ok=True)
            self.manifest.task.reward_model = "reward_model"
            self._write_manifest()

    # -- runs and merges ----------------------------------------------------------------------
    def add_run(self, entries: list[dict]) -> str:
        """Record a finished run's checkpoints (and its metrics); returns its final checkpoint."""
        for e in entries:
            self.add_checkpoint(e["path"], e["iteration"], e["role"], run=e["run"], step=e["step"])
        self._collect_metrics()
        return entries[-1]["path"]

    def merge(self, method: str, out: str, iteration: int, init: str, models: list[str], **params) -> str:
        """Checkpoint `out` = `method`(init, models) through the streamed merge (unless it exists),
        recorded in the manifest with role `method` (slerp | liti)."""
        self.store.merge(method, out, init, models, params)
        self.add_checkpoint(out, iteration, method)
        return out

    # -- manifest -----------------------------------------------------------------------------
    def add_checkpoint(self, rel: str, iteration: int, role: str, run: int | None = None, step: int | None = None) -> None:
        if step is None:
            step = self.cfg.warp.steps   # slerp/liti: the run length T they merge (as the runs' finals)
        if self.manifest.add(Checkpoint(rel, iteration, run, role, step)):
            self._write_manifest()

    def _write_manifest(self) -> None:
        self.manifest.write(self.path)

    def _collect_metrics(self) -> None:
        """RUN_DIR/metrics.jsonl = every run's per-step metrics, in (iteration, run, step) order."""
        rows = []
        for f in sorted(self.path.glob("iter*/run*/metrics.jsonl"),
                        key=lambda p: (int(p.parent.parent.name[4:]), int(p.parent.name[3:]))):
            rows += read_jsonl(f)
        write_jsonl(self.path / "metrics.jsonl", rows)

    def finish(self) -> None:
        """All iterations done: metrics gathered, and the manifest marked complete for the harness."""
        self._collect_metrics()
        self.manifest.complete = True
        self._write_manifest()


def _first_difference(old, new, where: str = "config") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return _first_difference(old.get(k), new.get(k), f"{where}.{k}")
    return f"{where}: {old!r} there, {new!r} now"
