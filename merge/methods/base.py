"""What a merge method is: `Method`, the record every module under `merge.methods` defines as a
module constant (its name, its parameter dataclass, whether it takes θ_init, how many models it
accepts, and `apply`, which merges ONE tensor: tensor in, tensor out).

Method modules import this module, never `merge.registry`: the registry imports them (one way).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from ..config import ConfigError, from_mapping
from ..errors import MergeError

# apply(key, init or None, models, params) -> (merged tensor in the output dtype, fell back to LERP)
ApplyFn = Callable[[str, Optional[torch.Tensor], Sequence[torch.Tensor], Any], "tuple[torch.Tensor, bool]"]


@dataclass(frozen=True)
class Method:
    name: str
    params: type                 # dataclass; its checked(n_models) raises MergeError for bad values
    uses_init: bool              # θ_init is an input (task-vector methods, LITI)
    min_models: int
    max_models: Optional[int]
    apply: ApplyFn
    summary: str
    # apply itself raises MergeError whenever an input holds a NaN/Inf (slerp: its Gram matrix is then
    # non-finite), so the streamed merge skips its own NaN/Inf pass over the inputs and runs it only
    # after such an error, to name the input
    checks_finite: bool = False

    def check_count(self, n_models: int) -> None:
        if n_models < self.min_models or (self.max_models is not None and n_models > self.max_models):
            want = (f"exactly {self.min_models}" if self.max_models == self.min_models
                    else f"at least {self.min_models}")
            raise MergeError(f"{self.name} needs {want} model(s), got {n_models}")

    def make_params(self, n_models: int, values: Mapping[str, Any] | None = None) -> Any:
        """Validated parameter object from plain values (None values mean 'the default')."""
        values = {k: v for k, v in (values or {}).items() if v is not None}
        try:
            params = from_mapping(self.params, values, where=f"{self.name} params")
        except ConfigError as e:
            raise MergeError(str(e)) from None
        return params.checked(n_models)
