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

from merge.io import atomic_directory, atomic_write_json, atomic_write_text

from .config import RLConfig
from .models import load_causal_lm, save_checkpoint
from .reinforce import make_optimizer, reinforce_step
from .rewards import load_reward


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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file written by this package ([] when it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- one run ---------------------------------------------------------------------------------

def run_checkpoints(cfg: RLConfig, iteration: int, run: int) -> list[dict]:
    """Manifest entries of one run: intermediate checkpoints every `save_every` steps, then final."""
    T, every, base = cfg.warp.steps, cfg.warp.save_every, run_path(iteration, run)
    steps = list(range(every, T, every)) if every else []
    entries = [{"path": f"{base}/step_{s:06d}", "iteration": iteration, "run": run, "role": "run", "step": s}
               for s in steps]
    return entries + [{"path": f"{base}/final", "iteration": iteration, "run": run, "role": "run", "step": T}]


def train_run(cfg: RLConfig, run_dir: str | Path, iteration: int, run: int, init: str, train_prompts: list[str],
              reward_spec: str, device: str | None = None, stop_after: int | None = None,
              progress: bool = True, reward_fn: Callable | None = None) -> list[dict]:
    """θ_m ← θ_init; θ_ema ← θ_init; T REINFORCE steps (Algorithm 1's inner loop). Resumes from
    `state/` if present; returns the run's manifest entries. `stop_after` (tests) raises after that
    many steps of this call, simulating a kill."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    base = run_dir / run_path(iteration, run)
    final, state_dir, metrics_path = base / "final", base / "state", base / "metrics.jsonl"
    entries = run_checkpoints(cfg, iteration, run)
    if final.exists():
        return entries
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device or cfg.device)
    rc, T = cfg.reinforce, cfg.warp.steps
    policy, tok = load_causal_lm(str(run_dir / init), dtype=_dtype(cfg.dtype), device=dev)
    if rc.lora is not None:
        policy = _apply_lora(policy, cfg)
    if rc.anchor == "ema":
        anchor = copy.deepcopy(policy).eval()   # θ_ema ← θ_init: the anchor starts AT θ_init, before any step
        sft = load_causal_lm(str(run_dir / "sft"), dtype=_dtype(cfg.dtype), device=dev)[0] if cfg.log_kl_sft else None
    else:
        # The paper's ablation: a fixed anchor at the SFT policy (for every iteration).
        anchor = sft = load_causal_lm(str(run_dir / "sft"), dtype=_dtype(cfg.dtype), device=dev)[0]
    for p in anchor.parameters():
        p.requires_grad_(False)
    optimizer, scheduler = make_optimizer(policy, rc)
    done = 0
    if state_dir.exists():
        done = load_state(state_dir, policy, anchor, optimizer, scheduler)
        atomic_write_text(metrics_path, "".join(json.dumps(m) + "\n" for m in read_jsonl(metrics_path)
                                                if m["step"] <= done))
    elif metrics_path.exists():
        metrics_path.unlink()
    reward = reward_fn or load_reward(reward_spec, device=dev)
    control = load_reward(cfg.control_reward) if cfg.control_reward else (lambda p, c: torch.zeros(len(c)))
    bar = tqdm(total=T, initial=done, desc=f"iter {iteration} run {run}", disable=not progress, dynamic_ncols=True)
    for t in range(done, T):
        if stop_after is not None and t - done >= stop_after:
            bar.close()
            raise KeyboardInterrupt(f"simulated kill after step {t}")
        prompts = batch_prompts(train_prompts, rc.batch_prompts, cfg.seed, iteration, run, t)
        res = reinforce_step(policy, anchor, sft, tok, prompts, reward, control, rc, cfg.generation,
                             optimizer, scheduler, step_seed(cfg.seed, iteration, run, t), ema_anchor=rc.anchor == "ema")
        step = t + 1
        record = {"iteration": iteration, "run": run, "step": step, **res.metrics, "sample": res.completions[0]}
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{record['kl_anchor']:.2f}")
        if cfg.warp.save_every and step % cfg.warp.save_every == 0 and step < T:
            save_checkpoint(policy, tok, base / f"step_{step:06d}", overwrite=True)
        if step % cfg.warp.state_every == 0 and step < T:
            save_state(state_dir, step, policy, anchor, optimizer, scheduler)
    bar.close()
    save_checkpoint(policy, tok, final, overwrite=True)
    shutil.rmtree(state_dir, ignore_errors=True)
    return entries
