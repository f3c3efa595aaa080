"""`warp run CONFIG --out RUN_DIR` (WARP or plain REINFORCE) and `warp train-rm CONFIG --seed S --out DIR [--warm M]`."""
from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="run WARP (Algorithm 1) or a plain REINFORCE baseline; resumable")
    p.add_argument("config", help="RL config YAML (see configs/quick.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, validated like the file and recorded in the manifest "
                        "(e.g. reinforce.anchor=sft warp.runs=5)")
    p.add_argument("--out", required=True, help="run directory (re-run the same command to resume)")
    p.add_argument("--engine", default=None, choices=["auto", "vllm", "hf"],
                   help="sampling engine for the rollouts (overrides the config's engine.name)")
    p.add_argument("--executor", default=None, choices=["local", "ray"],
                   help="where the M runs of an iteration run (overrides the config's executor.name)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster address for --executor ray ('auto', host:port; default: $RAY_ADDRESS, else a local instance)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)

    p = subparsers.add_parser("train-rm", help="train a reward model (or WARM: M weight-averaged ones)")
    p.add_argument("config", nargs="?", default=None, help="reward-model config YAML (default: the builtin tweets/MiniLM one)")
    p.add_argument("--seed", type=int, default=0, help="seed (WARM: members use seed, seed+1, ...)")
    p.add_argument("--out", required=True, help="output directory (a Hugging Face classifier dir)")
    p.add_argument("--warm", type=int, default=None, metavar="M", help="train M members and weight-average them (WARM)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_train_rm)


def _run(args) -> int:
    from merge.config import load_config

    from .config import RLConfig
    from .warp import warp

    cfg = load_config(RLConfig, args.config, args.overrides)
    if args.engine is not None:
        cfg.engine.name = args.engine
    if args.executor is not None:
        cfg.executor.name = args.executor
    if args.ray_address is not None:
        cfg.executor.ray_address = args.ray_address
    out = warp(cfg, args.out, progress=not args.no_progress, overrides=args.overrides)
    print(f"run directory: {out}")
    return 0


def _train_rm(args) -> int:
    from merge.config import ConfigError

    from .rm import load_train_config, train_rm, warm

    cfg = load_train_config(args.config)
    if args.warm is not None:
        if args.warm < 2:
            raise ConfigError(f"--warm needs M ≥ 2 members, got {args.warm}")
        report = warm(cfg, [args.seed + i for i in range(args.warm)], args.out, args.overwrite, not args.no_progress)
        for noise, row in report["noise"].items():
            print(f"label noise {float(noise):.0%}: WARM {row['warm']:.3f}  ensemble {row['ensemble']:.3f}  "
                  f"members {' '.join(f'{a:.3f}' for a in row['members'])}")
    else:
        report = train_rm(cfg, args.seed, args.out, args.overwrite, not args.no_progress)
    print(json.dumps({"held_out_accuracy": report["held_out_accuracy"], "out": str(args.out)}))
    return 0
