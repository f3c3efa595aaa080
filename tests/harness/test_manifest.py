"""Reading and validating a run directory's manifest."""
from __future__ import annotations

import json
import shutil

import pytest

from harness.manifest import HarnessError, load_manifest, load_prompts
from tests.harness.rundir import build_run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return build_run_dir(tmp_path_factory.mktemp("run") / "run", iterations=2, runs=2, steps=(10,))


def test_reads_the_contract(run_dir):
    m = load_manifest(run_dir)
    assert m.iterations == [1, 2]
    assert m.sft.path == (run_dir / "sft").resolve()
    assert [c.run for c in m.by_role("run")] == [1, 2, 1, 2]
    assert m.slerp(2).rel == "iter2/slerp"
    assert m.task.generation.max_new_tokens == 6 and m.task.generation.temperature == 0.9
    assert m.reward_model_spec() == str((run_dir / "rm").resolve())
    assert m.config["beta"] == 0.1
    prompts = load_prompts(m.prompt_file("test"), 3)
    assert [p["id"] for p in prompts] == ["test-0", "test-1", "test-2"]


def edit(run_dir, tmp_path, fn):
    dst = tmp_path / "copy"
    shutil.copytree(run_dir, dst)
    data = json.loads((dst / "manifest.json").read_text())
    fn(data, dst)
    (dst / "manifest.json").write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize("mutate, message", [
    (lambda d, p: d.pop("task"), "missing key 'task'"),
    (lambda d, p: d.update(format=99), "unsupported manifest format 99"),
    (lambda d, p: d["checkpoints"][1].update(role="weird"), "checkpoints[1].role"),
    (lambda d, p: d["checkpoints"][1].update(iteration="one"), "checkpoints[1].iteration: expected int"),
    (lambda d, p: shutil.rmtree(p / "iter1" / "slerp"), "iter1/slerp does not exist"),
    (lambda d, p: d["task"]["generation"].update(temperature=0), "generation.temperature"),
    (lambda d, p: d["task"]["generation"].update(top_k=3), "unknown key 'top_k'"),
    (lambda d, p: d["task"]["prompts"].update(test="nope.jsonl"), "prompts.test: prompt file"),
    (lambda d, p: d["checkpoints"].pop(0), "exactly one role 'sft'"),
])
def test_bad_manifests_name_the_key(run_dir, tmp_path, mutate, message):
    bad = edit(run_dir, tmp_path, mutate)
    with pytest.raises(HarnessError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_manifest(bad)


def test_missing_manifest_and_bad_json(tmp_path):
    with pytest.raises(HarnessError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(HarnessError, match="cannot read JSON"):
        load_manifest(tmp_path)


def test_bad_prompt_file(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": 1, "prompt": "x"}\n{"id": 2}\n')
    with pytest.raises(HarnessError, match="p.jsonl:2"):
        load_prompts(f)


def test_complete_flag(run_dir, tmp_path):
    assert load_manifest(run_dir).complete is True   # older manifests without the key count as complete
    running = edit(run_dir, tmp_path, lambda d, p: d.update(complete=False))
    assert load_manifest(running).complete is False
    bad = tmp_path / "bad"
    shutil.copytree(running, bad)
    data = json.loads((bad / "manifest.json").read_text())
    data["complete"] = "yes"
    (bad / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(HarnessError, match="complete: expected bool"):
        load_manifest(bad)


def test_eval_of_an_unfinished_run_warns(run_dir, tmp_path):
    from harness.evaluate import run_eval

    running = edit(run_dir, tmp_path, lambda d, p: d.update(complete=False))
    with pytest.warns(RuntimeWarning, match="not complete"):
        run_eval(running, tmp_path / "ev", etas=[0.0], n_prompts=2)
