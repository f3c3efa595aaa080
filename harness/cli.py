"""The `warp` command. Each package contributes subcommands through a `register(subparsers)` hook:
`merge.cli` (warp merge), `rl.cli` (warp train-rm, warp run), `harness.commands` (warp eval,
warp report, warp leaderboard).

Errors are one line on stderr, never a traceback (`warp --debug CMD ...` shows it):
- a WarpError (bad input: a file, key or option at fault) → `warp CMD: error: <message>`, exit 2;
- an OSError (the machine refused: disk full, read-only filesystem, permission denied, a file that
  vanished) → `warp CMD: error: <what> (<path>)`, exit 1. Everything written before it stays
  consistent (atomic writes), so the same command resumes once the cause is fixed.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from merge import cli as merge_cli
from merge.errors import WarpError
from rl import cli as rl_cli

from . import commands as harness_commands

SUBCOMMAND_MODULES = (merge_cli, rl_cli, harness_commands)   # each registers its subcommands
EXIT_BAD_INPUT = 2
EXIT_OS_ERROR = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warp", description="WARP: Weight Averaged Rewarded Policies — merge, train, evaluate.",
        epilog=f"Exit status: 0 done; {EXIT_BAD_INPUT} bad input (a file, key or option at fault); {EXIT_OS_ERROR} the "
               "system refused (disk full, read-only, permission denied): fix it and re-run the same command. "
               "Errors are one line; --debug shows the traceback.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in SUBCOMMAND_MODULES:
        module.register(sub)
    return parser


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def describe_os_error(e: OSError) -> str:
    """'No space left on device (/path)': the system's reason and the path(s) it concerns."""
    what = e.strerror or one_line(str(e)) or type(e).__name__
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{what} ({' -> '.join(paths)})" if paths else what


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WarpError as e:
        if args.debug:
            raise
        print(f"warp {args.command}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        if args.debug:
            raise
        print(f"warp {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return EXIT_OS_ERROR
    except KeyboardInterrupt:
        print(f"warp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
