"""Sizes as users write them: `parse_size('500MB')`, for `--max-shard-size` and recipes."""
from __future__ import annotations

from .errors import MergeError

_UNITS = [("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)]


def parse_size(text: str | int) -> int:
    """'500MB', '2GB', '1.5GiB' (decimal or binary units) or a byte count → bytes, a positive int."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        s = str(text).strip().upper()
        factor = 1
        for unit, mult in _UNITS:
            if s.endswith(unit):
                s, factor = s[: -len(unit)], mult
                break
        try:
            n = int(float(s) * factor)
        except (ValueError, OverflowError):   # OverflowError: 'inf'
            raise MergeError(f"bad size {text!r} (expected e.g. 500MB, 2GB)") from None
    if n <= 0:
        raise MergeError(f"size must be positive, got {text!r}")
    return n
