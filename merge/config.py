"""The one config loader: YAML or dicts validated into dataclasses; unknown keys are an error.

Used by merge recipes, RL experiment configs and the harness. Supports nested dataclasses,
Optional, list/tuple, dict, Literal, and the scalar types. Where a float is due, ints and strings
that spell a number are accepted (PyYAML reads YAML 1.1, where `1e-3` is a string, not a float),
and non-finite values (nan, inf) are refused. Messages read "FILE: key.path: what is wrong".
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from .errors import WarpError


class ConfigError(WarpError, ValueError):
    """A config file or mapping does not fit its schema; the message names the key at fault."""


T = TypeVar("T")

# A decimal number as a YAML 1.2 / JSON user writes it: 1e-3, -2.5E+4, .5, 3.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _at(where: str) -> str:
    """The message prefix for a value at key path `where` ('' at the top of a file)."""
    return f"{where}: " if where and not where.endswith(": ") else where


def _child(where: str, name: str) -> str:
    """The key path of field `name` under `where` ("FILE: " starts a file's key path)."""
    return f"{where}{name}" if not where or where.endswith(": ") else f"{where}.{name}"


def _float(value: Any, where: str) -> float:
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        number = float(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        try:
            spelled = isinstance(value, str) and not math.isfinite(float(value))   # 'nan', 'inf'
        except ValueError:
            spelled = False
        raise ConfigError(f"{_at(where)}expected a {'finite ' if spelled else ''}number, got {value!r}")
    if not math.isfinite(number):
        raise ConfigError(f"{_at(where)}expected a finite number, got {value!r}")
    return number


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{_at(where)}{value!r} fits none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{_at(where)}{value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_at(where)}expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_at(where)}expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(vt, v, _child(where, str(k))) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_at(where)}expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_at(where)}expected an integer, got {value!r}")
        return value
    if tp is float:
        return _float(value, where)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{_at(where)}expected a string, got {value!r}")
        return value
    return value


def from_mapping(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass `cls` from a mapping; raise ConfigError naming any unknown or bad key.

    `where` is the key path that prefixes messages ("config.inner.lr: ..."); a file name followed
    by ": " starts a file's key path instead ("c.yaml: inner.lr: ...").
    """
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{_at(where)}expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"{_at(where)}unknown key {unknown[0]!r} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        key = _child(where, name)
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key} is required")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        check()
    return obj


def to_mapping(obj: Any) -> Any:
    """Plain dict/list form of a (nested) dataclass, for manifests and recorded recipes."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def load_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None


def apply_overrides(data: Any, overrides: Sequence[str]) -> dict:
    """A copy of the mapping `data` with each `key.path=value` set (the value read as YAML: `0.5`,
    `sft`, `null`, `[1, 2]`); missing mappings on the path are created. The result is validated
    like the file by `from_mapping` (unknown keys, types, ranges)."""
    import copy

    out = copy.deepcopy(data) if isinstance(data, dict) else {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"override {item!r}: expected key.path=value (e.g. reinforce.anchor=sft)")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: invalid YAML value ({str(e).splitlines()[0]})") from None
        *parents, leaf = key.strip().split(".")
        d = out
        for p in parents:
            if not isinstance(d.get(p, {}), dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            d = d.setdefault(p, {})
        d[leaf] = value
    return out


def load_config(cls: type[T], path: str | os.PathLike, overrides: Sequence[str] = ()) -> T:
    """YAML file (plus `key.path=value` overrides) -> validated dataclass `cls`. Schema errors read
    "FILE: key.path: what is wrong"; the dataclass's own validate() errors are raised as it words them."""
    data = load_yaml(path)
    where = f"{path}: " if not overrides else f"{path} with {' '.join(overrides)}: "
    return from_mapping(cls, apply_overrides(data, overrides) if overrides else data, where=where)
