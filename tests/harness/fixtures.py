"""A fixed small tidy frame (as `warp report` reads it back from metrics.csv), built from
hand-picked numbers: two iterations of LITI fronts, two REINFORCE runs, one baseline."""
from __future__ import annotations

import pandas as pd

from harness.report import COLUMNS

ETAS = [0.0, 0.3, 0.7, 1.0]


def _score(point, kind, iteration, run, step, eta, kl, reward, control):
    vals = {"kl": (kl, 0.02), "kl_k3": (kl * 0.98, 0.01), "reward": (reward, 0.01), "control_reward": (control, 0.02),
            "length": (14.0, 0.3), "unfinished": (0.4, 0.05), "distinct_1": (0.6, None), "distinct_2": (0.9, None)}
    return [{"section": "score", "point": point, "kind": kind, "iteration": iteration, "run": run, "step": step,
             "eta": eta, "metric": m, "value": v, "se": se} for m, (v, se) in vals.items()]


def _sxs(point, kind, iteration, run, step, eta, opponent, judge, wr, score):
    base = {"section": "sxs", "point": point, "kind": kind, "iteration": iteration, "run": run, "step": step, "eta": eta,
            "opponent": opponent, "judge": judge}
    return [{**base, "metric": "win_rate", "value": wr, "lo": wr - 0.08, "hi": wr + 0.08},
            {**base, "metric": "sxs_score", "value": score, "lo": score - 0.2, "hi": score + 0.2}]


def fixed_frame() -> pd.DataFrame:
    rows = _score("sft", "sft", 0, None, 0, 0.0, 0.0, 0.50, 0.10)
    for it in (1, 2):
        for eta in ETAS:
            kl = (0.6 * it) * eta ** 2 * 2
            reward = 0.50 + 0.12 * it * eta - 0.02 * eta ** 2
            control = 0.10 + 0.05 * eta - (0.15 * eta ** 3 if it == 2 else 0)
            name = f"iter{it}/eta={eta:g}"
            rows += _score(name, "liti", it, None, 30, eta, kl, reward, control)
            rows += _sxs(name, "liti", it, None, 30, eta, "sft", "proxy", 0.5 + 0.3 * eta * it / 2, 0.9 * eta * it / 2)
            rows += _sxs(name, "liti", it, None, 30, eta, "sft", "control", 0.5 + 0.1 * eta, 0.2 * eta)
        for run in (1, 2):
            for step in (10, 20, 30):
                name = f"iter{it}/run{run}/step{step}"
                rows += _score(name, "run", it, run, step, None, 0.05 * step * it + 0.1 * run, 0.5 + 0.004 * step * it, 0.1)
                rows += _sxs(name, "run", it, run, step, None, "sft", "proxy", 0.5 + 0.005 * step, 0.02 * step)
    rows += _score("baseline/other", "baseline", None, None, None, None, float("nan"), 0.55, 0.2)
    rows += _sxs("baseline/other", "baseline", None, None, None, None, "sft", "proxy", 0.58, 0.3)
    rows.append({"section": "bench", "point": "sft", "kind": "sft", "iteration": 0, "step": 0, "eta": 0.0,
                 "opponent": "synth_gsm8k", "metric": "exact_match,strict-match", "value": 0.25, "se": 0.1})
    return pd.DataFrame(rows, columns=COLUMNS)
