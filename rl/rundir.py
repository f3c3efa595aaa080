"""The run directory (the contract the harness reads): manifest.json, checkpoints, prompt files,
metrics.jsonl. This module is the only writer of manifest.json.

A run directory belongs to one config: opening it with another is a RunDirError and nothing is
written. Every file goes through merge.io's atomic writers.
"""
from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import torch

from merge.config import from_mapping, to_mapping
from merge.errors import WarpError
from merge.io import LOCK_NAME, DirectoryLock, atomic_directory, atomic_write_text, sweep_stale

from .config import RLConfig, without_runtime_keys
from .contract import MANIFEST, Checkpoint, ContractError, Manifest, Task, parse_manifest
from .data import load_splits, prompts as make_prompts
from .models import check_model, load_causal_lm, save_checkpoint
from .rm import resolve_reward_spec
from .run import read_jsonl


class RunDirError(WarpError):
    """A run directory that is not ours to write (another config, not a run directory)."""


def _plain(obj):
    return json.loads(json.dumps(obj))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """State dict of a checkpoint directory (tied weights appear under both names, as in the model)."""
    model, _ = load_causal_lm(str(path))
    return model.state_dict()


def save_weights_like(template: str | Path, state_dict, out: str | Path) -> Path:
    """Write `state_dict` as a checkpoint with the architecture and tokenizer of `template` (atomic)."""
    model, tok = load_causal_lm(str(template))
    model.load_state_dict(state_dict)
    return save_checkpoint(model, tok, out, overwrite=True)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _run_worker(cfg_dict: dict, run_dir: str, iteration: int, run: int, init: str, train_prompts: list[str],
                task: Task, device: str | None, progress: bool) -> list[dict]:
    """Entry point of one run in its own process (spawned): rebuild the config and train."""
    from .run import train_run

    cfg = from_mapping(RLConfig, cfg_dict)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)   # a new process: set its thread count before any work
    return train_run(cfg, run_dir, iteration, run, init, train_prompts, task, device=device, progress=progress)


class RunDir:
    """An open run directory, held by this process (one writer per directory, `merge.io.DirectoryLock`)."""

    def __init__(self, path: Path, cfg: RLConfig, manifest: Manifest, lock: DirectoryLock, created: bool = False) -> None:
        self.path, self.cfg, self.manifest, self._lock = path, cfg, manifest, lock
        self.created = created          # this invocation made the directory (nothing of value in it yet)

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, out: str | Path, cfg: RLConfig) -> "RunDir":
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
                    reward_model=resolve_reward_spec(cfg.reward_model), reward_with_prompt=cfg.reward_with_prompt,
                    control_reward=cfg.control_reward, generation=cfg.generation)
        path.mkdir(parents=True, exist_ok=True)
        lock = DirectoryLock(path, "warp run").acquire()
        if mpath.exists():   # another process created it between our check and our lock
            lock.release()
            raise RunDirError(f"{path} was created by another warp run meanwhile; re-run to resume it")
        rd = cls(path, cfg, Manifest(task=task, config=config, complete=False, run_dir=path), lock, created=True)
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
        """sft checkpoint and prompt files (each skipped when already there)."""
        cfg = self.cfg
        if not self.exists("sft"):
            model, tok = load_causal_lm(cfg.policy)
            save_checkpoint(model, tok, self.path / "sft", overwrite=True)
            del model
        pdir = self.path / "prompts"
        if not (pdir / "train.jsonl").exists():
            splits = getattr(self, "_splits", None) or load_splits(cfg.data)
            for name in ("validation", "test"):
                _write_jsonl(pdir / f"{name}.jsonl", make_prompts(splits[name], cfg.data, cfg.eval_prompts))
            _write_jsonl(pdir / "train.jsonl", make_prompts(splits["train"], cfg.data))
        self.train_prompts = [r["prompt"] for r in read_jsonl(pdir / "train.jsonl")]
        self._own_reward_model()
        self.add_checkpoint("sft", 0, "sft", step=0)

    def _own_reward_model(self) -> None:
        """Copy a local reward-model directory into RUN_DIR/reward_model (≈90 MB for MiniLM), so the
        run directory is self-contained for the harness; the manifest then names it relatively."""
        spec = self.manifest.task.reward_model
        src = Path(spec)
        if src.is_absolute() and src.is_dir():
            dest = self.path / "reward_model"
            if not dest.exists():
                with atomic_directory(dest) as tmp:
                    shutil.copytree(src, tmp, dirs_exist_ok=True)
            self.manifest.task.reward_model = "reward_model"
            self._write_manifest()

    # -- runs ---------------------------------------------------------------------------------
    def train_runs(self, iteration: int, init: str, train_run, progress: bool = True, **kwargs) -> list[str]:
        """The M independent runs of one iteration (seeds differ by run index), sequential or one
        process per GPU; returns the paths of their final checkpoints."""
        cfg, M = self.cfg, self.cfg.warp.runs
        mode = cfg.warp.parallel
        n_gpu = torch.cuda.device_count() if cfg.device in ("auto", "cuda") else 0
        if mode == "auto":
            mode = "processes" if n_gpu >= 2 and M >= 2 else "sequential"
        if mode == "processes" and not kwargs:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            devices = [f"cuda:{(m - 1) % n_gpu}" if n_gpu else None for m in range(1, M + 1)]
            with ProcessPoolExecutor(max_workers=min(M, max(n_gpu, 1) if n_gpu else M),
                                     mp_context=mp.get_context("spawn")) as pool:
                futures = [pool.submit(_run_worker, self.manifest.config, str(self.path), iteration, m, init,
                                       self.train_prompts, self.manifest.task, devices[m - 1], progress)
                           for m in range(1, M + 1)]
                results = [f.result() for f in futures]
        else:
            results = []
            for m in range(1, M + 1):
                results.append(train_run(cfg, self.path, iteration, m, init, self.train_prompts, self.manifest.task,
                                         progress=progress, **kwargs))
                gc.collect()   # free run m's policy, anchor and optimizer before run m+1 loads its own
                self._collect_metrics()
        for entries in results:
            for e in entries:
                self.add_checkpoint(e["path"], e["iteration"], e["role"], run=e["run"], step=e["step"])
        self._collect_metrics()
        return [entries[-1]["path"] for entries in results]

    # -- merges -------------------------------------------------------------------------------
    def weights(self, rel: str) -> dict[str, torch.Tensor]:
        return load_weights(self.path / rel)

    def merged(self, rel: str, iteration: int, role: str, like: str, compute) -> str:
        """Checkpoint `rel` = compute() (a state dict), unless it already exists; architecture and
        tokenizer from checkpoint `like`. The tensors are freed on return (2 GB for SmolLM2)."""
        if not self.exists(rel):
            save_weights_like(self.path / like, compute(), self.path / rel)
            gc.collect()
        self.add_checkpoint(rel, iteration, role)
        return rel

    # -- manifest -----------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return (self.path / rel / "config.json").exists()

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
        _write_jsonl(self.path / "metrics.jsonl", rows)

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
