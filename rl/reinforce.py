"""REINFORCE with a KL anchor (paper Eq. 1–2): the math as pure functions, one step as a function.

    r_β(x, y) = r(x, y) − β · Σ_t log[π_θ^T(y_t|·) / π_anchor^T(y_t|·)]    (k1 estimate, detached)
    loss      = −mean[(r_β − b) · Σ_t log π_θ^T(y_t|·)]                    b ∈ {0, batch mean, RLOO}
    θ_anchor ← (1−μ)·θ_anchor + μ·θ        after each optimizer step (EMA anchor; `merge.ema_update`)

π^T is the policy at the sampling temperature T (logits / T): y is drawn from it, so its
log-probabilities are the ones REINFORCE and the KL need (see `reinforce_step`).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Sequence

import torch

import merge
from merge.errors import WarpError
from rl.engine import HFEngine
from rl.sampling import Samples, kl_estimates, sample, token_logprobs

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
    # the fused kernel (CPU and CUDA): 3.7× faster than the per-tensor loop for 108M parameters on 2 cores
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(cfg.warmup_steps))
    return opt, sched


class NonFiniteError(WarpError):
    """A NaN/Inf reward, loss or gradient: the step is not applied (the caller names where it happened)."""


def check_finite(what: str, x: torch.Tensor) -> None:
    """Raise NonFiniteError when `x` has a NaN/Inf entry, saying how many of how many."""
    bad = ~torch.isfinite(x.detach())
    if bool(bad.any()):
        raise NonFiniteError(f"{what} is NaN/Inf ({int(bad.sum())} of {bad.numel()} values)")


def compute_context(device: torch.device | str, dtype: torch.dtype | None):
    """Mixed precision for the forward passes: autocast to `dtype` (bf16) while the parameters, the
    Adam state and the EMA anchor stay float32 (master weights), so μ- and lr-sized updates are
    not rounded away. float32 (or None): no autocast."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@dataclass
class StepResult:
    metrics: dict
    completions: list[str]
    samples: Samples | None = None
    rewards: torch.Tensor | None = None


def reinforce_step(policy, anchor, sft, tokenizer, prompts: Sequence[str], reward_fn, control_fn,
                   cfg: ReinforceConfig, gen: GenerationConfig, optimizer, scheduler, seed: int,
                   ema_anchor: bool = True, compute_dtype: torch.dtype | None = None, engine=None) -> StepResult:
    """One REINFORCE step on `prompts` (each sampled k = samples_per_prompt times, consecutive rows).

    `anchor` is the EMA anchor (updated in place after the optimizer step when `ema_anchor`) or the
    fixed SFT policy; `sft` (or None) only feeds the kl_sft metric. Returns metrics (times in s).

    `engine` (rl.engine; default: transformers on `policy`) samples the rollouts: the policy's
    current weights are pushed into it first (in memory), then the loss and KL log-probs are
    computed by the trained model itself. metrics `logprob_gap_mean/max` are |engine − trainer|
    per sampled token, so off-policy drift between the two is visible.

    One temperature: completions are sampled from π_θ^T (logits / T, T = gen.temperature), and every
    log-probability that feeds the loss, the KL penalty and the metrics is of the tempered policies
    (π_θ^T, π_anchor^T, π_sft^T): the policy gradient is that of the sampling distribution, and the
    KL is KL(π_θ^T‖π_ref^T), the same definition the harness reports. Dropout is off in every pass
    (models stay in eval mode), as in TRL. Non-finite rewards, losses or gradients raise
    NonFiniteError before the optimizer step, so no NaN reaches the weights.
    """
    k, T = cfg.samples_per_prompt, gen.temperature
    rows = [p for p in prompts for _ in range(k)]
    device = next(policy.parameters()).device
    amp = compute_context(device, compute_dtype)
    for m in (policy, anchor, sft):
        if m is not None:
            m.eval()
    t0 = time.perf_counter()
    engine = engine if engine is not None else HFEngine(policy, tokenizer)
    engine.set_weights(policy)
    t_push = time.perf_counter()
    with amp:
        s = sample(engine, tokenizer, rows, max_new_tokens=gen.max_new_tokens, temperature=T,
                   top_p=gen.top_p, seed=seed, chat_template=gen.chat_template)
    t1 = time.perf_counter()
    reward = torch.as_tensor(reward_fn(rows, s.completions)).float()
    check_finite("reward", reward)
    control = torch.as_tensor(control_fn(rows, s.completions)).float()
    check_finite("control reward", control)
    lengths = s.lengths
    r = shaped_reward(reward, s.finished, lengths, cfg)
    t2 = time.perf_counter()
    with torch.no_grad(), amp:
        tok_anchor = token_logprobs(anchor, s.input_ids, s.attention_mask, s.completion_mask, temperature=T)
        tok_sft = (token_logprobs(sft, s.input_ids, s.attention_mask, s.completion_mask, temperature=T)
                   if sft is not None and sft is not anchor else tok_anchor if sft is anchor else None)
    t3 = time.perf_counter()
    with amp:
        tok_logp = token_logprobs(policy, s.input_ids, s.attention_mask, s.completion_mask, temperature=T)
    seq_logp = tok_logp.sum(-1)
    t4 = time.perf_counter()
    kl_anchor, _ = kl_estimates(tok_logp.detach(), tok_anchor, s.completion_mask)   # k1, the metric
    r_beta = kl_regularised_reward(r.to(seq_logp.device), seq_logp.detach(), tok_anchor.sum(-1), cfg.beta)
    b = baseline(r_beta, cfg.baseline, k)
    loss = policy_gradient_loss(seq_logp, r_beta, b)
    check_finite("loss", loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    lr = optimizer.param_groups[0]["lr"]   # the rate this step used (warm-up)
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], cfg.max_grad_norm)
    try:
        check_finite("gradient norm", grad_norm)
    except NonFiniteError:
        optimizer.zero_grad(set_to_none=True)
        raise
    optimizer.step()
    scheduler.step()
    t5 = time.perf_counter()
    if ema_anchor:
        merge.ema_update(anchor, policy, cfg.mu)
    t6 = time.perf_counter()
    n_tok = lengths.clamp(min=1).float()
    mask = s.completion_mask.bool()
    gap = (s.engine_logprobs.to(tok_logp.device) - tok_logp.detach())[mask].abs() if s.engine_logprobs is not None else None
    kl_sft = kl_estimates(tok_logp.detach(), tok_sft, s.completion_mask)[0] if tok_sft is not None else None
    metrics = {
        "reward": float(reward.mean()), "control_reward": float(control.mean()),
        "shaped_reward": float(r.mean()), "r_beta": float(r_beta.mean()),
        "kl_anchor": float(kl_anchor.mean()),
        "kl_sft": float(kl_sft.mean()) if kl_sft is not None else None,
        "length": float(lengths.float().mean()), "finished": float(s.finished.float().mean()),
        "entropy": float((-seq_logp.detach().cpu() / n_tok).mean()),   # MC estimate, nats/token, of π_θ^T
        "loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": float(lr),
        "logprob_gap_mean": float(gap.mean()) if gap is not None and gap.numel() else None,
        "logprob_gap_max": float(gap.max()) if gap is not None and gap.numel() else None,
        "engine": s.engine,
        "time_push": t_push - t0, "time_generate": t1 - t_push, "time_reward": t2 - t1, "time_logprob_ref": t3 - t2,
        "time_logprob_policy": t4 - t3, "time_backward_optimizer": t5 - t4, "time_ema": t6 - t5,
    }
    return StepResult(metrics, s.completions, s, reward)
