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

    input_ids, attention_mask, completion_mask: [B, P + C] (P padded prompt length, C longest
    completion); prompts are left-padded, completions right-padded; completion_mask is 1 on
    generated tokens up to and including the first EOS. finished: [B] bool, True where the
    completion ended with EOS within max_new_tokens. engine_logprobs: [B, P + C], the engine's
    log-probability of each sampled token under the distribution it was drawn from (0 elsewhere).
    """

    prompts: list[str]
    completions: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_length: int
    finished: torch.Tensor
    engine_logprobs: torch.Tensor | None = None
    engine: str = "hf"

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


def encode_prompts(tokenizer, prompts: Sequence[str], chat_template: bool = False) -> list[list[int]]:
    """Token ids of each prompt (the chat template already holds its special tokens)."""
    return [tokenizer(t, add_special_tokens=not chat_template).input_ids
            for t in format_prompts(tokenizer, prompts, chat_template)]


def to_samples(tokenizer, prompts: Sequence[str], prompt_ids: Sequence[Sequence[int]], completions, engine: str) -> Samples:
    """Lay out engine completions as a Samples batch (what the log-prob passes read)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    P = max(len(p) for p in prompt_ids)
    C = max(1, max(len(c.token_ids) for c in completions))
    B = len(prompt_ids)
    ids = torch.full((B, P + C), pad, dtype=torch.long)
    att = torch.zeros((B, P + C), dtype=torch.long)
    comp = torch.zeros((B, P + C), dtype=torch.long)
    elp = torch.zeros((B, P + C), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompt_ids, completions)):
        n = len(c.token_ids)
        ids[i, P - len(p):P] = torch.tensor(list(p), dtype=torch.long)
        att[i, P - len(p):P + n] = 1
        if n:
            ids[i, P:P + n] = torch.tensor(c.token_ids, dtype=torch.long)
            comp[i, P:P + n] = 1
            elp[i, P:P + n] = torch.tensor(c.logprobs, dtype=torch.float32)
    texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
    finished = torch.tensor([c.finished for c in completions], dtype=torch.bool)
    return Samples(list(prompts), texts, ids, att, comp, P, finished, elp, engine)


@torch.no_grad()
def sample(engine, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.9,
           top_p: float = 1.0, seed: int | None = None, chat_template: bool = False) -> Samples:
    """Sample one completion per prompt (ancestral sampling at `temperature`, top-p, no top-k) with
    `engine` (rl.engine: vLLM or transformers; a plain transformers model is wrapped as the latter).

    With `seed`, the same engine, weights, prompts and seed give the same completions.
    """
    from .engine import Settings, as_engine

    eng = as_engine(engine, tokenizer)
    ids = encode_prompts(tokenizer, prompts, chat_template)
    comps = eng.generate(ids, Settings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p), seed)
    return to_samples(tokenizer, prompts, ids, comps, eng.name)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   completion_mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(y_t | x, y_<t) for every completion token, 0 elsewhere: [B, P + C] (float32).

    `temperature` T gives the log-probs of the tempered policy π^T (logits / T), the one the
    completions were sampled from; both the RL loop and the harness pass the sampling temperature.
    Differentiable when called with grad enabled (the policy-gradient pass). Only the positions
    that predict completion tokens go through the LM head (`logits_to_keep`): prompts are
    left-padded, so those are the last C + 1 positions.
    """
    device = next(model.parameters()).device
    input_ids, attention_mask, completion_mask = (t.to(device) for t in (input_ids, attention_mask, completion_mask))
    L = input_ids.shape[1]
    cols = completion_mask.any(0).nonzero()
    first = max(1, int(cols[0])) if len(cols) else L - 1      # first column holding a completion token
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    try:
        logits = model(**kwargs, logits_to_keep=L - first + 1).logits
    except TypeError:        # a model class without logits_to_keep: all positions
        logits = model(**kwargs).logits
    logits = logits[:, -(L - first + 1):-1].float()          # positions first−1 .. L−2 predict first .. L−1
    if temperature != 1.0:
        logits = logits / temperature
    # log softmax at the sampled token only: z_y − logsumexp(z) (no [B, C, V] log-prob tensor)
    picked = logits.gather(-1, input_ids[:, first:].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, first:] = picked * completion_mask[:, first:].float()
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
    mask = completion_mask.to(device=logp.device, dtype=logp.dtype)
    log_ratio = (logp - logp_ref.to(logp.device)) * mask            # log π/π_ref per token
    k1 = log_ratio.sum(-1)
    log_rho = -log_ratio
    k3 = ((torch.exp(log_rho) - 1.0 - log_rho) * mask).sum(-1)
    return k1, k3
