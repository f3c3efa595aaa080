"""Per-step time split of one REINFORCE step at configs/quick.yaml's settings, and peak RSS.

    python bench/rl_step_bench.py [--config configs/quick.yaml] [--steps 5] [--hold 1]

Prints seconds per phase (generation, reward, log-prob passes for anchor/SFT and policy,
backward+optimizer, EMA update), each phase's share of the step, and peak RSS. Targets on 2
cores: EMA < 2% of the step, peak RSS < 6 GB. `--hold M` keeps M policies (+ anchors and
optimizer state) alive in this process at once, as if the M runs of an iteration shared it.
"""
from __future__ import annotations

import argparse
import copy
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout: python bench/...

from merge.config import load_config
from rl.config import RLConfig
from rl.data import load_splits, prompts as make_prompts
from rl.models import load_causal_lm
from rl.reinforce import make_optimizer, reinforce_step
from rl.rewards import load_reward
from rl.rm import resolve_reward_spec

PHASES = ["time_generate", "time_reward", "time_logprob_ref", "time_logprob_policy", "time_backward_optimizer", "time_ema"]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2   # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quick.yaml")
    ap.add_argument("--steps", type=int, default=5, help="measured steps (after one warm-up step)")
    ap.add_argument("--hold", type=int, default=1, help="policies held in memory at once (M runs in one process)")
    args = ap.parse_args()
    cfg = load_config(RLConfig, args.config)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    rc, gen = cfg.reinforce, cfg.generation
    t0 = time.perf_counter()
    sft, tok = load_causal_lm(cfg.policy)
    load_s = time.perf_counter() - t0
    reward = load_reward(resolve_reward_spec(cfg.reward_model))
    control = load_reward(cfg.control_reward)
    train = [p["prompt"] for p in make_prompts(load_splits(cfg.data)["train"], cfg.data)]
    runs = []
    for m in range(args.hold):
        policy = copy.deepcopy(sft)
        anchor = copy.deepcopy(sft).requires_grad_(False)
        runs.append((policy, anchor, *make_optimizer(policy, rc)))
    rows = []
    for step in range(args.steps + 1):
        policy, anchor, opt, sched = runs[step % args.hold]
        prompts = train[step * rc.batch_prompts:(step + 1) * rc.batch_prompts]
        t = time.perf_counter()
        m = reinforce_step(policy, anchor, sft, tok, prompts, reward, control, rc, gen, opt, sched, seed=step).metrics
        m["total"] = time.perf_counter() - t
        if step:   # the first step pays one-off allocations
            rows.append(m)
    total = statistics.mean(r["total"] for r in rows)
    print(f"config {args.config}: batch {rc.batch_prompts}×{rc.samples_per_prompt}, {gen.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads, {args.steps} steps, {args.hold} polic{'y' if args.hold == 1 else 'ies'} held; "
          f"model load {load_s:.2f} s")
    for k in PHASES:
        v = statistics.mean(r[k] for r in rows)
        print(f"  {k[5:]:<22} {v:7.3f} s   {v / total:6.1%}")
    print(f"  {'step (total)':<22} {total:7.3f} s   (s.d. {statistics.pstdev(r['total'] for r in rows):.3f})")
    ema = statistics.mean(r["time_ema"] for r in rows) / total
    rss = peak_rss_gb()
    print(f"EMA share of the step: {ema:.2%} (target < 2%: {'ok' if ema < 0.02 else 'MISSED'})")
    print(f"peak RSS: {rss:.2f} GB (target < 6 GB: {'ok' if rss < 6 else 'MISSED'})")


if __name__ == "__main__":
    main()
