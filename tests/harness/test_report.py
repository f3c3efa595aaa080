"""The report renders from a fixed small CSV (tables, plots), and the leaderboard reads reports."""
from __future__ import annotations

import pandas as pd
import pytest

from harness.manifest import HarnessError
from harness.report import PARETO_RULES, front_table, leaderboard, render_report, score_table, sxs_table, tidy_frame
from tests.harness.fixtures import fixed_frame


@pytest.fixture
def csv_frame(tmp_path):
    path = tmp_path / "fixed.csv"
    fixed_frame().to_csv(path, index=False)
    return pd.read_csv(path)  # as `warp leaderboard` reads it back


def test_report_renders_from_fixed_csv(csv_frame, tmp_path):
    meta = {"title": "fixed", "config": {"beta": 0.1}, "settings": {"n_prompts": 8, "limit": 5},
            "task": {"generation": {"temperature": 0.7, "max_new_tokens": 16}}}
    out = render_report(csv_frame, meta, tmp_path / "rep")
    md = (out / "report.md").read_text()
    # the KL definition, with the eval's temperature; the CSV has no paired flags: the unpaired rule, said so
    assert ("KL(π^T‖π_sft^T), the KL between the tempered sampling distributions at T = 0.7 (logits/T), "
            "k1 and k3 Monte Carlo estimates over sampled completions") in md
    assert PARETO_RULES["unpaired"] in md and PARETO_RULES["paired"] not in md
    for f in ("pareto.png", "reward_vs_eta.png", "proxy_vs_control.png", "leaderboard.png"):
        assert (out / f).stat().st_size > 10_000 and f"]({f})" in md
    # the Pareto table of iteration 2 carries the CSV's numbers: η=0.7 has KL 1.176 and reward 0.658
    it2 = md.split("### Iteration 2")[1].split("##")[0]
    assert "| 0.7 | 1.176 ± 0.020 |" in it2 and "0.658 ± 0.010" in it2
    # leaderboard sorted by win rate vs SFT: iter2/eta=1 (0.8) first, with its interval
    lb = md.split("## Side-by-side leaderboard against SFT")[1]
    first_row = [l for l in lb.splitlines() if l.startswith("| iter")][0]
    assert first_row.startswith("| iter2/eta=1 | 0.800 [0.720, 0.880]")
    assert "| sft | 0.250" in md.split("## Benchmarks")[1]  # benchmark table
    assert '"beta": 0.1' in md
    back = pd.read_csv(out / "metrics.csv")
    assert len(back) == len(csv_frame)


def test_tables_from_frame(csv_frame):
    wide = score_table(csv_frame)
    assert len(wide) == 1 + 2 * 4 + 2 * 2 * 3 + 1
    f = front_table(wide, 2)
    assert f.eta.tolist() == [0.0, 0.3, 0.7, 1.0] and f.pareto.all() and set(f.pareto_rule) == {"unpaired"}
    # a point clearly worse on both axes (beyond its and the better point's 95% intervals) loses its check
    worse = wide.copy()
    row = (worse.kind == "liti") & (worse.iteration == 2) & (worse.eta == 1.0)
    worse.loc[row, "kl"], worse.loc[row, "reward"] = 2.0, 0.5
    assert front_table(worse, 2).pareto.tolist() == [True, True, True, False]
    lb = sxs_table(csv_frame, "sft")
    row = lb[(lb.point == "iter1/eta=0.3") & (lb.judge == "proxy")].iloc[0]
    assert row.win_rate == pytest.approx(0.545) and row.win_rate_lo == pytest.approx(0.465)


def test_tidy_frame_from_eval_summary():
    summary = {"points": [{"name": "sft", "kind": "sft", "iteration": 0, "run": None, "step": 0, "eta": 0.0,
                           "metrics": {"kl": 0.0, "kl_se": 0.0, "reward": 0.4, "reward_se": 0.1}},
                          {"name": "a", "kind": "liti", "iteration": 1, "run": None, "step": 3, "eta": 0.5,
                           "metrics": {"kl": 1.0, "kl_se": 0.1, "reward": 0.6, "reward_se": 0.1}}],
               "sxs": [{"point": "a", "opponent": "sft", "judge": "proxy", "win_rate": 0.7, "win_rate_lo": 0.6,
                        "win_rate_hi": 0.8, "sxs_score": 0.5, "sxs_score_lo": 0.2, "sxs_score_hi": 0.8,
                        "wins": 0.6, "ties": 0.2, "losses": 0.2}],
               "bench": [{"point": "a", "task": "synth_gsm8k", "metric": "exact_match,strict-match", "value": 0.1, "se": 0.05}]}
    df = tidy_frame(summary)
    assert set(df.section) == {"score", "sxs", "bench"}
    assert df[(df.point == "a") & (df.metric == "kl")].value.item() == 1.0
    assert df[(df.metric == "win_rate")].hi.item() == 0.8


def test_leaderboard_over_reports(csv_frame, tmp_path):
    a = render_report(csv_frame, {"title": "a"}, tmp_path / "a")
    worse = csv_frame.copy()
    for col in ("value", "lo", "hi"):
        worse.loc[(worse.section == "sxs") & (worse.metric == "win_rate"), col] -= 0.2
    b = render_report(worse, {"title": "b"}, tmp_path / "b")
    table = leaderboard([b, a])
    rows = [l for l in table.splitlines()[2:]]
    assert rows[0].startswith("| a | iter2/eta=1 | liti | 0.800")
    assert any(r.startswith("| b | iter2/eta=1 | liti | 0.600") for r in rows)
    with pytest.raises(HarnessError, match="metrics.csv"):
        leaderboard([tmp_path])
