"""`warp eval` on the vLLM engine: LITI points and checkpoints pushed into one running engine, and
lm-eval through the project's model class on it (a tiny Llama with head_dim 32, vLLM's CPU minimum)."""
from __future__ import annotations

import json

import pytest
import torch

from harness.evaluate import run_eval
from rl.engine import vllm_installed
from tests.harness.rundir import perturbed
from tests.tiny import save, tiny_causal_lm


@pytest.fixture(scope="module")
def run128(tmp_path_factory):
    """The synthetic run directory with hidden-128 policies (same layout as tests/harness/rundir.py)."""
    from tests.harness.rundir import build_run_dir

    root = build_run_dir(tmp_path_factory.mktemp("run128") / "run", iterations=1, runs=1, steps=(10,))
    base, tok = tiny_causal_lm(0, hidden=128)
    for rel, scale, seed in (("sft", 0.0, 0), ("iter1/run1/step_000010", 0.02, 1), ("iter1/slerp", 0.03, 2),
                             ("iter1/liti", 0.01, 3)):
        m, _ = tiny_causal_lm(0, hidden=128)
        with torch.no_grad():
            m.lm_head.weight.mul_(4)
        save(perturbed(m, scale, seed) if scale else m, tok, root / rel)
    return root


ARGS = dict(etas=[0.0, 0.5, 1.0], n_prompts=6, tasks=["synth_gsm8k"], limit=3, num_fewshot=0, max_gen_toks=8)


def test_eval_on_vllm_scores_every_point_with_its_own_weights(run128, tmp_path):
    if not vllm_installed():
        pytest.skip("vLLM is not installed here (CI installs it and requires it)")
    v = run_eval(run128, tmp_path / "v", engine="vllm", **ARGS)
    h = run_eval(run128, tmp_path / "h", engine="hf", **ARGS)
    assert v["settings"]["engine"] == "vllm" and {p["engine"] for p in v["points"]} == {"vllm"}
    vm = {p["name"]: p["metrics"] for p in v["points"]}
    assert abs(vm["sft"]["kl"]) < 1e-3 and vm["iter1/eta=1"]["kl"] > 0.01   # engine log-probs: π_sft to ~1e-7
    # the η=1 point is the slerp checkpoint: scored in memory (LITI) and... its KL is its own, not sft's
    assert abs(vm["iter1/eta=1"]["kl"] - vm["iter1/eta=0.5"]["kl"]) > 1e-3
    # greedy lm-eval on both engines: the same tokens, so the same scores, point by point
    hb = {(b["point"], b["metric"]): b["value"] for b in h["bench"]}
    vb = {(b["point"], b["metric"]): b["value"] for b in v["bench"]}
    assert vb == hb and len(vb) >= 6
    # the completions of a point were sampled by the engine with the point's weights: re-running hits the cache
    again = run_eval(run128, tmp_path / "v", engine="vllm", **ARGS)
    assert again["computed"] == [] and again["bench_computed"] == []
    assert json.loads((tmp_path / "v" / "eval.json").read_text())["settings"]["engine"] == "vllm"
