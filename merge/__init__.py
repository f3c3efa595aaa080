"""Weight-space merging for WARP: task vectors, LERP, task-vector SLERP (M-way), LITI, EMA, and the
usual merge library methods (task arithmetic, TIES, DARE, uniform/weighted averaging), LoRA-aware.

Pure functions on state dicts (`Mapping[str, torch.Tensor]`): they compute in float32 or wider,
return the inputs' dtype, and take non-floating-point tensors from `init` unchanged. Every method
is a tensor function under `merge.methods`, registered once in `merge.registry`; the same methods
run streamed over safetensors checkpoints on disk (`merge.checkpoint`, `warp merge`). This package
imports neither `rl` nor `harness`.
"""
from .errors import MergeError, WarpError
from .registry import REGISTRY, get_method
from .checkpoint import load_state_dict, merge_checkpoints
from .lora import liti_lora, lora_deltas, lora_to_dense, slerp_lora
from .state_dict import (StateDict, average, dare, ema_update, lerp, liti, merge_state_dicts, slerp, task_arithmetic,
                         task_vector, ties)

__all__ = ["StateDict", "MergeError", "WarpError", "task_vector", "lerp", "slerp", "liti", "ema_update",
           "task_arithmetic", "ties", "dare", "average", "merge_state_dicts", "REGISTRY", "get_method",
           "lora_deltas", "lora_to_dense", "slerp_lora", "liti_lora", "merge_checkpoints", "load_state_dict"]
