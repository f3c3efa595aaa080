"""Cached scores cannot go stale: every ingredient of a score is in its cache key. For each one,
change it and see exactly the affected points recomputed; change nothing and see only hits."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import harness.evaluate as evaluate
from harness.cache import HashIndex, content_hash
from harness.evaluate import run_eval
from tests.harness.rundir import build_run_dir

POINTS = {"sft", "iter1/eta=0.5", "iter1/run1/step10", "iter1/liti"}
ARGS = dict(etas=[0.5], n_prompts=3, batch_size=2)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    run = build_run_dir(root / "run", iterations=1, runs=1, steps=(10,))
    summary = run_eval(run, root / "eval", **ARGS)
    assert set(summary["computed"]) == POINTS
    return run, root / "eval", summary


def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=2))


def add_to_weights(ckpt: Path, value: float = 0.01) -> None:
    f = ckpt / "model.safetensors"
    sd = load_file(f)
    sd["lm_head.weight" if "lm_head.weight" in sd else next(iter(sd))] += value
    save_file(sd, f, metadata={"format": "pt"})


def swap_labels(cfg: dict) -> None:
    cfg["id2label"] = {"0": "positive", "1": "negative"}
    cfg["label2id"] = {"positive": 0, "negative": 1}


def eos_also_at_e(cfg: dict) -> None:
    from tests.tiny import tiny_tokenizer

    cfg["eos_token_id"] = [cfg["eos_token_id"], tiny_tokenizer().convert_tokens_to_ids("e")]


CASES = {
    # what changes: (mutation of the copied run dir, extra run_eval arguments, points recomputed)
    "nothing": (None, {}, set()),
    "policy weights": (lambda r: add_to_weights(r / "iter1/run1/step_000010"), {}, {"iter1/run1/step10"}),
    "policy config.json": (lambda r: edit_json(r / "iter1/run1/step_000010/config.json",
                                               lambda c: c.update(rms_norm_eps=1e-2)), {}, {"iter1/run1/step10"}),
    "policy generation_config.json (EOS ids)": (lambda r: edit_json(r / "iter1/run1/step_000010/generation_config.json",
                                                                    eos_also_at_e), {}, {"iter1/run1/step10"}),
    "policy tokenizer": (lambda r: edit_json(r / "iter1/liti/tokenizer_config.json",
                                             lambda c: c.update(model_max_length=77)), {}, {"iter1/liti"}),
    "sft weights (KL reference, LITI endpoint)": (lambda r: add_to_weights(r / "sft"), {}, POINTS),
    "slerp weights (LITI endpoint)": (lambda r: add_to_weights(r / "iter1/slerp"), {}, {"iter1/eta=0.5"}),
    "slerp config.json": (lambda r: edit_json(r / "iter1/slerp/config.json", lambda c: c.update(rms_norm_eps=1e-2)),
                          {}, {"iter1/eta=0.5"}),
    "eta": (None, {"etas": [0.5, 0.25]}, {"iter1/eta=0.25"}),
    "reward model weights": (lambda r: add_to_weights(r / "rm", 0.5), {}, POINTS),
    "reward model id2label": (lambda r: edit_json(r / "rm/config.json", swap_labels), {}, POINTS),
    "reward model tokenizer": (lambda r: edit_json(r / "rm/tokenizer_config.json", lambda c: c.update(model_max_length=9)),
                               {}, POINTS),
    "reward with prompt": (lambda r: edit_json(r / "manifest.json", lambda m: m["task"].update(reward_with_prompt=True)),
                           {}, POINTS),
    "prompts": (lambda r: (r / "prompts/test.jsonl").write_text('{"id": "x", "prompt": "hello"}\n'), {}, POINTS),
    "temperature": (lambda r: edit_json(r / "manifest.json", lambda m: m["task"]["generation"].update(temperature=0.7)),
                    {}, POINTS),
    "top_p": (lambda r: edit_json(r / "manifest.json", lambda m: m["task"]["generation"].update(top_p=0.8)), {}, POINTS),
    "max_new_tokens": (lambda r: edit_json(r / "manifest.json", lambda m: m["task"]["generation"].update(max_new_tokens=3)),
                       {}, POINTS),
    "seed": (None, {"seed": 1}, POINTS),
    "batch size": (None, {"batch_size": 3}, POINTS),
    "number of prompts": (None, {"n_prompts": 2}, POINTS),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_changed_ingredient_recomputes_exactly_its_points(base, tmp_path, case):
    run0, ev0, first = base
    mutate, args, expected = CASES[case]
    run, ev = tmp_path / "run", tmp_path / "eval"
    shutil.copytree(run0, run)          # other paths, same content: the cache is content-addressed
    shutil.copytree(ev0, ev)
    if mutate:
        mutate(run)
    summary = run_eval(run, ev, **{**ARGS, **args})
    assert set(summary["computed"]) == expected
    if case == "reward model id2label":
        # the swapped labels flip P(positive): a reused entry would have kept the old sign
        old = {p["name"]: p["metrics"]["reward"] for p in first["points"]}
        for p in summary["points"]:
            assert p["metrics"]["reward"] == pytest.approx(1 - old[p["name"]], abs=1e-5)


@pytest.mark.parametrize("constant", ["SCORE_VERSION", "DTYPE"])
def test_scoring_code_and_dtype_are_in_the_key(base, tmp_path, monkeypatch, constant):
    run0, ev0, _ = base
    shutil.copytree(ev0, tmp_path / "eval")
    monkeypatch.setattr(evaluate, constant, {"SCORE_VERSION": 999, "DTYPE": "bfloat16"}[constant])
    assert set(run_eval(run0, tmp_path / "eval", **ARGS)["computed"]) == POINTS


def test_engine_and_its_dtype_are_in_the_key(base):
    from harness.manifest import load_manifest, load_prompts

    run0, ev0, _ = base
    m = load_manifest(run0)
    prompts = load_prompts(m.prompt_file("test"), 3)
    key = lambda **k: evaluate.score_settings(m, prompts, "h", 0, 2, "cpu", HashIndex(ev0), **k)  # noqa: E731
    hf, v32, v16 = key(engine="hf"), key(engine="vllm", engine_dtype="float32"), key(engine="vllm", engine_dtype="bfloat16")
    assert hf != v32 != v16 != hf
    assert key(engine="hf", engine_dtype="bfloat16") == hf      # transformers samples in the scoring dtype


def test_settings_name_device_sampling_and_chat_template(base):
    run0, ev0, _ = base
    from harness.manifest import load_manifest, load_prompts

    m = load_manifest(run0)
    s = evaluate.score_settings(m, load_prompts(m.prompt_file("test"), 3), "h", 0, 2, "cpu", HashIndex(ev0))
    assert (s["device"], s["dtype"], s["engine"], s["version"]) == ("cpu", "float32", "hf", evaluate.SCORE_VERSION)
    assert set(s["generation"]) == {"max_new_tokens", "temperature", "top_p", "chat_template"}
    assert s["reward_model"] == f"sha256 {content_hash(run0 / 'rm')}" and s["control_reward"].startswith("vader ")


def test_content_hash_covers_every_file_from_pretrained_reads(tmp_path, tiny_lm_dir):
    d = tmp_path / "ck"
    shutil.copytree(tiny_lm_dir, d)
    h = content_hash(d)
    (d / "README.md").write_text("notes")              # documentation, hidden files, subfolders: not behaviour
    (d / ".warp.lock").write_text("1")
    (d / "members").mkdir()
    (d / "members" / "x.json").write_text("{}")
    assert content_hash(d) == h
    (d / "chat_template.jinja").write_text("{{ messages }}")   # a new file that transformers would read
    assert content_hash(d) != h
    (d / "chat_template.jinja").unlink()
    assert content_hash(d) == h
    (d / "tokenizer.json").rename(d / "tokenizer2.json")        # names are hashed, not only bytes
    assert content_hash(d) != h


def test_hash_index_memo_sees_non_weight_files(tmp_path, tiny_lm_dir):
    d = tmp_path / "ck"
    shutil.copytree(tiny_lm_dir, d)
    idx = HashIndex(tmp_path / "ev")
    h = idx(d)
    edit_json(d / "generation_config.json", lambda c: c.update(eos_token_id=5))
    assert HashIndex(tmp_path / "ev")(d) == content_hash(d) != h
