"""In-memory merge functions against independent float64 numpy re-derivations."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import merge
from merge import MergeError


# ---- independent references (numpy float64, flattened vectors) -------------------------------
def np_pair(a, b, lam):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-12 or nb < 1e-12:
        return (1 - lam) * a + lam * b
    om = math.acos(float(np.clip(a @ b / (na * nb), -1, 1)))
    if math.sin(om) < 1e-6:
        return (1 - lam) * a + lam * b
    return math.sin((1 - lam) * om) / math.sin(om) * a + math.sin(lam * om) / math.sin(om) * b


def np_slerp(init, models, lam=None):
    """Paper Eq. 4 on the flattened tensor, M > 2 by the recursion with λ = 1/m."""
    x0 = init.double().numpy().ravel()
    d = [m.double().numpy().ravel() - x0 for m in models]
    if len(d) == 2:
        acc = np_pair(d[0], d[1], 0.5 if lam is None else lam)
    else:
        acc = np_pair(d[0], d[1], 0.5)
        for m in range(3, len(d) + 1):
            acc = np_pair(acc, d[m - 1], 1.0 / m)
    return (x0 + acc).reshape(init.shape)


def rand_sd(seed, shapes=((5, 7), (11,), (3, 2, 4)), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    sd = {f"w{i}": torch.randn(s, generator=g).to(dtype) for i, s in enumerate(shapes)}
    sd["step"] = torch.tensor([seed, 7])   # a non-float tensor
    return sd


def near(sd, ref, tol=1e-5):
    for k, v in ref.items():
        np.testing.assert_allclose(sd[k].double().numpy(), np.asarray(v, dtype=np.float64), rtol=tol, atol=tol, err_msg=k)


# ---- task vector, lerp, liti --------------------------------------------------------------------
def test_task_vector_lerp_liti_against_numpy():
    a, b = rand_sd(1), rand_sd(2)
    tv = merge.task_vector(b, a)
    near({k: tv[k] for k in ("w0", "w1")}, {k: b[k].double().numpy() - a[k].double().numpy() for k in ("w0", "w1")})
    assert torch.equal(tv["step"], a["step"])
    for t in (0.0, 0.3, 1.0):
        out = merge.lerp(a, b, t)
        near({k: out[k] for k in ("w0", "w2")}, {k: (1 - t) * a[k].double().numpy() + t * b[k].double().numpy() for k in ("w0", "w2")})
        out = merge.liti(a, b, t)
        near({k: out[k] for k in ("w0", "w2")}, {k: (1 - t) * a[k].double().numpy() + t * b[k].double().numpy() for k in ("w0", "w2")})
        assert torch.equal(out["step"], a["step"])


def test_liti_endpoints_exact():
    a, b = rand_sd(1), rand_sd(2)
    assert all(torch.equal(merge.liti(a, b, 0.0)[k], a[k]) for k in a)
    assert all(torch.equal(merge.liti(a, b, 1.0)[k], b[k]) for k in ("w0", "w1", "w2"))


# ---- SLERP ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("lam", [None, 0.0, 0.25, 0.5, 0.9, 1.0])
def test_slerp_two_models_against_numpy(lam):
    init, m1, m2 = rand_sd(0), rand_sd(1), rand_sd(2)
    out = merge.slerp(init, [m1, m2], lam)
    near({k: out[k] for k in ("w0", "w1", "w2")}, {k: np_slerp(init[k], [m1[k], m2[k]], lam) for k in ("w0", "w1", "w2")})
    assert torch.equal(out["step"], init["step"])


def test_slerp_endpoints_give_the_models():
    init, m1, m2 = rand_sd(0), rand_sd(1), rand_sd(2)
    lo, hi = merge.slerp(init, [m1, m2], 0.0), merge.slerp(init, [m1, m2], 1.0)
    for k in ("w0", "w1", "w2"):
        assert torch.equal(lo[k], m1[k]) and torch.equal(hi[k], m2[k])


def test_slerp_one_angle_per_tensor_not_global():
    """Scaling one tensor's task vectors changes only that tensor's angle, not the others' merge."""
    init, m1, m2 = rand_sd(0), rand_sd(1), rand_sd(2)
    out = merge.slerp(init, [m1, m2])
    m2b = dict(m2, w1=init["w1"] + 100 * (m2["w1"] - init["w1"]))
    out_b = merge.slerp(init, [m1, m2b])
    assert torch.equal(out["w0"], out_b["w0"]) and torch.equal(out["w2"], out_b["w2"])
    # …whereas a single global angle over the flattened model would change w0 too
    flat = lambda sd: torch.cat([sd[k].flatten() for k in ("w0", "w1", "w2")])  # noqa: E731
    g = np_slerp(flat(init), [flat(m1), flat(m2b)])
    assert not np.allclose(g[:35], out_b["w0"].double().numpy().ravel(), atol=1e-4)


@pytest.mark.parametrize("M", [3, 4])
def test_slerp_recursion_matches_manual_recursion(M):
    init = rand_sd(0)
    models = [rand_sd(i + 1) for i in range(M)]
    out = merge.slerp(init, models)
    manual = merge.slerp(init, models[:2], 0.5)       # slerp_2
    for m in range(3, M + 1):                          # slerp_m = SLERP(θ_init, [slerp_{m−1}, θ_m], λ=1/m)
        manual = merge.slerp(init, [manual, models[m - 1]], 1.0 / m)
    for k in ("w0", "w1", "w2"):
        torch.testing.assert_close(out[k], manual[k], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out[k].double().numpy(), np_slerp(init[k], [x[k] for x in models]), rtol=1e-5, atol=1e-5)


def test_lemma1_slerp_keeps_equal_norms_lerp_shrinks():
    g = torch.Generator().manual_seed(3)
    init = {"w": torch.randn(64, 32, generator=g)}
    d1, d2 = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    d2 = d2 * d1.norm() / d2.norm()                   # ‖δ1‖ = ‖δ2‖
    m1, m2 = {"w": init["w"] + d1}, {"w": init["w"] + d2}
    for lam in (0.2, 0.5, 0.7):
        s = merge.task_vector(merge.slerp(init, [m1, m2], lam), init)["w"].double().norm()
        l = merge.task_vector(merge.lerp(m1, m2, lam), init)["w"].double().norm()
        assert abs(s / d1.double().norm() - 1) < 1e-5
        assert l < 0.95 * d1.double().norm()            # random 2048-dim vectors are nearly orthogonal


@pytest.mark.parametrize("case", ["zero", "parallel", "antiparallel"])
def test_degenerate_angles_fall_back_to_lerp_and_warn(case):
    init = rand_sd(0)
    d = {k: v - init[k] if v.is_floating_point() else v for k, v in rand_sd(1).items()}
    factor = {"zero": 0.0, "parallel": 2.0, "antiparallel": -0.5}[case]
    m1 = {k: init[k] + d[k] if init[k].is_floating_point() else init[k] for k in init}
    m2 = {k: init[k] + factor * d[k] if init[k].is_floating_point() else init[k] for k in init}
    with pytest.warns(RuntimeWarning, match="fell back to LERP"):
        out = merge.slerp(init, [m1, m2], 0.3)
    ref = merge.lerp(m1, m2, 0.3)
    for k in ("w0", "w1", "w2"):
        assert torch.isfinite(out[k]).all()
        torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-5)


def test_nearly_antiparallel_float32_stays_bounded():
    """cos Ω ≈ −0.99999 in float32: the raw formula's coefficients would be ~100×; the fallback keeps LERP."""
    g = torch.Generator().manual_seed(0)
    init = {"w": torch.randn(300, generator=g)}
    d = torch.randn(300, generator=g)
    m1, m2 = {"w": init["w"] + d}, {"w": init["w"] - 0.5 * d + 1e-3 * torch.randn(300, generator=g)}
    with pytest.warns(RuntimeWarning, match="fell back to LERP"):
        out = merge.slerp(init, [m1, m2])
    torch.testing.assert_close(out["w"], merge.lerp(m1, m2, 0.5)["w"])


def test_no_warning_for_a_regular_merge():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merge.slerp(rand_sd(0), [rand_sd(1), rand_sd(2)])


@pytest.mark.parametrize("fn", ["slerp", "liti", "task_arithmetic", "ties", "dare", "average"])
def test_dtype_preserved_bf16_and_non_float_from_init(fn):
    init, m1, m2 = (rand_sd(i, dtype=torch.bfloat16) for i in range(3))
    call = {"slerp": lambda: merge.slerp(init, [m1, m2]), "liti": lambda: merge.liti(init, m1, 0.3),
            "task_arithmetic": lambda: merge.task_arithmetic(init, [m1, m2]), "ties": lambda: merge.ties(init, [m1, m2]),
            "dare": lambda: merge.dare(init, [m1, m2]), "average": lambda: merge.average([init, m1, m2])}[fn]
    out = call()
    assert all(out[k].dtype == torch.bfloat16 for k in ("w0", "w1", "w2"))
    assert torch.equal(out["step"], init["step"]) and out["step"].dtype == init["step"].dtype


def test_bf16_slerp_close_to_float64_reference():
    init, m1, m2 = (rand_sd(i, dtype=torch.bfloat16) for i in range(3))
    out = merge.slerp(init, [m1, m2], 0.4)
    for k in ("w0", "w1", "w2"):
        ref = torch.from_numpy(np_slerp(init[k], [m1[k], m2[k]], 0.4))
        assert torch.equal(out[k], ref.to(torch.bfloat16))   # computed wide, rounded once


# ---- task arithmetic, TIES, DARE, average ---------------------------------------------------------
def test_task_arithmetic_against_numpy():
    init, m1, m2 = rand_sd(0), rand_sd(1), rand_sd(2)
    out = merge.task_arithmetic(init, [m1, m2], scale=0.7, weights=[1.0, -0.5])
    near({k: out[k] for k in ("w0", "w1")}, {k: init[k].numpy() + 0.7 * ((m1[k] - init[k]).numpy() - 0.5 * (m2[k] - init[k]).numpy())
                                             for k in ("w0", "w1")})


def np_ties(init, models, density, scale):
    x0 = init.double().numpy().ravel()
    ds = []
    for m in models:
        d = m.double().numpy().ravel() - x0
        k = math.ceil(density * d.size)
        keep = np.argsort(-np.abs(d))[:k]
        t = np.zeros_like(d)
        t[keep] = d[keep]
        ds.append(t)
    ds = np.stack(ds)
    sign = np.sign(ds.sum(0))
    out = np.zeros_like(x0)
    for j in range(x0.size):
        vals = [v for v in ds[:, j] if v != 0 and np.sign(v) == sign[j]]
        out[j] = np.mean(vals) if vals else 0.0
    return (x0 + scale * out).reshape(init.shape)


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_against_numpy(density):
    init = rand_sd(0)
    models = [rand_sd(i) for i in (1, 2, 3)]
    out = merge.ties(init, models, density=density, scale=0.9)
    near({k: out[k] for k in ("w0", "w1", "w2")}, {k: np_ties(init[k], [m[k] for m in models], density, 0.9) for k in ("w0", "w1", "w2")})


def test_dare_drops_and_rescales_seeded():
    init = {"w": torch.zeros(200, 100)}
    model = {"w": torch.randn(200, 100, generator=torch.Generator().manual_seed(0))}
    out = merge.dare(init, [model], density=0.3, seed=5)["w"]
    kept = out != 0
    torch.testing.assert_close(out[kept], model["w"][kept] / 0.3)   # survivors rescaled by 1/density
    frac = kept.float().mean().item()
    assert abs(frac - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 20000)        # binomial, 4 s.d.
    assert torch.equal(out, merge.dare(init, [model], density=0.3, seed=5)["w"])
    assert not torch.equal(out, merge.dare(init, [model], density=0.3, seed=6)["w"])
    assert torch.equal(merge.dare(init, [model], density=1.0)["w"], model["w"])


def test_dare_expectation_is_task_arithmetic():
    init, m1, m2 = rand_sd(0, shapes=((20, 10),)), rand_sd(1, shapes=((20, 10),)), rand_sd(2, shapes=((20, 10),))
    runs = torch.stack([merge.dare(init, [m1, m2], density=0.5, seed=s)["w0"] for s in range(400)])
    ta = merge.task_arithmetic(init, [m1, m2])["w0"]
    se = runs.std(0) / math.sqrt(400)
    assert ((runs.mean(0) - ta).abs() < 5 * se + 1e-6).all()


def test_average_uniform_and_weighted():
    sds = [rand_sd(i) for i in range(3)]
    out = merge.average(sds)
    near({"w0": out["w0"]}, {"w0": np.mean([s["w0"].numpy() for s in sds], axis=0)})
    out = merge.average(sds, weights=[1, 2, 1])
    near({"w1": out["w1"]}, {"w1": (sds[0]["w1"].numpy() + 2 * sds[1]["w1"].numpy() + sds[2]["w1"].numpy()) / 4})
    assert torch.equal(out["step"], sds[0]["step"])


def test_registry_has_every_method_and_unknown_is_an_error():
    assert {"slerp", "liti", "lerp", "task_arithmetic", "ties", "dare", "average"} <= set(merge.REGISTRY)
    with pytest.raises(MergeError, match="unknown merge method 'nope'"):
        merge.get_method("nope")


# ---- bad inputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda i, a, b: merge.slerp(i, [a]), "at least 2"),
    (lambda i, a, b: merge.slerp(i, [a, b], lam=1.5), "lam must be in"),
    (lambda i, a, b: merge.slerp(i, [a, b], lam=-0.1), "lam must be in"),
    (lambda i, a, b: merge.slerp(i, [a, b, a], lam=0.5), "lam must be None"),
    (lambda i, a, b: merge.liti(i, a, 1.2), "eta must be in"),
    (lambda i, a, b: merge.lerp(a, b, "x"), "t must be a number"),
    (lambda i, a, b: merge.ties(i, [a, b], density=0.0), "density"),
    (lambda i, a, b: merge.dare(i, [a, b], density=2.0), "density"),
    (lambda i, a, b: merge.average([a, b], weights=[1.0]), "weights has 1"),
    (lambda i, a, b: merge.average([a, b], weights=[-1.0, 0.5]), "non-negative"),
    (lambda i, a, b: merge.ema_update(dict(i), a, 1.01), "mu must be in"),
])
def test_bad_parameters(call, match):
    with pytest.raises(MergeError, match=match):
        call(rand_sd(0), rand_sd(1), rand_sd(2))


def test_mismatched_keys_and_shapes_name_the_key():
    init, m1 = rand_sd(0), rand_sd(1)
    with pytest.raises(MergeError, match=r"key 'w1': shape \(11,\) in init vs \(12,\) in models\[1\]"):
        merge.slerp(init, [m1, dict(m1, w1=torch.zeros(12))])
    with pytest.raises(MergeError, match="key 'w2' is in init but missing from models\\[0\\]"):
        merge.slerp(init, [{k: v for k, v in m1.items() if k != "w2"}, m1])
    with pytest.raises(MergeError, match="key 'extra' is in models\\[1\\]"):
        merge.slerp(init, [m1, dict(m1, extra=torch.zeros(1))])
    assert issubclass(MergeError, ValueError)


# ---- EMA --------------------------------------------------------------------------------------------
def test_ema_update_state_dict_in_place_no_allocation():
    ema, model = rand_sd(0), rand_sd(1)
    before = {k: v.clone() for k, v in ema.items()}
    ptrs = {k: v.data_ptr() for k, v in ema.items()}
    merge.ema_update(ema, model, 0.01)
    for k in ("w0", "w1", "w2"):
        np.testing.assert_allclose(ema[k].numpy(), 0.99 * before[k].numpy() + 0.01 * model[k].numpy(), rtol=1e-6, atol=1e-7)
        assert ema[k].data_ptr() == ptrs[k]
    assert torch.equal(ema["step"], before["step"])


def test_ema_update_modules_endpoints():
    from tests.tiny import tiny_causal_lm

    ema, _ = tiny_causal_lm(seed=0)
    model, _ = tiny_causal_lm(seed=1)
    e0 = {k: v.clone() for k, v in ema.state_dict().items()}
    merge.ema_update(ema, model, 0.0)
    assert all(torch.equal(ema.state_dict()[k], e0[k]) for k in e0)
    merge.ema_update(ema, model, 0.25)
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(v, 0.75 * e0[k] + 0.25 * model.state_dict()[k])
    merge.ema_update(ema, model, 1.0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ema.state_dict().items())
    assert all(not p.requires_grad or p.grad is None for p in ema.parameters())


def test_ema_update_tied_weights_once_and_dict_vs_module():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    ema, model = LlamaForCausalLM(cfg), LlamaForCausalLM(cfg)
    assert ema.lm_head.weight.data_ptr() == ema.model.embed_tokens.weight.data_ptr()
    e0 = ema.model.embed_tokens.weight.detach().clone()
    merge.ema_update(ema, model, 0.5)
    torch.testing.assert_close(ema.model.embed_tokens.weight.detach(), 0.5 * e0 + 0.5 * model.model.embed_tokens.weight.detach())
    # an EMA kept as a cloned state dict of the module works against the module itself
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    merge.ema_update(sd, ema, 1.0)
    assert all(torch.equal(sd[k], v) for k, v in ema.state_dict().items())


# ---- properties (hypothesis) ----------------------------------------------------------------------
vec = st.integers(min_value=2, max_value=40)


@settings(max_examples=60, deadline=None)
@given(n=vec, seed=st.integers(0, 10_000), lam=st.floats(0, 1))
def test_property_lemma1_equal_norms_any_lambda(n, seed, lam):
    g = torch.Generator().manual_seed(seed)
    init = {"w": torch.randn(n, generator=g, dtype=torch.float64)}
    d1, d2 = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    d2 = d2 * d1.norm() / d2.norm()
    cos = (d1 @ d2 / d1.norm() ** 2).item()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = merge.slerp(init, [{"w": init["w"] + d1}, {"w": init["w"] + d2}], lam)
    norm = (out["w"] - init["w"]).norm().item()
    if abs(cos) < 0.999:   # outside the documented LERP fallback (|cos Ω| > 0.9995)
        assert abs(norm / d1.norm().item() - 1) < 1e-9


@settings(max_examples=60, deadline=None)
@given(n=vec, seed=st.integers(0, 10_000), lam=st.floats(0, 1))
def test_property_swap_models_is_one_minus_lambda(n, seed, lam):
    g = torch.Generator().manual_seed(seed)
    init, a, b = ({"w": torch.randn(n, generator=g, dtype=torch.float64)} for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, y = merge.slerp(init, [a, b], lam), merge.slerp(init, [b, a], 1 - lam)
    torch.testing.assert_close(x["w"], y["w"], rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(n1sq=st.floats(1e-6, 1e6), n2sq=st.floats(1e-6, 1e6), cos=st.floats(-0.999, 0.999), lam=st.floats(0, 1))
def test_property_slerp_coefficients_dominate_lerp(n1sq, n2sq, cos, lam):
    """sin(xΩ)/sinΩ ≥ x on [0, 1] for Ω ∈ (0, π): SLERP never weights a task vector less than LERP."""
    from merge.methods.slerp import slerp_pair

    c1, c2, deg = slerp_pair(n1sq, n2sq, cos * math.sqrt(n1sq * n2sq), lam)
    assert not deg
    assert c1 >= (1 - lam) - 1e-12 and c2 >= lam - 1e-12


def test_public_contract_names():
    for name in ("task_vector", "lerp", "slerp", "liti", "ema_update", "MergeError", "task_arithmetic", "ties", "dare",
                 "average", "slerp_lora", "liti_lora", "lora_deltas", "lora_to_dense", "merge_checkpoints"):
        assert hasattr(merge, name), name
    assert issubclass(merge.MergeError, merge.WarpError) and issubclass(merge.MergeError, ValueError)
    with pytest.raises(MergeError, match="ema must be a state dict or an nn.Module"):
        merge.ema_update([1, 2], rand_sd(0), 0.1)
