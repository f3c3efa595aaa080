"""LoRA-aware merging: the task vector of a LoRA-trained policy is the dense ΔW = B·A·scaling of
every adapted weight (shapes: A [r, in], B [out, r], ΔW [out, in]; scaling = α/r, or α/√r with
rsLoRA). Merging the A and B factors separately is wrong: SLERP/LERP of factors is not SLERP/LERP
of their products. So these helpers turn adapters into dense deltas over the base weights and run
`merge.slerp` / `merge.liti` on full dense state dicts.

An adapter is a peft model (`PeftModel`, adapter `default` unless named) or a saved adapter
directory (adapter_config.json + adapter_model.safetensors).
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch
from torch import nn

from .errors import MergeError
from .state_dict import StateDict, check_compatible, liti, slerp

Adapter = Union[nn.Module, str, os.PathLike]
PEFT_PREFIX = "base_model.model."


def _strip(name: str) -> str:
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name


def dense_delta(A: torch.Tensor, B: torch.Tensor, scaling: float, fan_in_fan_out: bool = False) -> torch.Tensor:
    """ΔW = B·A·scaling in float32 (or wider): A [r, in], B [out, r] → [out, in] ([in, out] if fan_in_fan_out)."""
    wide = torch.promote_types(torch.promote_types(A.dtype, B.dtype), torch.float32)
    d = (B.to(wide) @ A.to(wide)) * scaling
    return d.T if fan_in_fan_out else d


def lora_deltas(adapter: Adapter, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """Dense ΔW (float32) per adapted weight, keyed like the base model's state dict (`...q_proj.weight`)."""
    if isinstance(adapter, nn.Module):
        return _deltas_from_model(adapter, adapter_name)
    return _deltas_from_dir(Path(adapter))


def _deltas_from_model(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, mod in model.named_modules():
        lora_A = getattr(mod, "lora_A", None)
        if not isinstance(lora_A, nn.ModuleDict) or adapter_name not in lora_A:
            continue
        if getattr(mod, "use_dora", {}).get(adapter_name, False):
            raise MergeError(f"{name}: DoRA adapters are not B·A·scaling; not supported")
        A, B = lora_A[adapter_name].weight, mod.lora_B[adapter_name].weight
        out[_strip(name) + ".weight"] = dense_delta(A.detach(), B.detach(), float(mod.scaling[adapter_name]),
                                                    bool(getattr(mod, "fan_in_fan_out", False)))
    if not out:
        raise MergeError(f"model has no LoRA layers for adapter {adapter_name!r}")
    return out


def _pattern_value(module: str, patterns: Mapping[str, Any], default: Any) -> Any:
    for pat, value in (patterns or {}).items():
        if module == pat or module.endswith("." + pat) or re.fullmatch(rf"(.*\.)?{pat}", module):
            return value
    return default


def _deltas_from_dir(path: Path) -> dict[str, torch.Tensor]:
    cfg_path, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise MergeError(f"{path}: not a LoRA adapter directory (needs adapter_config.json and adapter_model.safetensors)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise MergeError(f"{cfg_path}: invalid JSON ({e})") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise MergeError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not LORA")
    if cfg.get("use_dora"):
        raise MergeError(f"{cfg_path}: DoRA adapters are not B·A·scaling; not supported")
    from safetensors.torch import load_file

    tensors = load_file(str(weights))
    out = {}
    for key, A in tensors.items():
        if ".lora_embedding_" in key:
            raise MergeError(f"{weights}: embedding LoRA ({key}) is not supported")
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        b_key = module + ".lora_B.weight"
        if b_key not in tensors:
            raise MergeError(f"{weights}: {key} has no matching {b_key}")
        name = _strip(module)
        r = _pattern_value(name, cfg.get("rank_pattern"), cfg.get("r", A.shape[0]))
        alpha = _pattern_value(name, cfg.get("alpha_pattern"), cfg.get("lora_alpha", r))
        scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[name + ".weight"] = dense_delta(A, tensors[b_key], scaling, bool(cfg.get("fan_in_fan_out", False)))
    if not out:
        raise MergeError(f"{weights}: no lora_A/lora_B weights")
    return out


def base_state_dict(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen base weights of a peft model, under the plain model's names (no LoRA tensors)."""
    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    return {k.replace(".base_layer.", "."): v.detach().clone() for k, v in base.state_dict().items() if ".lora_" not in k}


def apply_deltas(base: StateDict, deltas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full dense state dict θ_base + ΔW (computed in float32, stored in base's dtype)."""
    for k, d in deltas.items():
        if k not in base:
            raise MergeError(f"LoRA delta for {k!r} has no base weight of that name")
        if tuple(base[k].shape) != tuple(d.shape):
            raise MergeError(f"key {k!r}: shape {tuple(base[k].shape)} in base vs {tuple(d.shape)} in LoRA delta")
    out = dict(base)
    for k, d in deltas.items():
        wide = torch.promote_types(base[k].dtype, torch.float32)
        out[k] = (base[k].to(wide) + d.to(wide)).to(base[k].dtype)
    return out


def lora_to_dense(base: StateDict, adapter: Adapter, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The dense policy of a LoRA-trained model: θ_base + B·A·scaling per adapted weight."""
    return apply_deltas(base, lora_deltas(adapter, adapter_name))


def _adapted_keys(deltas: Sequence[Mapping[str, torch.Tensor]]) -> list[str]:
    keys: dict[str, None] = {}
    for d in deltas:
        keys.update(dict.fromkeys(d))
    return list(keys)


def slerp_lora(base: StateDict, adapters: Sequence[Adapter], lam: float | None = None) -> dict[str, torch.Tensor]:
    """`merge.slerp` of LoRA-trained policies on their dense task vectors ΔW_m; full dense state dict.

    Weights no adapter touches have zero task vectors: they are θ_base (no LERP-fallback warnings).
    """
    dense = [lora_to_dense(base, a) for a in adapters]
    keys = _adapted_keys([lora_deltas(a) for a in adapters]) if len(adapters) >= 2 else []
    if len(adapters) < 2:
        raise MergeError(f"slerp needs at least 2 models, got {len(adapters)}")
    merged = slerp({k: base[k] for k in keys}, [{k: d[k] for k in keys} for d in dense], lam)
    return {k: merged.get(k, base[k].clone()) for k in base}


def liti_lora(base: StateDict, merged: Union[StateDict, Adapter], eta: float) -> dict[str, torch.Tensor]:
    """`merge.liti` towards a LoRA-trained policy (an adapter) or an already-dense merged state dict."""
    dense = dict(merged) if isinstance(merged, Mapping) else lora_to_dense(base, merged)
    check_compatible(base, [dense], "base", ["merged"])
    return liti(base, dense, eta)
