"""NaN/Inf in any floating-point input is refused with a MergeError naming the input and tensor key,
before anything is written: in memory, in `ema_update` (the EMA is left unchanged), and streamed
(the output never appears). Non-finite parameters (scale, weights) are refused too."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import merge
from merge import MergeError
from merge.checkpoint import merge_checkpoints
from merge.checks import first_nonfinite

KEY = "model.layers.0.self_attn.q_proj.weight"


def sds(dtype=torch.float32, n_models=3):
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (40, 8), KEY: (8, 8), "model.norm.weight": (8,)}
    make = lambda: {**{k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()},  # noqa: E731
                    "position_ids": torch.arange(4)}
    return make(), [make() for _ in range(n_models)]


def poison(sd, value, key=KEY, index=(3, 5)):
    sd = dict(sd)
    sd[key] = sd[key].clone()
    sd[key][index] = value
    return sd


CALLS = {
    "slerp": lambda i, ms: merge.slerp(i, ms[:2]),
    "slerp-3": lambda i, ms: merge.slerp(i, ms),
    "liti": lambda i, ms: merge.liti(i, ms[0], 0.3),
    "lerp": lambda i, ms: merge.lerp(ms[0], ms[1], 0.3),
    "task_arithmetic": lambda i, ms: merge.task_arithmetic(i, ms),
    "ties": lambda i, ms: merge.ties(i, ms),
    "dare": lambda i, ms: merge.dare(i, ms),
    "average": lambda i, ms: merge.average(ms),
}
# which input is poisoned, and the name the error gives it
WHERE = {"slerp": ("models", 1), "slerp-3": ("models", 2), "liti": ("init", None), "lerp": ("models", 1),
         "task_arithmetic": ("models", 1), "ties": ("init", None), "dare": ("models", 0), "average": ("models", 1)}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("call", list(CALLS))
def test_in_memory_merge_refuses_nonfinite_naming_input_and_key(call, dtype, value):
    init, models = sds(dtype)
    which, i = WHERE[call]
    if which == "init":
        init, name = poison(init, value), "init"
    else:
        models[i], name = poison(models[i], value), f"models[{i}]"
    with pytest.raises(MergeError) as e:
        CALLS[call](init, models)
    assert str(e.value) == f"{name} tensor {KEY!r} has NaN/Inf values"


def test_large_finite_values_are_not_refused():
    """Finite tensors whose sum overflows (fp32 near its max) are fine: the sum is only a fast screen."""
    init, models = sds()
    big = torch.full((8, 8), 3e38)
    assert math.isinf(big.sum().item())
    init, models[0], models[1] = ({**sd, KEY: big} for sd in (init, models[0], models[1]))
    assert first_nonfinite([big]) is None and first_nonfinite([torch.full((300, 300), 6e4, dtype=torch.float16)]) is None
    merge.lerp(models[0], models[1], 0.5)
    merge.liti(init, models[0], 0.5)
    merge.ema_update({KEY: big.clone()}, {KEY: big}, 0.5)


def test_first_nonfinite_finds_the_first_across_dtypes():
    ts = [torch.zeros(3), torch.zeros(2, dtype=torch.float64), torch.tensor([1.0, math.inf]),
          torch.tensor([math.nan], dtype=torch.bfloat16), torch.arange(3), torch.zeros(0)]
    assert first_nonfinite(ts) == 2
    assert first_nonfinite(ts[3:]) == 0 and first_nonfinite(ts[4:]) is None
    assert first_nonfinite([torch.tensor([math.nan]).to(torch.float8_e4m3fn)]) == 0


@pytest.mark.parametrize("which", ["ema", "model"])
@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_ema_update_refuses_nonfinite_and_leaves_ema_unchanged(which, value):
    init, models = sds()
    ema = {k: v.clone() for k, v in init.items()}
    model = dict(models[0])
    if which == "ema":
        ema[KEY][3, 5] = value
    else:
        model = poison(model, value)
    before = {k: v.clone() for k, v in ema.items()}
    with pytest.raises(MergeError, match=rf"^{which} tensor '{KEY}' has NaN/Inf values$"):
        merge.ema_update(ema, model, 0.01)
    for k in ema:
        torch.testing.assert_close(ema[k], before[k], rtol=0, atol=0, equal_nan=True)


def test_ema_update_module_with_grad_refuses_nonfinite():
    ema, model = nn.Linear(4, 3), nn.Linear(4, 3)
    with torch.no_grad():
        model.weight[1, 2] = math.nan
    before = ema.weight.detach().clone()
    with pytest.raises(MergeError, match="^model tensor 'weight' has NaN/Inf values$"):
        merge.ema_update(ema, model, 0.5)
    assert torch.equal(ema.weight, before)
    with pytest.raises(MergeError, match="^ema tensor 'weight' has NaN/Inf values$"):
        merge.ema_update(model, ema, 0.5)   # the other way round names the other input
    assert model.weight.grad is None and model.weight.isnan().sum() == 1


def test_streamed_merge_refuses_nonfinite_and_writes_nothing(tmp_path):
    init, models = sds()
    models[1] = poison(models[1], math.nan)
    for name, sd in [("init", init), ("a", models[0]), ("b", models[1])]:
        (tmp_path / name).mkdir()
        save_file(sd, str(tmp_path / name / "model.safetensors"))
    with pytest.raises(MergeError) as e:
        merge_checkpoints("slerp", [tmp_path / "a", tmp_path / "b"], tmp_path / "out", init=tmp_path / "init",
                          progress=False, max_shard_bytes=300)
    assert str(e.value) == f"models[1] {tmp_path / 'b'} tensor {KEY!r} has NaN/Inf values"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "init"]   # no out, no temporary


@pytest.mark.parametrize("call, match", [
    (lambda i, ms: merge.task_arithmetic(i, ms, scale=math.inf), r"^task_arithmetic params.scale: expected a finite number, got inf$"),
    (lambda i, ms: merge.task_arithmetic(i, ms, weights=[1, math.nan, 1]), r"params.weights\[1\]: expected a finite number"),
    (lambda i, ms: merge.dare(i, ms, scale=math.nan), "dare params.scale: expected a finite number, got nan"),
    (lambda i, ms: merge.ties(i, ms, scale=-math.inf), "ties params.scale: expected a finite number, got -inf"),
    (lambda i, ms: merge.average(ms, weights=[1, math.inf, 1]), r"average params.weights\[1\]: expected a finite number"),
    (lambda i, ms: merge.slerp(i, ms[:2], math.nan), "slerp params.lam: expected a finite number, got nan"),
    (lambda i, ms: merge.liti(i, ms[0], math.inf), r"eta must be in \[0, 1\]"),
])
def test_nonfinite_parameters_refused(call, match):
    init, models = sds()
    with pytest.raises(MergeError, match=match):
        call(init, models)


def test_slerp_gram_overflow_refused_not_silently_lerped():
    """Finite inputs whose task-vector dot products overflow float32 give non-finite SLERP coefficients."""
    init = {KEY: torch.zeros(8, 8)}
    models = [{KEY: torch.full((8, 8), 1e20)}, {KEY: torch.full((8, 8), -1e20).tril()}]
    with pytest.raises(MergeError, match=rf"slerp of tensor '{KEY}': task vectors too large"):
        merge.slerp(init, models)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("where", ["init", "models[0]", "models[1]"])
def test_streamed_slerp_names_the_nonfinite_input(tmp_path, where, dtype, value):
    """Streamed slerp has no separate NaN/Inf pass (its Gram pass finds them); the error is the same one line."""
    init, models = sds(dtype)
    if where == "init":
        init = poison(init, value)
    else:
        i = int(where[-2])
        models[i] = poison(models[i], value)
    dirs = {"init": init, "a": models[0], "b": models[1]}
    for name, sd in dirs.items():
        (tmp_path / name).mkdir()
        save_file(sd, str(tmp_path / name / "model.safetensors"))
    with pytest.raises(MergeError) as e:
        merge_checkpoints("slerp", [tmp_path / "a", tmp_path / "b"], tmp_path / "out", init=tmp_path / "init",
                          progress=False)
    path = tmp_path / {"init": "init", "models[0]": "a", "models[1]": "b"}[where]
    assert str(e.value) == f"{where} {path} tensor {KEY!r} has NaN/Inf values"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "init"]


def test_streamed_slerp_gram_overflow_refused(tmp_path):
    """Finite inputs whose dot products overflow: the streamed merge says so too (no NaN/Inf input to name)."""
    dirs = {"init": {KEY: torch.zeros(8, 8)}, "a": {KEY: torch.full((8, 8), 1e20)},
            "b": {KEY: torch.full((8, 8), -1e20).tril()}}
    for name, sd in dirs.items():
        (tmp_path / name).mkdir()
        save_file(sd, str(tmp_path / name / "model.safetensors"))
    with pytest.raises(MergeError, match=rf"slerp of tensor '{KEY}': task vectors too large"):
        merge_checkpoints("slerp", [tmp_path / "a", tmp_path / "b"], tmp_path / "out", init=tmp_path / "init",
                          progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "init"]
