"""The `warp` command. Each package contributes subcommands through a `register(subparsers)` hook:
`merge.cli` (warp merge), `rl.cli` (warp train-rm, warp run), `harness.commands` (warp eval,
warp report, warp leaderboard). A WarpError becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Sequence

from merge.errors import WarpError

SUBCOMMAND_MODULES = ("merge.cli", "rl.cli", "harness.commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warp", description="WARP: Weight Averaged Rewarded Policies — merge, train, evaluate.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WarpError as e:
        print(f"warp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"warp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
