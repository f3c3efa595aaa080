"""LoRA: dense ΔW = B·A·scaling, and SLERP/LITI of LoRA policies on dense deltas (not on factors)."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

import merge
from merge import MergeError
from merge.lora import apply_deltas, base_state_dict, dense_delta, liti_lora, lora_deltas, lora_to_dense, slerp_lora
from tests.tiny import tiny_causal_lm


def lora_policy(seed: int, r: int = 4, alpha: int = 8, rslora: bool = False):
    """A peft LoRA model on q_proj/v_proj of the tiny Llama (base seed 0), with random non-zero B ('trained')."""
    from peft import LoraConfig, get_peft_model

    base, _ = tiny_causal_lm(seed=0)
    pm = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj", "v_proj"], use_rslora=rslora))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return pm


@pytest.mark.parametrize("rslora", [False, True])
def test_dense_delta_matches_peft_merge_and_unload(rslora):
    pm = lora_policy(1, rslora=rslora)
    base = base_state_dict(pm)
    dense = lora_to_dense(base, pm)
    merged = pm.merge_and_unload().state_dict()   # peft's own merge: the independent computation
    assert set(dense) == set(merged)
    for k in merged:
        torch.testing.assert_close(dense[k], merged[k], rtol=1e-5, atol=1e-6)


def test_deltas_from_saved_adapter_dir_equal_model(tmp_path):
    pm = lora_policy(2, r=2, alpha=16)
    pm.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    a, b = lora_deltas(pm), lora_deltas(tmp_path / "adapter")
    assert set(a) == set(b) == {f"model.layers.{i}.self_attn.{p}.weight" for i in (0, 1) for p in ("q_proj", "v_proj")}
    for k in a:
        torch.testing.assert_close(a[k], b[k])
        mod = pm.get_submodule("base_model.model." + k[: -len(".weight")])
        ref = mod.lora_B["default"].weight @ mod.lora_A["default"].weight * (16 / 2)
        torch.testing.assert_close(a[k], ref.detach())


def test_dense_delta_shapes_and_fan_in_fan_out():
    A, B = torch.randn(3, 5), torch.randn(7, 3)
    assert dense_delta(A, B, 2.0).shape == (7, 5)
    torch.testing.assert_close(dense_delta(A, B, 2.0, fan_in_fan_out=True), (B @ A * 2).T)


def test_slerp_lora_is_dense_delta_slerp_and_factorwise_is_different():
    p1, p2 = lora_policy(1), lora_policy(2)
    base = base_state_dict(p1)
    out = slerp_lora(base, [p1, p2], lam=0.5)
    # independent: slerp of the two dense policies built by peft's merge
    dense1, dense2 = (lora_policy(s).merge_and_unload().state_dict() for s in (1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # unadapted tensors have zero task vectors here
        ref = merge.slerp(base, [dense1, dense2], 0.5)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-6)
    # factor-wise: SLERP the A's and the B's separately (as task vectors from A=B=0), then form B·A·scale
    key = "model.layers.0.self_attn.q_proj.weight"
    mods = [p.get_submodule("base_model.model.model.layers.0.self_attn.q_proj") for p in (p1, p2)]
    zero = lambda t: {"w": torch.zeros_like(t)}  # noqa: E731
    A = merge.slerp(zero(mods[0].lora_A["default"].weight), [{"w": m.lora_A["default"].weight.detach()} for m in mods])["w"]
    B = merge.slerp(zero(mods[0].lora_B["default"].weight), [{"w": m.lora_B["default"].weight.detach()} for m in mods])["w"]
    factorwise = base[key] + B @ A * mods[0].scaling["default"]
    diff = (factorwise - out[key]).norm() / (out[key] - base[key]).norm()
    assert diff > 0.3, f"factor-wise merge should differ from the dense-delta merge, relative diff {diff:.3f}"


def test_slerp_lora_no_spurious_warnings_for_unadapted_weights():
    p1, p2 = lora_policy(1), lora_policy(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = slerp_lora(base_state_dict(p1), [p1, p2])
    base = base_state_dict(p1)
    assert torch.equal(out["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_liti_lora_against_dense():
    p1 = lora_policy(3)
    base = base_state_dict(p1)
    dense = lora_to_dense(base, p1)
    out = liti_lora(base, p1, 0.3)
    for k in base:
        torch.testing.assert_close(out[k], 0.7 * base[k] + 0.3 * dense[k])
    out2 = liti_lora(base, dense, 0.3)
    assert all(torch.equal(out[k], out2[k]) for k in base)


def test_lora_bad_inputs(tmp_path):
    with pytest.raises(MergeError, match="not a LoRA adapter directory"):
        lora_deltas(tmp_path)
    pm = lora_policy(1)
    pm.save_pretrained(tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MergeError, match="DoRA"):
        lora_deltas(tmp_path / "ad")
    base = base_state_dict(pm)
    with pytest.raises(MergeError, match="has no base weight"):
        apply_deltas(base, {"nope.weight": torch.zeros(1)})
    with pytest.raises(MergeError, match=r"shape \(32, 32\) in base vs \(2, 2\)"):
        apply_deltas(base, {"model.layers.0.self_attn.q_proj.weight": torch.zeros(2, 2)})
    with pytest.raises(MergeError, match="at least 2"):
        slerp_lora(base, [pm])
