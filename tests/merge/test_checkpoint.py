"""Streamed checkpoint merges: equal to the in-memory functions, atomic, refusing bad inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import merge
from merge import MergeError
from merge.checkpoint import (RECIPE_FILE, SAFE_INDEX, Checkpoint, CheckpointError, load_state_dict, merge_checkpoints,
                              plan_shards)
from merge.units import parse_size
from tests.merge.conftest import make_ckpts

CASES = [
    ("slerp", 2, {"lam": 0.3}, lambda i, ms: merge.slerp(i, ms, 0.3)),
    ("slerp", 3, {}, lambda i, ms: merge.slerp(i, ms)),
    ("liti", 1, {"eta": 0.3}, lambda i, ms: merge.liti(i, ms[0], 0.3)),
    ("task_arithmetic", 2, {"scale": 0.5}, lambda i, ms: merge.task_arithmetic(i, ms, scale=0.5)),
    ("ties", 3, {"density": 0.3}, lambda i, ms: merge.ties(i, ms, density=0.3)),
    ("dare", 2, {"density": 0.4, "seed": 3}, lambda i, ms: merge.dare(i, ms, density=0.4, seed=3)),
    ("average", 3, {"weights": [1, 2, 3]}, lambda i, ms: merge.average(ms, weights=[1, 2, 3])),
]


@pytest.mark.parametrize("method, n, params, in_memory", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
@pytest.mark.parametrize("max_shard", [10**9, 40_000])
def test_streamed_equals_in_memory(ckpts, tmp_path, method, n, params, in_memory, max_shard):
    """Inputs have three different shard layouts; output single-file or sharded; bit-identical result."""
    models = ckpts.models[:n]
    uses_init = merge.get_method(method).uses_init
    out = merge_checkpoints(method, models, tmp_path / "out", init=ckpts.init if uses_init else None,
                            params=params, max_shard_bytes=max_shard, progress=False)
    got = load_state_dict(out)
    ref = in_memory(ckpts.init_sd, ckpts.model_sds[:n])
    assert list(got) == list(load_state_dict(ckpts.init)) or set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype
        assert torch.equal(got[k], ref[k]), k
    assert (out / SAFE_INDEX).exists() == (max_shard < 10**9)
    recipe = json.loads((out / RECIPE_FILE).read_text())
    assert recipe["method"] == method and len(recipe["models"]) == n
    assert "# Merged checkpoint" in (out / "README.md").read_text()
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / f).read_bytes() == (ckpts.init / f).read_bytes()


def test_output_loads_in_transformers_and_is_valid_safetensors(ckpts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = merge_checkpoints("slerp", ckpts.models[:2], tmp_path / "out", init=ckpts.init, max_shard_bytes=30_000,
                            progress=False)
    index = json.loads((out / SAFE_INDEX).read_text())
    for shard in set(index["weight_map"].values()):
        load_file(str(out / shard))   # the header-first writer produced a file safetensors accepts
    model = AutoModelForCausalLM.from_pretrained(out)
    sd = model.state_dict()
    ref = merge.slerp(ckpts.init_sd, ckpts.model_sds[:2])
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    AutoTokenizer.from_pretrained(out)


def test_bf16_streamed_keeps_dtype(tmp_path):
    c = make_ckpts(tmp_path, n_models=2, dtype=torch.bfloat16)
    out = merge_checkpoints("slerp", c.models, tmp_path / "out", init=c.init, progress=False)
    got, ref = load_state_dict(out), merge.slerp(c.init_sd, c.model_sds)
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], ref[k]) for k in ref)


def test_non_float_tensors_taken_from_init(tmp_path):
    init = {"w": torch.randn(4, 3), "ids": torch.arange(5)}
    ms = [{"w": torch.randn(4, 3), "ids": torch.arange(5) * 9} for _ in range(2)]
    for name, sd in [("init", init), ("a", ms[0]), ("b", ms[1])]:
        (tmp_path / name).mkdir()
        save_file(sd, str(tmp_path / name / "model.safetensors"))
    out = merge_checkpoints("slerp", [tmp_path / "a", tmp_path / "b"], tmp_path / "out", init=tmp_path / "init", progress=False)
    got = load_state_dict(out)
    assert torch.equal(got["ids"], init["ids"]) and torch.equal(got["w"], merge.slerp(init, ms)["w"])


def test_degenerate_tensors_warned_and_recorded(tmp_path):
    init = {"w": torch.randn(4, 3), "z": torch.ones(3)}
    ms = [{"w": torch.randn(4, 3), "z": torch.ones(3)} for _ in range(2)]
    for name, sd in [("init", init), ("a", ms[0]), ("b", ms[1])]:
        (tmp_path / name).mkdir()
        save_file(sd, str(tmp_path / name / "model.safetensors"))
    with pytest.warns(RuntimeWarning, match="1 tensor.*z"):
        out = merge_checkpoints("slerp", [tmp_path / "a", tmp_path / "b"], tmp_path / "out", init=tmp_path / "init",
                                progress=False)
    assert json.loads((out / RECIPE_FILE).read_text())["lerp_fallback_tensors"] == ["z"]


# ---- bad inputs: a clear error, nothing written -------------------------------------------------------
def _no_output(tmp_path):
    return not any(p.name.startswith((".out", "out")) for p in tmp_path.iterdir())


def _write_variant(ckpts, tmp_path, name, change):
    sd = change(dict(ckpts.model_sds[1]))
    d = tmp_path / name
    d.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"))
    return d


@pytest.mark.parametrize("kind, match", [
    ("shape", r"key 'model.norm.weight': shape \(32,\) in init .* vs \(33,\) in models\[1\] "),
    ("missing", r"key 'lm_head.weight' is in init .* but missing from models\[1\] "),
    ("extra", r"key 'extra.weight' is in models\[1\] .* but not in init"),
    ("missing_dir", r"models\[1\] .*nope: not a directory"),
    ("one_model", r"slerp needs at least 2 model\(s\), got 1"),
    ("lam", r"lam must be in \[0, 1\], got 1.5"),
    ("no_weights", r"no model weights"),
    ("corrupt", r"not a readable safetensors file"),
])
def test_bad_inputs_raise_and_write_nothing(ckpts, tmp_path, kind, match):
    m1, m2 = ckpts.models[0], ckpts.models[1]
    params = {}
    models = [m1, m2]
    if kind == "shape":
        models[1] = _write_variant(ckpts, tmp_path, "bad", lambda sd: {**sd, "model.norm.weight": torch.ones(33)})
    elif kind == "missing":
        models[1] = _write_variant(ckpts, tmp_path, "bad", lambda sd: {k: v for k, v in sd.items() if k != "lm_head.weight"})
    elif kind == "extra":
        models[1] = _write_variant(ckpts, tmp_path, "bad", lambda sd: {**sd, "extra.weight": torch.ones(2)})
    elif kind == "missing_dir":
        models[1] = tmp_path / "nope"
    elif kind == "one_model":
        models = [m1]
    elif kind == "lam":
        params = {"lam": 1.5}
    elif kind == "no_weights":
        (tmp_path / "empty").mkdir()
        models[1] = tmp_path / "empty"
    elif kind == "corrupt":
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
        models[1] = tmp_path / "bad"
    with pytest.raises(MergeError, match=match):
        merge_checkpoints("slerp", models, tmp_path / "out", init=ckpts.init, params=params, progress=False)
    assert _no_output(tmp_path)


def test_liti_eta_out_of_range(ckpts, tmp_path):
    with pytest.raises(MergeError, match="eta must be in"):
        merge_checkpoints("liti", [ckpts.models[0]], tmp_path / "out", init=ckpts.init, params={"eta": -0.1}, progress=False)
    assert _no_output(tmp_path)


def test_existing_out_refused_unless_overwrite(ckpts, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MergeError, match="already exists"):
        merge_checkpoints("slerp", ckpts.models[:2], out, init=ckpts.init, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    merge_checkpoints("slerp", ckpts.models[:2], out, init=ckpts.init, overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_out_equal_to_an_input_refused(ckpts):
    with pytest.raises(MergeError, match="is also an input"):
        merge_checkpoints("slerp", ckpts.models[:2], ckpts.models[0], init=ckpts.init, overwrite=True, progress=False)


@pytest.mark.parametrize("where", ["init/sub", "m1/sub", "m2/a/b", "m1/../m2/x", "link/sub"])
def test_out_inside_an_input_refused_before_writing(ckpts, tmp_path, where):
    (tmp_path / "link").symlink_to(ckpts.models[0])
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(MergeError, match="is inside the input"):
        merge_checkpoints("slerp", ckpts.models[:2], tmp_path / where, init=ckpts.init, progress=False)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before   # nothing created or touched


def test_out_holding_an_input_refused_on_overwrite(ckpts, tmp_path):
    """Replacing --out would delete an input inside it: refused, and the input is still there."""
    with pytest.raises(MergeError, match="holds the input"):
        merge_checkpoints("slerp", ckpts.models[:2], tmp_path, init=ckpts.init, overwrite=True, progress=False)
    assert load_state_dict(ckpts.models[0]).keys() == ckpts.init_sd.keys()
    assert not [p for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}.")]


def test_failure_mid_merge_leaves_nothing(ckpts, tmp_path, monkeypatch):
    """A merge killed half-way (here: an exception on the 5th tensor) never leaves a complete-looking dir."""
    import dataclasses

    from merge.registry import REGISTRY

    real = REGISTRY["slerp"]
    calls = {"n": 0}

    def flaky(key, init, models, p):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed")
        return real.apply(key, init, models, p)

    monkeypatch.setitem(REGISTRY, "slerp", dataclasses.replace(real, apply=flaky))
    with pytest.raises(RuntimeError, match="killed"):
        merge_checkpoints("slerp", ckpts.models[:2], tmp_path / "out", init=ckpts.init, max_shard_bytes=20_000,
                          progress=False)
    assert 5 <= calls["n"] < len(ckpts.init_sd)   # stopped early (a few tensors may be in flight)
    assert _no_output(tmp_path)


class _Marker:
    """Unpickling this writes a file: proof that something loaded the pickle."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "unpickled"))


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_pickled_weights_refused_never_loaded(tmp_path, layout):
    """Nothing loads a pickle from a user path: a pickle-only dir is a one-line error, and is never unpickled."""
    marker = tmp_path / "unpickled.txt"
    for name in ("init", "a", "b"):
        d = tmp_path / name
        d.mkdir()
        sd = {"w": torch.randn(3, 2), "evil": _Marker(marker)}
        if layout == "single":
            torch.save(sd, d / "pytorch_model.bin")
        else:
            torch.save(sd, d / "pytorch_model-00001-of-00001.bin")
            (d / "pytorch_model.bin.index.json").write_text(json.dumps(
                {"weight_map": {"w": "pytorch_model-00001-of-00001.bin"}}))
    with pytest.raises(CheckpointError) as e:
        merge_checkpoints("slerp", [tmp_path / "a", tmp_path / "b"], tmp_path / "out", init=tmp_path / "init",
                          progress=False)
    msg = str(e.value)
    assert "pickled weights are not loaded" in msg and "convert them to safetensors" in msg and "\n" not in msg
    assert msg.startswith(f"init {tmp_path / 'init'}: only pickled weights (pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled weights are not loaded"):
        load_state_dict(tmp_path / "a")
    assert not marker.exists() and _no_output(tmp_path)


def test_checkpoint_reader_and_helpers(ckpts):
    ck = Checkpoint(ckpts.models[0])   # 7 shards via the index
    assert set(ck.keys()) == set(ckpts.init_sd)
    assert torch.equal(ck.get("lm_head.weight"), ckpts.model_sds[0]["lm_head.weight"])
    shards = plan_shards(["a", "b", "c"], {"a": (10,), "b": (10,), "c": (30,)}, {k: torch.float32 for k in "abc"}, 80)
    assert [s.keys for s in shards] == [["a", "b"], ["c"]] and shards[0].name == "model-00001-of-00002.safetensors"
    assert parse_size("2GB") == 2 * 10**9 and parse_size("1.5MiB") == int(1.5 * 2**20) and parse_size(7) == 7
    assert parse_size(" 30kb ") == 30_000 and parse_size("512") == 512
    for bad in ("lots", "inf", "nan", "GB", True):
        with pytest.raises(MergeError, match="bad size"):
            parse_size(bad)
    for bad in ("0", "-1MB", 0, -3):
        with pytest.raises(MergeError, match="size must be positive"):
            parse_size(bad)
