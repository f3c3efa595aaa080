"""Merge arithmetic runs on one intra-op thread.

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
