"""Merges are bitwise independent of torch's intra-op thread count, in memory and streamed.

The tensors are big enough (1–4 M elements) that torch splits a reduction across two threads, and
the task vectors are nearly anti-parallel, where SLERP's coefficients are most sensitive to the
Gram matrix: a thread-dependent reduction order there changes the merged bits.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from safetensors.torch import save_file

import merge
from merge.checkpoint import load_state_dict, merge_checkpoints

SHAPES = {"model.embed_tokens.weight": (1024, 1024), "model.layers.0.mlp.up_proj.weight": (1531, 1373),
          "lm_head.weight": (2048, 2047), "model.norm.weight": (1373,)}


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sds():
    """init and three models; δ1 and δ2 at cos ≈ −0.8 (SLERP's coefficients ~2, sensitive to G)."""
    g = torch.Generator().manual_seed(0)
    init, models = {}, [{}, {}, {}]
    for k, shape in SHAPES.items():
        x = torch.randn(shape, generator=g)
        u = torch.randn(shape, generator=g)
        init[k] = x
        for m, (a, b) in zip(models, [(1.0, 0.3), (-0.8, 0.5), (0.2, 1.0)]):
            m[k] = x + 0.5 * (a * u + b * torch.randn(shape, generator=g))
    return init, models


CASES = {
    "slerp-2": lambda i, ms: merge.slerp(i, ms[:2], 0.3),
    "slerp-3": lambda i, ms: merge.slerp(i, ms),
    "liti-of-slerp": lambda i, ms: merge.liti(i, merge.slerp(i, ms[:2]), 0.3),
    "liti": lambda i, ms: merge.liti(i, ms[0], 0.3),
    "lerp": lambda i, ms: merge.lerp(ms[0], ms[1], 0.3),
    "task_arithmetic": lambda i, ms: merge.task_arithmetic(i, ms, 0.7, [1.0, 0.5, 2.0]),
    "ties": lambda i, ms: merge.ties(i, ms, density=0.3),
    "dare": lambda i, ms: merge.dare(i, ms, density=0.5, seed=1),
    "average": lambda i, ms: merge.average(ms, [1.0, 2.0, 3.0]),
}


def assert_same_bits(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    differ = {k: (a[k] != b[k]).sum().item() for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])}
    assert not differ, f"elements that differ, per tensor: {differ}"


@pytest.mark.parametrize("case", list(CASES))
def test_in_memory_merge_same_bits_on_1_and_2_threads(sds, case):
    init, models = sds
    with threads(1):
        one = CASES[case](init, models)
    with threads(2):
        two = CASES[case](init, models)
        assert torch.get_num_threads() == 2   # the caller's setting is restored after the merge
    assert_same_bits(one, two)


def test_ema_update_same_bits_on_1_and_2_threads(sds):
    init, models = sds
    out = []
    for n in (1, 2):
        ema = {k: v.clone() for k, v in init.items()}
        with threads(n):
            for m in models:
                merge.ema_update(ema, m, 0.01)
        out.append(ema)
    assert_same_bits(*out)


@pytest.mark.parametrize("method, n, params, in_memory", [
    ("slerp", 2, {"lam": 0.3}, CASES["slerp-2"]),
    ("slerp", 3, {}, CASES["slerp-3"]),
    ("liti", 1, {"eta": 0.3}, CASES["liti"]),
], ids=["slerp-2", "slerp-3", "liti"])
def test_streamed_equals_in_memory_on_any_thread_count(sds, tmp_path, method, n, params, in_memory):
    init, models = sds
    for name, sd in [("init", init), *((f"m{i}", m) for i, m in enumerate(models))]:
        (tmp_path / name).mkdir()
        save_file(sd, str(tmp_path / name / "model.safetensors"))
    dirs = [tmp_path / f"m{i}" for i in range(n)]
    with threads(2):
        ref = in_memory(init, models)
        streamed = load_state_dict(merge_checkpoints(method, dirs, tmp_path / "out2", init=tmp_path / "init",
                                                     params=params, progress=False))
        assert torch.get_num_threads() == 2
    with threads(1):
        streamed1 = load_state_dict(merge_checkpoints(method, dirs, tmp_path / "out1", init=tmp_path / "init",
                                                      params=params, progress=False))
    assert_same_bits(streamed, ref)
    assert_same_bits(streamed1, ref)


def test_set_threads_sets_the_count_and_none_or_zero_keep_it():
    from merge.threads import set_threads

    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)
        set_threads(0)
        assert torch.get_num_threads() == 1
        set_threads(2)
        assert torch.get_num_threads() == 2
        for bad in (-1, 1.5, True, "2"):
            with pytest.raises(ValueError, match="threads must be an integer"):
                set_threads(bad)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
