"""Sampling completions and scoring their tokens: the one implementation shared by the RL loop
(rewards, KL to the anchor, policy gradient) and the harness (KL to SFT, rewards, preferences).

Prompts are left-padded; a completion runs up to and including its first EOS. One temperature
story: completions are sampled from π^T (logits / T), and the log-probabilities that feed the
policy gradient, the KL penalty, the RL metrics and the harness's KL are all of π^T
(`token_logprobs(..., temperature=T)`), so every KL in the project is KL(π^T‖π_ref^T) between the
distributions the samples actually come from. top_p < 1 truncation is not modelled in the log-probs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class Samples:
    """A batch of sampled completions.

    input_ids, attention_mask, completion_mask: [B, P + C] (P padded prompt length, C generated
    length); completion_mask is 1 on generated tokens up to and including the first EOS.
    finished: [B] bool, True where the completion ended with EOS within max_new_tokens.
    """

    prompts: list[str]
    completions: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_length: int
    finished: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Number of generated tokens per completion (EOS included), [B]."""
        return self.completion_mask.sum(-1)


def format_prompts(tokenizer, prompts: Sequence[str], chat_template: bool = False) -> list[str]:
    """Raw prompts, or each wrapped as one user turn of the tokenizer's chat template."""
    if not chat_template:
        return list(prompts)
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def sample(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.9,
           top_p: float = 1.0, seed: int | None = None, chat_template: bool = False) -> Samples:
    """Sample one completion per prompt (pure ancestral sampling at `temperature`: no top-k).

    With `seed`, the global torch RNG is seeded first, so the same model, prompts and seed give
    the same completions.
    """
    texts = format_prompts(tokenizer, prompts, chat_template)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat_template)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    eos = _eos_ids(model, tokenizer)
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                         max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    model.train(was_training)
    p = enc["input_ids"].shape[1]
    gen = out[:, p:]
    is_eos = torch.isin(gen, torch.tensor(eos, device=gen.device))
    # Mask generated tokens up to and including the first EOS.
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
    gen_mask = (~after_eos).long()
    finished = is_eos.any(-1)
    completion_mask = torch.cat([torch.zeros_like(enc["input_ids"]), gen_mask], dim=1)
    attention_mask = torch.cat([enc["attention_mask"], gen_mask], dim=1)
    completions = [tokenizer.decode(g[m.bool()], skip_special_tokens=True) for g, m in zip(gen, gen_mask)]
    return Samples(list(prompts), completions, out, attention_mask, completion_mask, p, finished.cpu())


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   completion_mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(y_t | x, y_<t) for every completion token, 0 elsewhere: [B, P + C] (float32).

    `temperature` T gives the log-probs of the tempered policy π^T (logits / T), the one the
    completions were sampled from; both the RL loop and the harness pass the sampling temperature.
    Differentiable when called with grad enabled (the policy-gradient pass).
    """
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logits = logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:] = picked * completion_mask[:, 1:].float()
    return out


def kl_estimates(logp: torch.Tensor, logp_ref: torch.Tensor, completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-completion Monte Carlo estimates of KL(π‖π_ref) from completions y ~ π, both [B], nats.

    logp, logp_ref: [B, L] per-token log-probabilities of the sampled tokens under π and π_ref, at
    the sampling temperature (`token_logprobs(..., temperature=T)`; 0 off the completion);
    completion_mask: [B, L], 1 on completion tokens. Per completion,
        k1(y) = Σ_t log π(y_t|·) − log π_ref(y_t|·)                 (the paper's sequence log-ratio)
        k3(y) = Σ_t (ρ_t − 1) − log ρ_t,   ρ_t = π_ref(y_t|·) / π(y_t|·)   (Schulman's k3, ≥ 0 per token)
    Both have expectation KL(π‖π_ref) over y ~ π. The RL loop's KL penalty and metrics and the
    harness's KL column all come from this one function.
    """
    mask = completion_mask.to(logp.dtype)
    log_ratio = (logp - logp_ref) * mask            # log π/π_ref per token
    k1 = log_ratio.sum(-1)
    log_rho = -log_ratio
    k3 = ((torch.exp(log_rho) - 1.0 - log_rho) * mask).sum(-1)
    return k1, k3
