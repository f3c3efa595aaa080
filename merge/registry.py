"""One registry of merge methods. Each method module under `merge.methods` registers a `Method`:
its name, its parameter dataclass (validated; used by the CLI and YAML recipes), whether it takes
θ_init, how many models it accepts, and `apply`, which merges ONE tensor (tensor in, tensor out).
The state-dict layer (`merge.state_dict`) and the checkpoint layer (`merge.checkpoint`) only loop.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from .errors import MergeError

# apply(key, init or None, models, params) -> (merged tensor in the output dtype, fell back to LERP)
ApplyFn = Callable[[str, Optional[torch.Tensor], Sequence[torch.Tensor], Any], "tuple[torch.Tensor, bool]"]


@dataclass(frozen=True)
class Method:
    name: str
    params: type                 # dataclass; its validate(n_models) raises MergeError for bad values
    uses_init: bool              # θ_init is an input (task-vector methods, LITI)
    min_models: int
    max_models: Optional[int]
    apply: ApplyFn
    summary: str

    def check_count(self, n_models: int) -> None:
        if n_models < self.min_models or (self.max_models is not None and n_models > self.max_models):
            want = (f"exactly {self.min_models}" if self.max_models == self.min_models
                    else f"at least {self.min_models}")
            raise MergeError(f"{self.name} needs {want} model(s), got {n_models}")

    def make_params(self, n_models: int, values: Mapping[str, Any] | None = None) -> Any:
        """Validated parameter object from plain values (None values mean 'the default')."""
        from .config import ConfigError, from_mapping

        values = {k: v for k, v in (values or {}).items() if v is not None}
        try:
            params = from_mapping(self.params, values, where=f"{self.name} params")
        except ConfigError as e:
            raise MergeError(str(e)) from None
        return params.checked(n_models)


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
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


from .methods import average, dare, linear, slerp, task_arithmetic, ties  # noqa: E402,F401  (they register)
