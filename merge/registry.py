"""One registry of merge methods: every `Method` (`merge.methods.base`) the package ships, by name.

The method modules define their `Method` constants and know nothing of this module; it imports
them and lists them below. `apply` merges ONE tensor (tensor in, tensor out); the state-dict layer
(`merge.state_dict`) and the checkpoint layer (`merge.checkpoint`) only loop. Users add a method
of their own with `register`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .errors import MergeError
from .methods import average, dare, linear, slerp, task_arithmetic, ties
from .methods.base import ApplyFn, Method

__all__ = ["REGISTRY", "Method", "ApplyFn", "register", "get_method", "params_dict"]

# Every method the package ships, by name (tests check each key is its method's name).
REGISTRY: dict[str, Method] = {
    "slerp": slerp.SLERP,
    "liti": linear.LITI,
    "lerp": linear.LERP,
    "task_arithmetic": task_arithmetic.TASK_ARITHMETIC,
    "ties": ties.TIES,
    "dare": dare.DARE,
    "average": average.AVERAGE,
}


def register(method: Method) -> Method:
    """Add a user's own method to REGISTRY (the CLI, recipes and both merge layers then know it)."""
    if method.name in REGISTRY:
        raise ValueError(f"merge method {method.name!r} registered twice")
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise MergeError(f"unknown merge method {name!r} (known: {', '.join(sorted(REGISTRY))})") from None


def params_dict(params: Any) -> dict:
    return dataclasses.asdict(params)
