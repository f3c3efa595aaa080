"""lm-eval path, offline: the project's local tasks, an oracle that checks their answer filters,
tiny "bigram oracle" checkpoints whose lm-eval score is known in advance (so evaluating the wrong
weights shows), `warp eval --tasks` end to end, and the lm-eval cache key."""
from __future__ import annotations

import json
import shutil
import types

import pytest
import torch

import harness.bench as bench
from harness.bench import evaluate_checkpoint, resolve_tasks, task_manager
from harness.cli import main
from harness.evaluate import run_eval
from harness.manifest import HarnessError
from harness.tasks.utils import champ_docs, synth_gsm8k_docs
from tests.harness.rundir import build_run_dir
from tests.tiny import save, tiny_causal_lm

LIMIT = 8
FLEX = "exact_match,flexible-extract"


def bigram_oracle(answer: str):
    """A tiny Llama that answers every synth_gsm8k prompt ("...Answer:") with `answer` then EOS, greedily.

    Attention and MLP outputs are zeroed, so the residual stream is the current token's embedding:
    the model is a bigram table. ':' → answer[0] → answer[1] → ... → EOS, through orthogonal embeddings.
    """
    model, tok = tiny_causal_lm(seed=0)
    ids = [tok.convert_tokens_to_ids(c) for c in ":" + answer] + [tok.eos_token_id]
    assert len(set(ids[:-1])) == len(ids) - 1, "a bigram chain needs distinct characters"
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for k, (cur, nxt) in enumerate(zip(ids[:-1], ids[1:])):
            e = torch.zeros(model.config.hidden_size)
            e[k] = 1.0
            model.model.embed_tokens.weight[cur] = e
            model.lm_head.weight[nxt] = 10.0 * e
    return model, tok


def share_answering(answer: str, limit: int = LIMIT) -> float:
    """The flexible-extract score of a model that always answers `answer`: the share of the first
    `limit` test documents whose gold answer it is."""
    return sum(d["answer"].split("#### ")[1] == answer for d in synth_gsm8k_docs(500, 1234)[:limit]) / limit


def test_local_task_data():
    docs = champ_docs()
    assert len(docs) == 270 and all(d["problem"] and d["answer"] for d in docs)
    a, b = synth_gsm8k_docs(20, 1234), synth_gsm8k_docs(20, 1234)
    assert a == b and a != synth_gsm8k_docs(20, 1)
    for d in a:  # the worked answer's arithmetic is right: the final line follows from the numbers
        *steps, final = d["answer"].splitlines()
        assert final.startswith("#### ") and steps and final[5:] in steps[-1]


def test_task_names_resolve_and_unknown_fails():
    assert resolve_tasks(["synth_gsm8k", "champ_math", "gsm8k", "gsm8k_cot", "minerva_math", "hendrycks_math500"])
    with pytest.raises(HarnessError, match="not_a_task"):
        resolve_tasks(["not_a_task"])


def test_lm_eval_hf_backend_scores_the_checkpoint_it_is_given(tmp_path, tiny_lm_dir):
    assert share_answering("5") == 0.25 and share_answering("34") == 0.125   # two documented, different scores
    for answer in ("5", "34"):
        d = save(*bigram_oracle(answer), tmp_path / answer)
        rows = evaluate_checkpoint(d, ["synth_gsm8k"], limit=LIMIT, num_fewshot=0, gen_kwargs={"max_gen_toks": 4})
        by = {r["metric"]: r["value"] for r in rows}
        assert set(by) == {"exact_match,strict-match", FLEX}
        assert by[FLEX] == share_answering(answer) and by["exact_match,strict-match"] == 0.0  # no "#### "
    rows = evaluate_checkpoint(tiny_lm_dir, ["synth_gsm8k"], limit=LIMIT, num_fewshot=0, gen_kwargs={"max_gen_toks": 4})
    assert {r["metric"]: r["value"] for r in rows}[FLEX] == 0.0


def test_task_filters_score_an_oracle():
    """An LM that answers with the gold solution gets 1.0 (and one that answers wrongly 0.0): the
    YAMLs' prompts, extraction filters and exact-match settings agree with the data."""
    import lm_eval
    from lm_eval.api.model import LM

    gsm = {f"Question: {d['question']}\nAnswer:": d["answer"] for d in synth_gsm8k_docs(500, 1234)}
    champ = {d["problem"]: d["answer"] for d in champ_docs()}

    class Oracle(LM):
        def __init__(self, wrong=False):
            super().__init__()
            self.wrong = wrong

        def generate_until(self, requests):
            out = []
            for r in requests:
                ctx = r.args[0]
                if ctx in gsm:
                    ans = gsm[ctx] if not self.wrong else "#### -12345"
                else:
                    problem = ctx.split("Problem: ", 1)[1].split("\nSolve the problem", 1)[0]
                    ans = f"Some work.\nFinal Answer: {champ[problem] if not self.wrong else 'nothing'}"
                out.append(" " + ans)
            return out

        def loglikelihood(self, requests):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

    for wrong, expected in ((False, 1.0), (True, 0.0)):
        res = lm_eval.simple_evaluate(model=Oracle(wrong), tasks=["synth_gsm8k", "champ_math"], limit=10, num_fewshot=0,
                                      task_manager=task_manager(), bootstrap_iters=0)["results"]
        assert res["synth_gsm8k"]["exact_match,strict-match"] == expected
        assert res["champ_math"]["exact_match,final-answer"] == expected


def test_warp_eval_with_tasks_evaluates_each_points_own_weights(tmp_path):
    """The run checkpoint answers "5", the slerp checkpoint (so the LITI point η=1) "34", π_sft is random:
    each point's lm-eval score must be its own model's."""
    run = build_run_dir(tmp_path / "run", iterations=1, runs=1, steps=(10,))
    save(*bigram_oracle("5"), run / "iter1" / "run1" / "step_000010")
    save(*bigram_oracle("34"), run / "iter1" / "slerp")
    ev = tmp_path / "eval"
    args = ["eval", str(run), "--out", str(ev), "--etas", "0,0.5,1", "--prompts", "2", "--tasks", "synth_gsm8k",
            "--limit", str(LIMIT), "--num-fewshot", "0", "--max-gen-toks", "4", "--bench-on", "sft,liti,run"]
    assert main(args) == 0
    summary = json.loads((ev / "eval.json").read_text())
    flex = {b["point"]: b["value"] for b in summary["bench"] if b["metric"] == FLEX}
    assert flex == {"sft": 0.0, "iter1/eta=0": 0.0, "iter1/eta=0.5": flex["iter1/eta=0.5"],
                    "iter1/eta=1": share_answering("34"), "iter1/run1/step10": share_answering("5")}
    assert sorted(summary["bench_computed"]) == ["iter1/eta=0.5:synth_gsm8k", "iter1/eta=1:synth_gsm8k",
                                                 "iter1/run1/step10:synth_gsm8k", "sft:synth_gsm8k"]  # η=0 is π_sft
    assert not (ev / "checkpoints").exists()   # LITI points go to lm-eval as in-memory weights, never through disk
    assert main(["report", str(ev), "--out", str(tmp_path / "rep")]) == 0
    assert "## Benchmarks (lm-eval)" in (tmp_path / "rep" / "report.md").read_text()


@pytest.fixture(scope="module")
def bench_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchkeys")
    run = build_run_dir(root / "run", iterations=1, runs=1, steps=(10,))
    args = dict(etas=[0.0], n_prompts=2, tasks=["synth_gsm8k"], limit=1, num_fewshot=0, max_gen_toks=2, bench_on=["sft"])
    assert run_eval(run, root / "eval", **args)["bench_computed"] == ["sft:synth_gsm8k"]
    return run, root / "eval", args


@pytest.mark.parametrize("change, recomputed", [
    ({}, False), ({"limit": 2}, True), ({"num_fewshot": 1}, True), ({"max_gen_toks": 3}, True), ({"seed": 1}, True),
])
def test_lm_eval_cache_key_ingredients(bench_base, tmp_path, change, recomputed):
    run, ev0, args = bench_base
    shutil.copytree(ev0, tmp_path / "eval")
    summary = run_eval(run, tmp_path / "eval", **{**args, **change})
    assert summary["bench_computed"] == (["sft:synth_gsm8k"] if recomputed else [])


def test_lm_eval_cache_key_covers_the_task_files(bench_base, tmp_path, monkeypatch):
    """Editing the task's YAML or the Python module its `!function` tags name is a new cache entry."""
    run, ev0, args = bench_base
    tasks = tmp_path / "tasks"
    shutil.copytree(bench.TASKS_DIR, tasks, ignore=shutil.ignore_patterns("__pycache__"))
    entry = task_manager().task_index["synth_gsm8k"]
    monkeypatch.setitem(task_manager().task_index, "synth_gsm8k",
                        types.SimpleNamespace(yaml_path=tasks / "synth_gsm8k.yaml", cfg=entry.cfg, kind=entry.kind))
    shutil.copytree(ev0, tmp_path / "eval")

    def computed():
        return run_eval(run, tmp_path / "eval", **args)["bench_computed"]

    assert computed() == ["sft:synth_gsm8k"] and computed() == []
    yaml = tasks / "synth_gsm8k.yaml"
    yaml.write_text(yaml.read_text().replace("version: 1.0", "version: 1.1"))
    assert computed() == ["sft:synth_gsm8k"] and computed() == []
    with open(tasks / "utils.py", "a") as f:
        f.write("\n# a change to the data generator\n")
    assert computed() == ["sft:synth_gsm8k"]


def test_lm_eval_settings_name_backend_device_and_lm_eval(monkeypatch):
    import lm_eval

    s = bench.bench_settings("gsm8k", 5, 0, {"max_gen_toks": 9}, 3, "cpu")
    assert s["lm_eval"] == lm_eval.__version__ and (s["model"], s["engine"], s["device"], s["dtype"]) == (
        "warp", "hf", "cpu", "float32")
    assert (s["limit"], s["num_fewshot"], s["gen_kwargs"], s["seed"]) == (5, 0, {"max_gen_toks": 9}, 3)
    v32 = bench.bench_settings("gsm8k", 5, 0, {"max_gen_toks": 9}, 3, "cpu", "vllm", "float32")
    v16 = bench.bench_settings("gsm8k", 5, 0, {"max_gen_toks": 9}, 3, "cpu", "vllm", "bfloat16")
    assert s != v32 != v16                                         # the engine and its dtype are in the key
    fp = s["task_fingerprint"]
    assert fp != bench.task_fingerprint("gsm8k_cot") and fp == bench.task_fingerprint("gsm8k")
    monkeypatch.setattr(lm_eval, "__version__", "0.0.0")
    assert bench.task_fingerprint("gsm8k") != fp                 # lm-eval's own tasks: its version is in the key
    assert bench.task_fingerprint("minerva_math")                 # a group: its subtasks' fingerprints


def test_bench_on_limits_lm_eval_to_the_named_points(tmp_path, capsys):
    run = build_run_dir(tmp_path / "run", iterations=1, runs=1, steps=(10,))
    ev = tmp_path / "eval"
    base = ["eval", str(run), "--out", str(ev), "--etas", "0,0.5,1", "--prompts", "2", "--tasks", "synth_gsm8k",
            "--limit", "1", "--num-fewshot", "0", "--max-gen-toks", "2"]
    assert main(base + ["--bench-on", "sft,iter1/eta=1"]) == 0
    summary = json.loads((ev / "eval.json").read_text())
    assert {b["point"] for b in summary["bench"]} == {"sft", "iter1/eta=1"}
    assert len(summary["points"]) > 2   # every point is still scored for KL and reward
    assert main(base + ["--bench-on", "nope"]) == 2
    assert "--bench-on: 'nope' names no point" in capsys.readouterr().err
