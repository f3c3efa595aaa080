"""One RL run (θ_m from θ_init, T REINFORCE steps with an EMA or SFT anchor), resumable.

Layout under RUN_DIR/iter{i}/run{m}/: `step_NNNNNN/` intermediate checkpoints, `final/`, `metrics.jsonl`
(one line per step), and `state/` (policy, anchor, optimizer, scheduler, RNG, step) written
atomically every `warp.state_every` steps and removed once `final/` exists. Everything a step
depends on is a function of (seed, iteration, run, step) or of the saved state, so a run killed at
any point and started again ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from merge.errors import WarpError
from merge.io import atomic_directory, atomic_write_json, read_jsonl, write_jsonl

from .config import RLConfig
from .contract import Task
from .engine import get_engine, resolve_engine
from .models import check_finite_weights, load_causal_lm, resolve_device, save_checkpoint
from .reinforce import make_optimizer, reinforce_step
from .rewards import task_rewards


def run_path(iteration: int, run: int) -> str:
    return f"iter{iteration}/run{run}"


def step_seed(seed: int, iteration: int, run: int, step: int) -> int:
    """Sampling seed of one step: a pure function of where the step is (resume needs no RNG replay)."""
    h = hashlib.sha256(f"{seed}:{iteration}:{run}:{step}".encode()).digest()
    return int.from_bytes(h[:4], "big")


def batch_prompts(train: list[str], n: int, seed: int, iteration: int, run: int, step: int) -> list[str]:
    """Prompts of step `step` (0-based): epoch-wise seeded permutations of the train prompts, so
    the M runs see different orders and the data position is a function of the step."""
    out, start = [], step * n
    while len(out) < n:
        epoch, offset = divmod(start + len(out), len(train))
        g = torch.Generator().manual_seed(step_seed(seed, iteration, run, -1 - epoch))
        perm = torch.randperm(len(train), generator=g).tolist()
        out += [train[i] for i in perm[offset:offset + n - len(out)]]
    return out


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def _apply_lora(model, cfg: RLConfig):
    from peft import LoraConfig, get_peft_model

    lc = cfg.reinforce.lora
    return get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                            target_modules=lc.target_modules, task_type="CAUSAL_LM"))


# ---- resumable state -------------------------------------------------------------------------

def save_state(path: Path, step: int, policy, anchor, optimizer, scheduler) -> None:
    """Atomically write everything the next step depends on."""
    opt = optimizer.state_dict()
    tensors = {f"{i}.{name}": v.detach().cpu().contiguous() for i, st in opt["state"].items()
               for name, v in st.items() if torch.is_tensor(v)}
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"step": step, "param_groups": opt["param_groups"], "scheduler": scheduler.state_dict()}
    with atomic_directory(path, overwrite=True) as tmp:
        save_model(policy, str(tmp / "policy.safetensors"))
        save_model(anchor, str(tmp / "anchor.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        atomic_write_json(tmp / "state.json", meta)


def load_state(path: Path, policy, anchor, optimizer, scheduler) -> int:
    """Restore a state written by `save_state`; returns the number of steps already done."""
    meta = json.loads((path / "state.json").read_text())
    load_model(policy, str(path / "policy.safetensors"))
    load_model(anchor, str(path / "anchor.safetensors"))
    tensors = load_file(str(path / "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("rng.cpu"))
    cuda_rng = tensors.pop("rng.cuda", None)
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_rng)
    state: dict = {}
    for key, v in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    return int(meta["step"])


# ---- one run ---------------------------------------------------------------------------------

def run_checkpoints(cfg: RLConfig, iteration: int, run: int) -> list[dict]:
    """Manifest entries of one run: intermediate checkpoints every `save_every` steps, then final."""
    T, every, base = cfg.warp.steps, cfg.warp.save_every, run_path(iteration, run)
    steps = list(range(every, T, every)) if every else []
    entries = [{"path": f"{base}/step_{s:06d}", "iteration": iteration, "run": run, "role": "run", "step": s}
               for s in steps]
    return entries + [{"path": f"{base}/final", "iteration": iteration, "run": run, "role": "run", "step": T}]


def train_run(cfg: RLConfig, run_dir: str | Path, iteration: int, run: int, init: str, task: Task,
              device: str | None = None, stop_after: int | None = None,
              progress: bool = True, reward_fn: Callable | None = None) -> list[dict]:
    """θ_m ← θ_init; θ_ema ← θ_init; T REINFORCE steps (Algorithm 1's inner loop). Resumes from
    `state/` if present; returns the run's manifest entries.

    The rewards come from `rl.rewards.task_rewards(task)`, the function the harness scores with
    (`reward_fn` replaces the proxy reward, for tests). Parameters, Adam state and the EMA anchor are
    float32; `cfg.dtype: bfloat16` runs the forward passes under bf16 autocast. A NaN/Inf reward,
    loss or gradient stops the run with a NonFiniteError naming iteration, run and step (nothing of
    that step is applied or written). `stop_after` (tests) raises after that many steps of this
    call, simulating a kill."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    train_prompts = [r["prompt"] for r in read_jsonl(run_dir / "prompts" / "train.jsonl")]
    base = run_dir / run_path(iteration, run)
    final, state_dir, metrics_path = base / "final", base / "state", base / "metrics.jsonl"
    entries = run_checkpoints(cfg, iteration, run)
    if final.exists():
        shutil.rmtree(state_dir, ignore_errors=True)   # a kill after final/ was written, before this
        return entries
    base.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device or cfg.device)
    rc, T = cfg.reinforce, cfg.warp.steps
    amp = _dtype(cfg.dtype)
    policy, tok = load_causal_lm(str(run_dir / init), dtype=torch.float32, device=dev)   # float32 master weights
    check_finite_weights(policy, f"iteration {iteration}, run {run}: θ_init {init}")
    if rc.lora is not None:
        policy = _apply_lora(policy, cfg)
    if rc.anchor == "ema":
        anchor = copy.deepcopy(policy).eval()   # θ_ema ← θ_init: the anchor starts AT θ_init, before any step
        sft = load_causal_lm(str(run_dir / "sft"), dtype=torch.float32, device=dev)[0] if cfg.kl_sft_every else None
    else:
        # The paper's ablation: a fixed anchor at the SFT policy (for every iteration).
        anchor = sft = load_causal_lm(str(run_dir / "sft"), dtype=torch.float32, device=dev)[0]
    for p in anchor.parameters():
        p.requires_grad_(False)
    optimizer, scheduler = make_optimizer(policy, rc)
    done = 0
    if state_dir.exists():
        done = load_state(state_dir, policy, anchor, optimizer, scheduler)
        write_jsonl(metrics_path, [m for m in read_jsonl(metrics_path, torn_tail_ok=True) if m["step"] <= done])
    elif metrics_path.exists():
        metrics_path.unlink()
    rewards = task_rewards(task.reward_model, task.control_reward, task.reward_with_prompt, base_dir=run_dir, device=dev)
    reward = reward_fn or rewards["reward"]
    control = rewards["control_reward"]
    save_dtype = _dtype(cfg.warp.storage_dtype)
    ec = cfg.engine
    engine = get_engine(resolve_engine(ec.name, run_dir / init), policy, tok, model_dir=run_dir / init, dtype=ec.dtype,
                        max_model_len=ec.max_model_len, kv_cache_gib=ec.kv_cache_gib,
                        gpu_memory_utilization=ec.gpu_memory_utilization)
    bar = tqdm(total=T, initial=done, desc=f"iter {iteration} run {run}", disable=not progress, dynamic_ncols=True)
    for t in range(done, T):
        if stop_after is not None and t - done >= stop_after:
            bar.close()
            raise KeyboardInterrupt(f"simulated kill after step {t}")
        prompts = batch_prompts(train_prompts, rc.batch_prompts, cfg.seed, iteration, run, t)
        try:
            log_sft = sft is anchor or (cfg.kl_sft_every and (t + 1) % cfg.kl_sft_every == 0)
            res = reinforce_step(policy, anchor, sft if log_sft else None, tok, prompts, reward, control, rc,
                                 cfg.generation, optimizer, scheduler, step_seed(cfg.seed, iteration, run, t),
                                 ema_anchor=rc.anchor == "ema", compute_dtype=amp, engine=engine)
        except WarpError as e:   # NonFiniteError, or a merge refusing a non-finite EMA input
            bar.close()
            raise type(e)(f"iteration {iteration}, run {run}, step {t + 1}: {e}; the run stopped "
                          f"(last saved state: step {done_state(state_dir)})") from None
        step = t + 1
        record = {"iteration": iteration, "run": run, "step": step, **res.metrics,
                  "sample_prompt": prompts[0], "sample": res.completions[0], "sample_reward": float(res.rewards[0])}
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{record['kl_anchor']:.2f}")
        if cfg.warp.save_every and step % cfg.warp.save_every == 0 and step < T:
            save_checkpoint(policy, tok, base / f"step_{step:06d}", overwrite=True, dtype=save_dtype)
        if step % cfg.warp.state_every == 0 and step < T:
            save_state(state_dir, step, policy, anchor, optimizer, scheduler)
    bar.close()
    save_checkpoint(policy, tok, final, overwrite=True)
    shutil.rmtree(state_dir, ignore_errors=True)
    return entries


def done_state(state_dir: Path) -> int:
    """The step of the saved state (0 when there is none)."""
    try:
        return int(json.loads((state_dir / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return 0
