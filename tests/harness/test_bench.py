"""lm-eval path, offline: the project's local tasks, an oracle that checks their answer filters,
and `warp eval --tasks` end to end on the tiny model."""
from __future__ import annotations

import json
import math

import pytest

from harness.bench import evaluate_checkpoint, resolve_tasks, task_manager
from harness.cli import main
from harness.manifest import HarnessError
from harness.tasks.utils import champ_docs, synth_gsm8k_docs
from tests.harness.rundir import build_run_dir


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


def test_lm_eval_hf_backend_offline_on_tiny_model(tiny_lm_dir):
    rows = evaluate_checkpoint(tiny_lm_dir, ["synth_gsm8k"], limit=3, num_fewshot=0, gen_kwargs={"max_gen_toks": 8})
    by = {r["metric"]: r["value"] for r in rows}
    assert set(by) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in by.values())


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


def test_warp_eval_with_tasks_end_to_end(tmp_path):
    run = build_run_dir(tmp_path / "run", iterations=1, runs=1, steps=(10,))
    ev = tmp_path / "eval"
    args = ["eval", str(run), "--out", str(ev), "--etas", "0,0.5", "--prompts", "2", "--tasks", "synth_gsm8k",
            "--limit", "2", "--num-fewshot", "0", "--max-gen-toks", "4"]
    assert main(args) == 0
    summary = json.loads((ev / "eval.json").read_text())
    bench = {(b["point"], b["metric"]) for b in summary["bench"]}
    assert ("iter1/eta=0.5", "exact_match,strict-match") in bench and ("sft", "exact_match,flexible-extract") in bench
    saved = list((ev / "checkpoints").iterdir())
    assert len(saved) == 1 and (saved[0] / "model.safetensors").is_file()  # only the in-memory LITI point is saved
    assert main(["report", str(ev), "--out", str(tmp_path / "rep")]) == 0
    assert "## Benchmarks (lm-eval)" in (tmp_path / "rep" / "report.md").read_text()


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
