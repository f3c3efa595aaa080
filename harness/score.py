"""Scoring one policy on held-out prompts: KL(π‖π_sft), proxy and control reward, length,
unfinished share, distinct-n. Completions come from `rl.sampling.sample` with the run's
generation settings and fixed seeds (one per batch: `seed + batch index`).

Which KL: the completions are drawn from the sampling policy π^T (logits / T, the run's
temperature), so the log-probabilities of both π and π_sft are taken at that same temperature:
the estimate is then unbiased for KL(π^T‖π_sft^T), the KL between the two distributions the
samples and rewards actually come from (k3 is only unbiased when the log-probs are those of the
sampling distribution). At T = 1 this is KL(π‖π_sft). top_p < 1 truncation is not modelled.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from rl.sampling import sample, token_logprobs

from .manifest import Generation, HarnessError
from .metrics import distinct_n, kl_estimates, mean_se


def load_policy(spec: str | os.PathLike, what: str = "checkpoint", trust_remote_code: bool = False):
    """(model, tokenizer) in eval mode, through the project's one loader (`rl.models.load_causal_lm`):
    a Hugging Face directory, a hub id or a builtin alias; safetensors only."""
    from merge.errors import WarpError
    from rl.models import load_causal_lm

    try:
        model, tok = load_causal_lm(str(spec), trust_remote_code=trust_remote_code)
    except WarpError as e:
        raise HarnessError(f"cannot load {what} {spec}: {e}") from None
    except Exception as e:  # noqa: BLE001 — any loader failure is the user's bad input here
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HarnessError(f"cannot load {what} {spec}: {first}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def liti_hash(sft_hash: str, slerp_hash: str, eta: float) -> str:
    """Content hash of the in-memory LITI point (1−η)·θ_sft + η·θ_slerp; the endpoints are the checkpoints."""
    if eta == 0.0:
        return sft_hash
    if eta == 1.0:
        return slerp_hash
    return hashlib.sha256(f"liti|{sft_hash}|{slerp_hash}|{eta!r}".encode()).hexdigest()


def same_vocabulary(tok_a, tok_b) -> bool:
    """KL to π_sft needs the same token space: equal vocabularies (token → id)."""
    return tok_a is tok_b or tok_a.get_vocab() == tok_b.get_vocab()


@dataclass
class PointScore:
    metrics: dict[str, float]
    records: list[dict]
    engine: str = "hf"          # the engine that sampled the completions


KL_CHUNK = 32   # rows per log-prob pass: 128 rows at once was 1.4× slower (memory traffic), measured


@torch.no_grad()
def kl_on_samples(model, sft_model, samples, temperature: float,
                  policy_logprobs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-completion k1 and k3 estimates of KL(π^T‖π_sft^T) on completions sampled from π^T: the
    tempered log-probs of both models (`token_logprobs`) fed to the one estimator `kl_estimates`
    that the RL loop also uses, so a checkpoint's training-time KL and its harness KL agree.
    `policy_logprobs` ([B, L], the sampling engine's, when they are the policy's own to float32
    precision) replace the policy's pass."""
    s = samples
    k1, k3 = [], []
    for i in range(0, s.input_ids.shape[0], KL_CHUNK):
        rows = slice(i, i + KL_CHUNK)
        args = (s.input_ids[rows], s.attention_mask[rows], s.completion_mask[rows])
        lp = (policy_logprobs[rows] if policy_logprobs is not None
              else token_logprobs(model, *args, temperature=temperature))
        lp_sft = token_logprobs(sft_model, *args, temperature=temperature)
        a, b = kl_estimates(lp.to(lp_sft.device), lp_sft, s.completion_mask[rows])
        k1.append(a.cpu())
        k3.append(b.cpu())
    return torch.cat(k1), torch.cat(k3)


@torch.no_grad()
def score_policy(model, tokenizer, sft_model, prompts: Sequence[dict], rewards: Mapping[str, object],
                 generation: Generation, seed: int = 0, batch_size: int = 16, desc: str = "score",
                 engine=None) -> PointScore:
    """Sample one completion per prompt and score it.

    prompts: records {"id", "prompt"}; rewards: name -> RewardModel ((prompts, completions) -> [B]),
    e.g. {"reward": proxy, "control_reward": vader}; sft_model: π_sft sharing `tokenizer`'s
    vocabulary, or None (then the KL metrics are NaN).
    Returns the metrics (means and standard errors) and one record per completion with its
    per-sample values (kl_k1, kl_k3, each reward, length, finished).
    """
    records: list[dict] = []
    T = generation.temperature
    batches = range(0, len(prompts), batch_size)
    for b, start in enumerate(tqdm(batches, desc=desc, leave=False, unit="batch", disable=None)):
        chunk = prompts[start:start + batch_size]
        texts = [r["prompt"] for r in chunk]
        s = sample(engine if engine is not None else model, tokenizer, texts, max_new_tokens=generation.max_new_tokens,
                   temperature=T,
                   top_p=generation.top_p, seed=seed + b, chat_template=generation.chat_template)
        if sft_model is not None:
            exact = engine is not None and getattr(engine, "exact_logprobs", False)
            k1, k3 = kl_on_samples(model, sft_model, s, T, policy_logprobs=s.engine_logprobs if exact else None)
        else:
            k1 = k3 = torch.full((len(chunk),), float("nan"))
        scores = {name: rm(texts, s.completions).float().cpu() for name, rm in rewards.items()}
        for i, r in enumerate(chunk):
            rec = {"id": r["id"], "prompt": r["prompt"], "completion": s.completions[i],
                   "length": int(s.lengths[i]), "finished": bool(s.finished[i]),
                   "kl_k1": float(k1[i]), "kl_k3": float(k3[i])}
            rec.update({name: float(v[i]) for name, v in scores.items()})
            records.append(rec)
    return PointScore(summarize(records, list(rewards)), records, engine.name if engine is not None else "hf")


def summarize(records: Sequence[dict], reward_names: Sequence[str]) -> dict[str, float]:
    """Metrics of one point from its per-completion records: mean and s.e. of each per-sample value."""
    m: dict[str, float] = {"n": float(len(records))}
    for key in ["kl_k1", "kl_k3", *reward_names, "length"]:
        m[key], m[f"{key}_se"] = mean_se([r[key] for r in records])
    m["kl"], m["kl_se"] = m["kl_k1"], m["kl_k1_se"]
    m["unfinished"], m["unfinished_se"] = mean_se([0.0 if r["finished"] else 1.0 for r in records])
    texts = [r["completion"] for r in records]
    m["distinct_1"], m["distinct_2"] = distinct_n(texts, 1), distinct_n(texts, 2)
    return m
