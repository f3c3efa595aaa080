"""Executors run the M independent runs of a WARP iteration (and the harness's scoring work): a
swappable piece, not part of the run directory.

- `LocalExecutor`: in this process, one task after the other (no dependencies beyond the project).
- `RayExecutor`: Ray tasks with the config's resource requests (`num_cpus`, `num_gpus`, memory).
  Without an address (and no `RAY_ADDRESS`) a local Ray instance starts. A task whose worker dies
  is retried by Ray (`max_retries`); the run it was training resumes from its last saved state, so
  the result is the same bit for bit. Checkpoints go to the run directory, which must be on a
  filesystem every node sees.

`submit(fn, *args)` returns a future with `.result()`; `fn` must be importable (a module-level
function), since Ray ships it to other processes by reference.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from merge.errors import WarpError
from merge.threads import set_threads

from .config import ExecutorConfig


class ExecutorError(WarpError):
    """The executor cannot start, or a task failed for a reason outside the project's errors."""


class Done:
    """A finished local task's result."""

    def __init__(self, value: Any = None) -> None:
        self._value = value

    def result(self) -> Any:
        return self._value


class LocalExecutor:
    name = "local"

    def submit(self, fn: Callable, *args, **kwargs) -> Done:
        """Run `fn` now, here (a failure raises at once: the later runs are not started)."""
        return Done(fn(*args, **kwargs))

    def shutdown(self) -> None:
        pass


class RayFuture:
    def __init__(self, ref) -> None:
        self.ref = ref

    def result(self) -> Any:
        import ray
        from ray.exceptions import RayTaskError

        try:
            return ray.get(self.ref)
        except RayTaskError as e:          # the task's own exception, not Ray's wrapper around it
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise ExecutorError(f"a Ray task failed: {str(e).strip().splitlines()[-1]}") from None
        except ray.exceptions.RayError as e:
            raise ExecutorError(f"a Ray task failed: {str(e).strip().splitlines()[0]}") from None


def _call(fn: Callable, threads: int | None, args: tuple, kwargs: dict) -> Any:
    """Body of every Ray task: the task's thread count first (its CPU request), then `fn`."""
    set_threads(threads)
    return fn(*args, **kwargs)


class RayExecutor:
    name = "ray"

    def __init__(self, cfg: ExecutorConfig) -> None:
        try:
            import ray
        except ImportError:
            raise ExecutorError("executor 'ray' needs Ray: pip install -c constraints.txt 'ray==2.60.0'") from None
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": address, "ignore_reinit_error": True, "include_dashboard": False,
                                      "log_to_driver": True}
            if not address:
                os.environ.pop("RAY_ADDRESS", None)    # an empty one would be read as an address
                kwargs["num_cpus"] = cfg.local_cpus   # a local instance: this machine's cores by default
            try:
                ray.init(**kwargs)
            except Exception as e:  # noqa: BLE001 — cannot reach or start the cluster
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ExecutorError(f"executor 'ray': cannot start or reach Ray ({address or 'local'}): {first}") from None
        options: dict[str, Any] = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, "max_retries": cfg.max_retries}
        if cfg.memory_gb:
            options["memory"] = int(cfg.memory_gb * 2 ** 30)
        self._task = ray.remote(_call).options(**options)
        self.threads = max(1, int(cfg.num_cpus))

    def submit(self, fn: Callable, *args, **kwargs) -> RayFuture:
        return RayFuture(self._task.remote(fn, self.threads, args, kwargs))

    def shutdown(self) -> None:
        pass   # a local Ray instance stops with the process; a cluster is not ours to stop


def make_executor(cfg: ExecutorConfig):
    """The executor the config names ('local' | 'ray')."""
    if cfg.name == "local":
        return LocalExecutor()
    if cfg.name == "ray":
        return RayExecutor(cfg)
    raise ExecutorError(f"unknown executor {cfg.name!r} (known: local, ray)")
