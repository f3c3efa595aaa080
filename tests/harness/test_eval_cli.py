"""End to end: `warp eval`, `warp report`, `warp leaderboard` on a synthetic run dir; caching.
Bad inputs: test_bad_inputs.py."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import harness.evaluate as evaluate
from harness.cli import main
from tests.harness.rundir import build_run_dir, perturbed
from tests.tiny import save, tiny_causal_lm


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return build_run_dir(tmp_path_factory.mktemp("run") / "run", iterations=2, runs=2, steps=(10, 20))


@pytest.fixture
def counted(monkeypatch):
    """Count the policies actually scored (sampling + KL + rewards), to see what the cache saves."""
    calls = []
    real = evaluate.score_policy

    def wrapper(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "score_policy", wrapper)
    return calls


def test_eval_report_leaderboard_end_to_end(run_dir, tmp_path, capsys):
    ev = tmp_path / "eval"
    assert main(["eval", str(run_dir), "--out", str(ev), "--etas", "0,0.5,1", "--prompts", "6", "--batch-size", "4"]) == 0
    summary = json.loads((ev / "eval.json").read_text())
    names = [p["name"] for p in summary["points"]]
    assert names[:4] == ["sft", "iter1/eta=0", "iter1/eta=0.5", "iter1/eta=1"]
    assert "iter2/run2/step20" in names and "iter2/liti" in names and len(names) == 1 + 2 * 3 + 2 * 2 * 2 + 2
    point = {p["name"]: p for p in summary["points"]}

    # the η=0.5 point is (θ_sft + θ_slerp)/2: rebuild it independently and resample with the same seeds
    from rl.sampling import sample
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sft = AutoModelForCausalLM.from_pretrained(run_dir / "sft")
    slerp = AutoModelForCausalLM.from_pretrained(run_dir / "iter1" / "slerp")
    mid = AutoModelForCausalLM.from_pretrained(run_dir / "sft")
    with torch.no_grad():
        for (_, p_mid), (_, p_a), (_, p_b) in zip(mid.named_parameters(), sft.named_parameters(), slerp.named_parameters()):
            p_mid.copy_((p_a + p_b) / 2)
    tok = AutoTokenizer.from_pretrained(run_dir / "sft")
    recs = [json.loads(l) for l in (ev / "completions" / "iter1__eta=0.5.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] for r in recs]
    s0 = sample(mid, tok, prompts[:4], max_new_tokens=6, temperature=0.9, seed=0)
    s1 = sample(mid, tok, prompts[4:], max_new_tokens=6, temperature=0.9, seed=1)
    assert s0.completions + s1.completions == [r["completion"] for r in recs]
    # the proxy reward is the reward model's P(positive) of each completion, and the point's mean is theirs
    from rl.rewards import ClassifierReward

    rm = ClassifierReward(run_dir / "rm")
    assert torch.allclose(rm(prompts, [r["completion"] for r in recs]), torch.tensor([r["reward"] for r in recs]), atol=1e-5)
    m = point["iter1/eta=0.5"]["metrics"]
    assert m["reward"] == pytest.approx(sum(r["reward"] for r in recs) / len(recs))
    assert m["kl"] == pytest.approx(sum(r["kl_k1"] for r in recs) / len(recs))
    # the policy side of the KL is the engine's own sampled-token log-prob (a cached decode), the sft side a full
    # forward pass: for the sft against itself they agree to float32 rounding, not bitwise
    assert abs(point["sft"]["metrics"]["kl"]) < 1e-6 and point["iter1/eta=0"]["metrics"] == point["sft"]["metrics"]
    assert m["kl_k3"] > 0

    # side-by-side: a point is never compared with itself; the sft point against the η=1 points exists
    sxs = summary["sxs"]
    assert not any(r["point"] == "sft" and r["opponent"] == "sft" for r in sxs)
    assert not any(r["point"] == "iter1/eta=0" and r["opponent"] == "sft" for r in sxs)
    row = next(r for r in sxs if r["point"] == "iter1/eta=0.5" and r["opponent"] == "sft" and r["judge"] == "proxy")
    assert row["win_rate_lo"] <= row["win_rate"] <= row["win_rate_hi"]
    opps = {r["opponent"] for r in sxs}
    assert opps == {"sft", "iter1/run1/step20", "iter1/run2/step20", "iter2/run1/step20", "iter2/run2/step20",
                    "iter1/eta=1", "iter2/eta=1"}

    rep = tmp_path / "results" / "demo"
    assert main(["report", str(ev), "--out", str(rep)]) == 0
    for f in ("report.md", "metrics.csv", "pareto.png", "reward_vs_eta.png", "proxy_vs_control.png", "leaderboard.png"):
        assert (rep / f).is_file(), f
    df = pd.read_csv(rep / "metrics.csv")
    kl = df[(df.section == "score") & (df.point == "iter1/eta=0.5") & (df.metric == "kl")]
    assert len(kl) == 1 and kl.value.iloc[0] == pytest.approx(m["kl"])
    md = (rep / "report.md").read_text()
    assert "### Iteration 2" in md and "Side-by-side leaderboard" in md and '"beta": 0.1' in md
    assert "KL(π^T‖π_sft^T), the KL between the tempered sampling distributions at T = 0.9 (logits/T)" in md
    capsys.readouterr()
    assert main(["leaderboard", str(rep), str(rep)]) == 0
    table = capsys.readouterr().out
    assert table.count("| demo |") >= 2 and "win rate vs sft" in table
    # the report directory is not overwritten by accident
    assert main(["report", str(ev), "--out", str(rep)]) == 2


def test_cache_recomputes_only_new_points(run_dir, tmp_path, counted):
    ev = tmp_path / "eval"
    base = ["eval", str(run_dir), "--out", str(ev), "--prompts", "4", "--batch-size", "4"]
    assert main(base + ["--etas", "0,1"]) == 0
    # sft (= η 0 of both iterations), the two slerps (η=1), 8 run checkpoints, 2 saved LITI checkpoints
    assert len(counted) == 1 + 2 + 8 + 2
    first = json.loads((ev / "eval.json").read_text())
    counted.clear()
    other = tmp_path / "other"
    save(perturbed(tiny_causal_lm(seed=0)[0], 0.01, 99), tiny_causal_lm(seed=0)[1], other)
    assert main(base + ["--etas", "0,0.5,1", "--baseline", str(other)]) == 0
    assert sorted(counted) == ["baseline/other", "iter1/eta=0.5", "iter2/eta=0.5"]
    second = json.loads((ev / "eval.json").read_text())
    before = {p["name"]: p["metrics"] for p in first["points"]}
    after = {p["name"]: p["metrics"] for p in second["points"]}
    assert all(after[n] == before[n] for n in before)
    counted.clear()
    assert main(base + ["--etas", "0,0.5,1", "--baseline", str(other)]) == 0
    assert counted == []
    # other settings (more prompts) are other cache entries
    assert main(base[:-4] + ["--prompts", "5", "--batch-size", "4", "--etas", "1"]) == 0
    assert len(counted) == 1 + 2 + 8 + 2
