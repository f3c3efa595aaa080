"""REINFORCE with a KL anchor (paper Eq. 1–2): the math as pure functions, one step as a function.

    r_β(x, y) = r(x, y) − β · Σ_t log[π_θ(y_t|·) / π_anchor(y_t|·)]        (k1 estimate, detached)
    loss      = −mean[(r_β − b) · Σ_t log π_θ(y_t|·)]                      b ∈ {0, batch mean, RLOO}
    θ_anchor ← (1−μ)·θ_anchor + μ·θ        after each optimizer step (EMA anchor; `merge.ema_update`)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

import merge
from rl.sampling import sample, token_logprobs

from .config import GenerationConfig, ReinforceConfig


def kl_regularised_reward(reward: torch.Tensor, logp_policy: torch.Tensor, logp_anchor: torch.Tensor,
                          beta: float) -> torch.Tensor:
    """r_β = r − β·(log π_θ(y|x) − log π_anchor(y|x)), all [B]; detached (no gradient through the KL)."""
    return (reward - beta * (logp_policy - logp_anchor)).detach()


def baseline(r: torch.Tensor, kind: str, k: int = 1) -> torch.Tensor:
    """Per-sample baseline b [B] for rewards r [B], rows grouped as k consecutive samples per prompt.

    none: 0; mean: the batch mean; rloo: for sample j of a prompt, the mean of that prompt's other
    k−1 samples, (Σ_group r − r_j) / (k − 1) (REINFORCE leave-one-out).
    """
    if kind == "none":
        return torch.zeros_like(r)
    if kind == "mean":
        return r.mean().expand_as(r).clone()
    if kind == "rloo":
        if k < 2 or r.numel() % k:
            raise ValueError(f"rloo needs k ≥ 2 samples per prompt dividing the batch, got k={k}, B={r.numel()}")
        g = r.view(-1, k)
        return ((g.sum(-1, keepdim=True) - g) / (k - 1)).reshape(-1)
    raise ValueError(f"unknown baseline {kind!r}")


def policy_gradient_loss(seq_logp: torch.Tensor, r_beta: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """−mean[(r_β − b)·Σ_t log π_θ]: its gradient is the REINFORCE estimate of −∇E[r_β]."""
    return -((r_beta - b).detach() * seq_logp).mean()


def shaped_reward(reward: torch.Tensor, finished: torch.Tensor, lengths: torch.Tensor,
                  cfg: ReinforceConfig) -> torch.Tensor:
    """Optional penalties: unfinished completions get `unfinished_reward`; r −= length_penalty·len."""
    r = reward.float().clone()
    if cfg.unfinished_reward is not None:
        r = torch.where(finished.to(r.device), r, torch.full_like(r, cfg.unfinished_reward))
    if cfg.length_penalty:
        r = r - cfg.length_penalty * lengths.to(r)
    return r


def warmup_lambda(warmup_steps: int):
    """Linear warm-up to the full learning rate over `warmup_steps` optimizer steps, then constant."""
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def make_optimizer(model, cfg: ReinforceConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(cfg.warmup_steps))
    return opt, sched


@dataclass
class StepResult:
    metrics: dict
    completions: list[str]


def reinforce_step(policy, anchor, sft, tokenizer, prompts: Sequence[str], reward_fn, control_fn,
                   cfg: ReinforceConfig, gen: GenerationConfig, optimizer, scheduler, seed: int,
                   ema_anchor: bool = True) -> StepResult:
    """One REINFORCE step on `prompts` (each sampled k = samples_per_prompt times, consecutive rows).

    `anchor` is the EMA anchor (updated in place after the optimizer step when `ema_anchor`) or the
    fixed SFT policy; `sft` (or None) only feeds the kl_sft metric. Returns metrics (times in s).
    """
    k = cfg.samples_per_prompt
    rows = [p for p in prompts for _ in range(k)]
    t0 = time.perf_counter()
    s = sample(policy, tokenizer, rows, max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
               top_p=gen.top_p, seed=seed, chat_template=gen.chat_template)
    t1 = time.perf_counter()
    reward = reward_fn(rows, s.completions).float()
    control = control_fn(rows, s.completions).float()
    lengths = s.lengths
    r = shaped_reward(reward, s.finished, lengths, cfg)
    t2 = time.perf_counter()
    with torch.no_grad():
        logp_anchor = token_logprobs(anchor, s.input_ids, s.attention_mask, s.completion_mask).sum(-1)
        logp_sft = (token_logprobs(sft, s.input_ids, s.attention_mask, s.completion_mask).sum(-1)
                    if sft is not None and sft is not anchor else logp_anchor if sft is anchor else None)
    t3 = time.perf_counter()
    policy.train()
    tok_logp = token_logprobs(policy, s.input_ids, s.attention_mask, s.completion_mask)
    seq_logp = tok_logp.sum(-1)
    t4 = time.perf_counter()
    r_beta = kl_regularised_reward(r.to(seq_logp.device), seq_logp.detach(), logp_anchor, cfg.beta)
    b = baseline(r_beta, cfg.baseline, k)
    loss = policy_gradient_loss(seq_logp, r_beta, b)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    lr = optimizer.param_groups[0]["lr"]   # the rate this step used (warm-up)
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    policy.eval()
    t5 = time.perf_counter()
    if ema_anchor:
        merge.ema_update(anchor, policy, cfg.mu)
    t6 = time.perf_counter()
    n_tok = lengths.clamp(min=1).float()
    kl_anchor = (seq_logp.detach() - logp_anchor).float()
    metrics = {
        "reward": float(reward.mean()), "control_reward": float(control.mean()),
        "shaped_reward": float(r.mean()), "r_beta": float(r_beta.mean()),
        "kl_anchor": float(kl_anchor.mean()),
        "kl_sft": float((seq_logp.detach() - logp_sft).mean()) if logp_sft is not None else None,
        "length": float(lengths.float().mean()), "finished": float(s.finished.float().mean()),
        "entropy": float((-seq_logp.detach().cpu() / n_tok).mean()),   # MC estimate, nats/token
        "loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": float(lr),
        "time_generate": t1 - t0, "time_reward": t2 - t1, "time_logprob_ref": t3 - t2,
        "time_logprob_policy": t4 - t3, "time_backward_optimizer": t5 - t4, "time_ema": t6 - t5,
    }
    return StepResult(metrics, s.completions)
