"""Torch's intra-op thread count: set once per process (`set_threads`), and one thread for merges.

Why: torch splits a reduction (the `torch.dot` of SLERP's Gram matrix) across its intra-op threads,
and the order of the partial sums, hence the last bits, depends on `torch.get_num_threads()`; a
resumed process with another thread count would then merge to other bits. On one thread every
merge has one fixed order, and the in-memory and streamed merges agree bit for bit. It costs
nothing measurable: the chunked arithmetic is cache-sized, and extra intra-op threads only add
barrier spinning (up to 10× slower on a busy 2-core machine, measured).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def set_threads(n: int | None) -> None:
    """Set the process's intra-op thread count (None or 0: keep torch's default). The one place it is
    set: every entry point (the `warp` commands, `rl.warp.warp`, reward-model training, the body of a
    Ray task, the benches) calls it once, before any work."""
    if n is None or n == 0:
        return
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"threads must be an integer ≥ 1, got {n!r}")
    torch.set_num_threads(n)


@contextlib.contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Run the block with `torch.set_num_threads(1)`; the previous count is restored after it.

    The setting is process-wide: torch ops on other Python threads meanwhile get one thread too.
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
