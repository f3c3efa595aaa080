"""`warp merge`: streamed merges of checkpoint directories, one subcommand per registered method,
or a YAML recipe (`warp merge --config recipe.yaml`).

    warp merge slerp --init DIR --models DIR DIR [DIR ...] [--lam 0.5] --out DIR
    warp merge liti --init DIR --merged DIR --eta 0.3 --out DIR
    warp merge task_arithmetic|ties|dare --init DIR --models DIR ... [method flags] --out DIR
    warp merge average --models DIR DIR ... [--weights W ...] --out DIR
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional

from .checkpoint import DEFAULT_MAX_SHARD_BYTES, merge_checkpoints
from .config import ConfigError, load_config
from .errors import MergeError
from .registry import REGISTRY, get_method
from .units import parse_size


@dataclass
class MergeRecipe:
    """A YAML merge recipe. Relative paths are relative to the recipe file.

    method: slerp | liti | task_arithmetic | ties | dare | average | lerp
    init: θ_init dir (methods that use it); models: input dirs (liti: [merged], or use `merged:`)
    params: the method's parameters (e.g. {lam: 0.5}, {eta: 0.3}, {density: 0.2})
    """
    method: str
    out: str
    models: List[str] = field(default_factory=list)
    init: Optional[str] = None
    merged: Optional[str] = None
    params: Dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    max_shard_size: str = "5GB"

    def validate(self) -> None:
        if self.method not in REGISTRY:
            raise ConfigError(f"method: unknown merge method {self.method!r} (known: {', '.join(sorted(REGISTRY))})")
        if self.merged is not None:
            if self.method != "liti":
                raise ConfigError("merged: only the liti method takes `merged` (use `models` otherwise)")
            if self.models:
                raise ConfigError("merged: give either `merged` or `models`, not both")
            self.models = [self.merged]
        m = get_method(self.method)
        if m.uses_init and not self.init:
            raise ConfigError(f"init: the {self.method} method needs `init`")
        if not m.uses_init and self.init:
            raise ConfigError(f"init: the {self.method} method takes no `init`")


class _OneLineParser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit status 2, like every other `warp` error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output model directory (created atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--max-shard-size", default=None, help="largest output shard, e.g. 2GB (default 5GB)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _param_flags(p: argparse.ArgumentParser, params_cls: type) -> None:
    hints = typing.get_type_hints(params_cls)
    for f in dataclasses.fields(params_cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = args[0] if typing.get_origin(tp) is typing.Union else tp
        flag = "--" + f.name.replace("_", "-")
        default_txt = f"(default {f.default})" if f.default is not None else ""
        if typing.get_origin(inner) in (list, List):
            p.add_argument(flag, dest=f.name, type=float, nargs="+", default=None, help=f"one per model {default_txt}")
        else:
            p.add_argument(flag, dest=f.name, type=inner, default=None, help=default_txt)


def register(subparsers) -> None:
    p = subparsers.add_parser("merge", help="merge checkpoint directories (SLERP, LITI, TIES, DARE, ...)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="a YAML merge recipe instead of a method subcommand")
    p.set_defaults(func=run, method=None)
    methods = p.add_subparsers(dest="method", metavar="METHOD", parser_class=_OneLineParser)
    for name in sorted(REGISTRY):
        m = REGISTRY[name]
        sp = methods.add_parser(name, help=m.summary, description=m.summary)
        if m.uses_init:
            sp.add_argument("--init", required=True, help="θ_init model directory")
        if name == "liti":
            sp.add_argument("--merged", required=True, help="the merged (e.g. SLERP) model directory")
        else:
            sp.add_argument("--models", required=True, nargs="+", help="input model directories")
        _param_flags(sp, m.params)
        _add_common(sp)
        sp.set_defaults(func=run)


def _shard_bytes(size: str | int, where: str) -> int:
    try:
        return parse_size(size)
    except MergeError as e:
        raise MergeError(f"{where}: {e}") from None


def run(args: argparse.Namespace) -> int:
    if args.config is not None:
        if args.method is not None:
            raise ConfigError("give either --config or a method subcommand, not both")
        recipe = load_config(MergeRecipe, args.config)
        base = Path(args.config).resolve().parent
        rel = lambda s: str((base / s).resolve()) if s is not None else None  # noqa: E731
        out = merge_checkpoints(recipe.method, [rel(x) for x in recipe.models], rel(recipe.out), init=rel(recipe.init),
                                params=recipe.params, overwrite=recipe.overwrite,
                                max_shard_bytes=_shard_bytes(recipe.max_shard_size, f"{args.config}: max_shard_size"),
                                progress=True,
                                recipe_extra={"recipe_file": str(Path(args.config).resolve())})
    elif args.method is not None:
        m = get_method(args.method)
        params = {f.name: getattr(args, f.name) for f in dataclasses.fields(m.params)}
        models = [args.merged] if args.method == "liti" else args.models
        out = merge_checkpoints(args.method, models, args.out, init=getattr(args, "init", None), params=params,
                                overwrite=args.overwrite,
                                max_shard_bytes=_shard_bytes(args.max_shard_size or DEFAULT_MAX_SHARD_BYTES, "--max-shard-size"),
                                progress=not args.no_progress)
    else:
        raise ConfigError("warp merge needs a method (slerp, liti, ...) or --config recipe.yaml")
    print(f"wrote {out}")
    return 0
