"""Weight-space merging for WARP: task vectors, LERP, task-vector SLERP (M-way), LITI, EMA.

Pure functions on state dicts (`Mapping[str, torch.Tensor]`): they compute in float32 or wider,
return the inputs' dtype, and take non-floating-point tensors from `init` unchanged. The same
operations run streamed over safetensors checkpoints on disk (`warp merge`). This package imports
neither `rl` nor `harness`.
"""
from .errors import MergeError, WarpError
from .state_dict import StateDict, ema_update, lerp, liti, slerp, task_vector

__all__ = ["StateDict", "MergeError", "WarpError", "task_vector", "lerp", "slerp", "liti", "ema_update"]
