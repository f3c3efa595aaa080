"""One REINFORCE step of the project, split by phase, and (with --vs-trl) against TRL's RLOOTrainer.

    python bench/rl_step_bench.py [--config configs/quick.yaml] [--steps 5] [--engine auto] [--hold 1]
    python bench/rl_step_bench.py --vs-trl [--steps 5]

Default: seconds per phase at the config's settings (weight push into the engine, generation,
reward, log-prob passes for the anchor/SFT and the policy, backward + optimizer, EMA), each
phase's share, and peak RSS. `--hold M` keeps M policies (+ anchors and optimizer state) alive at
once, as if the M runs of an iteration shared this process.

--vs-trl: completions per second of the project's WARP step against TRL 1.16 `RLOOTrainer` with
`sync_ref_model=True, ref_model_mixup_alpha=μ, ref_model_sync_steps=1` (its reference model is then
WARP's EMA anchor), on the same model, reward model, prompts, batch (8 prompts × 2 samples), lengths
(16 new tokens, T = 0.9), β, learning rate and threads, measured in this one run after a warm-up
step each. Each side runs in its own process. The last line is `ratio_vs_trl=X.XX`.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # run from a checkout: python bench/...

from merge.config import from_mapping, load_config, to_mapping  # noqa: E402
from rl.config import RLConfig  # noqa: E402

PHASES = ["time_push", "time_generate", "time_reward", "time_logprob_ref", "time_logprob_policy",
          "time_backward_optimizer", "time_ema"]
TRL_SHAPE = {"batch_prompts": 8, "samples_per_prompt": 2, "baseline": "rloo"}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2   # Linux: KiB


def train_prompts(cfg: RLConfig) -> list[str]:
    from rl.data import load_splits, prompts as make_prompts

    return [p["prompt"] for p in make_prompts(load_splits(cfg.data)["train"], cfg.data)]


def ours(cfg: RLConfig, steps: int, hold: int) -> dict:
    """The project's step (rl.reinforce.reinforce_step through rl.run's engine), timed per phase."""
    from rl.engine import get_engine, resolve_engine
    from rl.models import load_causal_lm, resolve_model
    from rl.reinforce import make_optimizer, reinforce_step
    from rl.rewards import task_rewards
    from rl.rm import resolve_reward_spec

    rc, gen = cfg.reinforce, cfg.generation
    t0 = time.perf_counter()
    sft, tok = load_causal_lm(cfg.policy)
    load_s = time.perf_counter() - t0
    rewards = task_rewards(resolve_reward_spec(cfg.reward_model), cfg.control_reward, cfg.reward_with_prompt)
    train = train_prompts(cfg)
    runs = []
    for _ in range(hold):
        policy = copy.deepcopy(sft)
        anchor = copy.deepcopy(sft).requires_grad_(False)
        runs.append((policy, anchor, *make_optimizer(policy, rc)))
    name = resolve_engine(cfg.engine.name, resolve_model(cfg.policy))
    t0 = time.perf_counter()
    engine = get_engine(name, runs[0][0], tok, model_dir=resolve_model(cfg.policy), dtype=cfg.engine.dtype,
                        max_model_len=cfg.engine.max_model_len, kv_cache_gib=cfg.engine.kv_cache_gib)
    start_s = time.perf_counter() - t0
    rows = []
    for step in range(steps + 1):
        policy, anchor, opt, sched = runs[step % hold]
        prompts = train[step * rc.batch_prompts:(step + 1) * rc.batch_prompts]
        log_sft = cfg.kl_sft_every and (step + 1) % cfg.kl_sft_every == 0
        t = time.perf_counter()
        m = reinforce_step(policy, anchor, sft if log_sft else None, tok, prompts, rewards["reward"],
                           rewards["control_reward"], rc, gen, opt, sched, seed=step, engine=engine).metrics
        m["total"] = time.perf_counter() - t
        if step:   # the first step pays one-off allocations
            rows.append(m)
    return {"rows": rows, "load_s": load_s, "engine": name, "engine_start_s": start_s, "rss_gb": peak_rss_gb(),
            "threads": torch.get_num_threads()}


def trl(cfg: RLConfig, steps: int) -> dict:
    """TRL 1.16 RLOOTrainer at the same shape; its ref model synced as WARP's EMA (α = μ every step)."""
    import tempfile

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from rl.models import load_causal_lm
    from rl.rewards import task_rewards
    from rl.rm import resolve_reward_spec

    rc, gen = cfg.reinforce, cfg.generation
    model, tok = load_causal_lm(cfg.policy)
    proxy = task_rewards(resolve_reward_spec(cfg.reward_model), "vader", cfg.reward_with_prompt)["reward"]

    def reward(prompts, completions, **_):
        return proxy(prompts, completions).tolist()

    k = rc.samples_per_prompt
    n = rc.batch_prompts * (steps + 1)
    data = Dataset.from_dict({"prompt": train_prompts(cfg)[:n]})
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = RLOOConfig(output_dir=out, per_device_train_batch_size=rc.batch_prompts * k, num_generations=k,
                          max_completion_length=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p,
                          beta=rc.beta, learning_rate=rc.lr, max_steps=steps + 1, sync_ref_model=True,
                          ref_model_mixup_alpha=rc.mu, ref_model_sync_steps=1, logging_steps=1, report_to=[],
                          save_strategy="no", use_cpu=True, bf16=False, seed=cfg.seed, shuffle_dataset=False,
                          max_grad_norm=rc.max_grad_norm, warmup_steps=rc.warmup_steps)
        trainer = RLOOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok,
                              callbacks=[Clock()])
        t0 = time.perf_counter()
        trainer.train()
    times = [b - a for a, b in zip([t0] + stamps[:-1], stamps)][1:]   # drop the warm-up step
    return {"step_s": times, "rss_gb": peak_rss_gb(), "threads": torch.get_num_threads()}


def _child(kind: str, cfg: dict, steps: int, hold: int) -> None:
    c = from_mapping(RLConfig, cfg)
    from merge.threads import set_threads

    set_threads(c.threads)
    res = ours(c, steps, hold) if kind == "ours" else trl(c, steps)
    print(json.dumps(res))


def _run_child(kind: str, cfg: RLConfig, steps: int, hold: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--child-config", json.dumps(to_mapping(cfg)),
           "--steps", str(steps), "--hold", str(hold)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{kind} failed: {out.stderr.strip()[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quick.yaml")
    ap.add_argument("--steps", type=int, default=5, help="measured steps (after one warm-up step)")
    ap.add_argument("--hold", type=int, default=1, help="policies held in memory at once (M runs in one process)")
    ap.add_argument("--engine", default=None, choices=["auto", "vllm", "hf"], help="override the config's engine")
    ap.add_argument("--vs-trl", action="store_true", help="also run TRL's RLOOTrainer at the same shape")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-config", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, json.loads(args.child_config), args.steps, args.hold)
        return
    cfg = load_config(RLConfig, args.config)
    if args.engine:
        cfg.engine.name = args.engine
    if args.vs_trl:
        for k, v in TRL_SHAPE.items():
            setattr(cfg.reinforce, k, v)
        cfg.generation.max_new_tokens = 16
    rc, gen = cfg.reinforce, cfg.generation
    res = _run_child("ours", cfg, args.steps, args.hold)
    rows, total = res["rows"], statistics.mean(r["total"] for r in res["rows"])
    print(f"config {args.config}: {rc.batch_prompts} prompts × {rc.samples_per_prompt} samples, {gen.max_new_tokens} "
          f"new tokens, {res['threads']} threads, engine {res['engine']} (start {res['engine_start_s']:.1f} s), "
          f"kl_sft every {cfg.kl_sft_every} step(s), {args.steps} steps; model load {res['load_s']:.2f} s")
    for k in PHASES:
        v = statistics.mean(r[k] for r in rows)
        print(f"  {k[5:]:<22} {v:7.3f} s   {v / total:6.1%}")
    print(f"  {'step (total)':<22} {total:7.3f} s   (s.d. {statistics.pstdev(r['total'] for r in rows):.3f})")
    gaps = [r["logprob_gap_max"] for r in rows if r.get("logprob_gap_max") is not None]
    if gaps:
        print(f"engine vs trainer log-prob gap: max {max(gaps):.2e} per token")
    ema = statistics.mean(r["time_ema"] for r in rows) / total
    print(f"EMA share of the step: {ema:.2%} (target < 2%: {'ok' if ema < 0.02 else 'MISSED'})")
    print(f"peak RSS: {res['rss_gb']:.2f} GB (target < 6 GB: {'ok' if res['rss_gb'] < 6 else 'MISSED'})")
    if args.vs_trl:
        t = _run_child("trl", cfg, args.steps, 1)
        trl_step = statistics.mean(t["step_s"])
        per = rc.batch_prompts * rc.samples_per_prompt
        print(f"TRL RLOOTrainer: {trl_step:.3f} s/step (s.d. {statistics.pstdev(t['step_s']):.3f}), "
              f"{per / trl_step:.2f} completions/s, peak RSS {t['rss_gb']:.2f} GB")
        print(f"ours: {total:.3f} s/step, {per / total:.2f} completions/s")
        print(f"ratio_vs_trl={trl_step / total:.2f}")


if __name__ == "__main__":
    main()
