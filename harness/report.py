"""`warp report` and `warp leaderboard`: data frames in, markdown tables and seaborn plots out.

`tidy_frame(eval_summary)` turns EVAL_DIR/eval.json into one tidy frame (one row per point and
metric; side-by-side and benchmark results are rows too, with section = score | sxs | bench).
Everything else here renders that frame: tables and plots read values, they never compute them.
The Pareto ✓ is data from `warp eval` (paired per-prompt intervals, `metrics.pareto_front`); a
frame without it (an eval.json from before) falls back to `metrics.pareto_front_unpaired` on the
points' means and standard errors, and the report says which rule it used.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from merge.io import atomic_directory

from .manifest import HarnessError
from .metrics import Z95, pareto_front_unpaired

COLUMNS = ["section", "point", "kind", "iteration", "run", "step", "eta", "opponent", "judge", "metric",
           "value", "se", "lo", "hi"]
POINT_KEYS = ["point", "kind", "iteration", "run", "step", "eta"]
PARETO_RULES = {
    "paired": "✓: on the Pareto front beyond noise: no other η of the same iteration has both lower KL and higher "
              "proxy reward with the paired 95% intervals of both differences excluding 0 (per-prompt differences "
              "over the same prompts, mean ± 1.96 s.e.); a point within noise of a better one keeps its ✓.",
    "unpaired": "✓: on the Pareto front beyond noise: no other η of the same iteration has both lower KL and higher "
                "proxy reward with the two points' 95% intervals (mean ± 1.96 s.e.) separated on both axes "
                "(this eval.json has no paired Pareto data: re-run `warp eval` for the paired rule).",
}


def tidy_frame(summary: dict) -> pd.DataFrame:
    """One row per (point, metric); side-by-side rows carry opponent/judge and a 95% interval."""
    rows = []
    info = {p["name"]: p for p in summary["points"]}
    for p in summary["points"]:
        base = {"section": "score", "point": p["name"], "kind": p["kind"], "iteration": p["iteration"], "run": p["run"],
                "step": p["step"], "eta": p["eta"]}
        m = p["metrics"]
        for key in ["kl", "kl_k3", "reward", "control_reward", "length", "unfinished", "distinct_1", "distinct_2", "n"]:
            if key in m:
                rows.append({**base, "metric": key, "value": m[key], "se": m.get(f"{key}_se")})
        if p.get("pareto") is not None:
            rows.append({**base, "metric": "pareto", "value": float(p["pareto"])})
    for s in summary.get("sxs", []):
        p = info[s["point"]]
        base = {"section": "sxs", "point": s["point"], "kind": p["kind"], "iteration": p["iteration"], "run": p["run"],
                "step": p["step"], "eta": p["eta"], "opponent": s["opponent"], "judge": s["judge"]}
        rows.append({**base, "metric": "win_rate", "value": s["win_rate"], "lo": s["win_rate_lo"], "hi": s["win_rate_hi"]})
        rows.append({**base, "metric": "sxs_score", "value": s["sxs_score"], "lo": s["sxs_score_lo"], "hi": s["sxs_score_hi"]})
        for k in ("wins", "ties", "losses"):
            rows.append({**base, "metric": k, "value": s[k]})
    for b in summary.get("bench", []):
        p = info[b["point"]]
        rows.append({"section": "bench", "point": b["point"], "kind": p["kind"], "iteration": p["iteration"],
                     "run": p["run"], "step": p["step"], "eta": p["eta"], "opponent": b["task"],
                     "metric": b["metric"], "value": b["value"], "se": b.get("se")})
    return pd.DataFrame(rows, columns=COLUMNS)


def score_table(df: pd.DataFrame) -> pd.DataFrame:
    """Wide table of the score section: one row per point, columns metric and metric_se."""
    s = df[df.section == "score"]
    if s.empty:
        return pd.DataFrame(columns=POINT_KEYS)
    keys = s[POINT_KEYS].drop_duplicates("point").set_index("point")
    val = s.pivot_table(index="point", columns="metric", values="value", aggfunc="first", dropna=False)
    se = s.pivot_table(index="point", columns="metric", values="se", aggfunc="first", dropna=False).add_suffix("_se")
    wide = keys.join(val).join(se).reset_index()
    for col in ("iteration", "run", "step"):
        wide[col] = pd.to_numeric(wide[col], errors="coerce").astype("Int64")
    wide["eta"] = pd.to_numeric(wide["eta"], errors="coerce")
    order = {name: i for i, name in enumerate(s.point.drop_duplicates())}
    return wide.sort_values("point", key=lambda c: c.map(order)).reset_index(drop=True)


def front_table(wide: pd.DataFrame, iteration: int) -> pd.DataFrame:
    """The LITI front of one iteration (η ascending) with its Pareto mask (`pareto`) and the rule that
    made it (`pareto_rule`: 'paired' from eval.json, else 'unpaired' from the means and s.e.)."""
    f = wide[(wide.kind == "liti") & (wide.iteration == iteration)].sort_values("eta").copy()
    if "pareto" in f and len(f) and f["pareto"].notna().all():
        f["pareto"], f["pareto_rule"] = f["pareto"].astype(bool), "paired"
    else:
        cols = [f[c].tolist() if c in f else [None] * len(f) for c in ("kl", "reward", "kl_se", "reward_se")]
        f["pareto"], f["pareto_rule"] = (pareto_front_unpaired(*cols) if len(f) else []), "unpaired"
    return f


def sampling_temperature(meta: dict | None) -> float | None:
    t = ((meta or {}).get("task") or {}).get("generation", {}).get("temperature")
    return t if isinstance(t, (int, float)) else None


def kl_definition(meta: dict) -> str:
    """The KL every table and plot reports, with the temperature of the eval summary."""
    t = sampling_temperature(meta)
    temp = f"{t:g}" if t is not None else "? (not recorded)"
    return (f"KL(π^T‖π_sft^T), the KL between the tempered sampling distributions at T = {temp} (logits/T), "
            "k1 and k3 Monte Carlo estimates over sampled completions")


def engine_sentence(meta: dict) -> str:
    """Which engine sampled what: the scored completions (per point when they differ) and the RL rollouts."""
    st = meta.get("settings") or {}
    engine = st.get("engine") or "hf (not recorded)"
    name = {"vllm": "vLLM", "hf": "transformers `generate`"}.get(engine, engine)
    dtype = f" ({st['engine_dtype']} weights)" if st.get("engine_dtype") else ""
    text = f"Sampling engine: the scored completions were sampled by {name}{dtype}"
    others = sorted(p for p, e in (meta.get("point_engines") or {}).items() if e and e != engine)
    if others:
        text += f", except {', '.join(others)} (transformers: another architecture than the run's)"
    rollout = ((meta.get("config") or {}).get("engine") or {}).get("name")
    if rollout:
        text += f"; the RL rollouts by {({'vllm': 'vLLM', 'hf': 'transformers'}).get(rollout, rollout)}"
    return text + "."


def _fmt(v, se=None, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    text = f"{v:.{digits}f}"
    if se is not None and not (isinstance(se, float) and math.isnan(se)):
        text += f" ± {se:.{digits}f}"
    return text


def _md(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _score_rows(t: pd.DataFrame, first: str) -> list[list[str]]:
    return [[r[first] if first != "eta" else f"{r['eta']:g}", _fmt(r.get("kl"), r.get("kl_se")), _fmt(r.get("kl_k3"), r.get("kl_k3_se")),
             _fmt(r.get("reward"), r.get("reward_se")), _fmt(r.get("control_reward"), r.get("control_reward_se")),
             _fmt(r.get("length"), r.get("length_se"), 1), _fmt(r.get("unfinished"), None, 2),
             _fmt(r.get("distinct_1"), None, 2), _fmt(r.get("distinct_2"), None, 2)] for _, r in t.iterrows()]


SCORE_HEADER = ["KL k1 (nats)", "KL k3", "proxy reward", "control reward", "length", "unfinished", "distinct-1", "distinct-2"]


def sxs_table(df: pd.DataFrame, opponent: str = "sft") -> pd.DataFrame:
    """Win rate and graded score (with 95% intervals) of every point against `opponent`, per judge."""
    s = df[(df.section == "sxs") & (df.opponent == opponent)]
    if s.empty:
        return pd.DataFrame(columns=["point", "judge", "win_rate", "win_rate_lo", "win_rate_hi", "sxs_score", "sxs_score_lo", "sxs_score_hi"])
    parts = []
    for metric in ("win_rate", "sxs_score"):
        m = s[s.metric == metric][["point", "kind", "judge", "value", "lo", "hi"]].rename(
            columns={"value": metric, "lo": f"{metric}_lo", "hi": f"{metric}_hi"})
        parts.append(m.set_index(["point", "kind", "judge"]))
    return parts[0].join(parts[1]).reset_index()


def render_markdown(df: pd.DataFrame, meta: dict, plots: Sequence[str]) -> str:
    wide = score_table(df)
    out = [f"# WARP evaluation: {meta.get('title', 'report')}\n"]
    st = meta.get("settings", {})
    out.append(f"Run: `{meta.get('run_dir', '?')}`. Held-out prompts: {st.get('n_prompts', '?')} "
               f"(split `{meta.get('task', {}).get('split', 'test')}`), sampling seed {st.get('seed', '?')}, "
               f"generation {json.dumps(meta.get('task', {}).get('generation', {}))}. Proxy reward "
               f"`{meta.get('task', {}).get('reward_model', '?')}`, control reward `{meta.get('task', {}).get('control_reward', '?')}`.\n")
    out.append(f"KL: {kl_definition(meta)} (k1: Σ_t log π^T/π_sft^T; k3: Σ_t (r−1) − log r with "
               "r = π_sft^T/π^T). Values are mean ± s.e. over prompts.\n")
    out.append(engine_sentence(meta) + "\n")
    out.append("## Pareto fronts (LITI, per iteration)\n")
    iterations = sorted(int(i) for i in wide.loc[wide.kind == "liti", "iteration"].dropna().unique()) if len(wide) else []
    fronts = [front_table(wide, i) for i in iterations]
    for rule in sorted({r for f in fronts for r in f["pareto_rule"]}):
        out.append(PARETO_RULES[rule] + "\n")
    for i, f in zip(iterations, fronts):
        rows = _score_rows(f, "eta")
        for row, on in zip(rows, f["pareto"]):
            row.append("✓" if on else "")
        out.append(f"### Iteration {i}: (1−η)·θ_sft + η·θ_slerp_{i}\n")
        out.append(_md(["η", *SCORE_HEADER, "Pareto"], rows))
    other = wide[wide.kind != "liti"]
    if len(other):
        out.append("## SFT, REINFORCE checkpoints, saved LITI checkpoints, baselines\n")
        out.append(_md(["point", *SCORE_HEADER], _score_rows(other, "point")))
    lb = sxs_table(df, "sft")
    if len(lb):
        out.append("## Side-by-side leaderboard against SFT\n")
        out.append(f"Judge P(A≻B): proxy = Bradley–Terry σ(r_A − r_B) on the reward model's logit; control = "
                   f"σ({st.get('vader_scale', 4)}·(VADER_A − VADER_B)). Tie: |P − 0.5| < {st.get('tie_band', 0.05)} "
                   "(counted ½). Graded score per prompt: P ≥ 0.85 → +1.5, ≥ 0.70 → +1, ≥ 0.55 → +0.5, "
                   "tie band → 0, mirrored below 0.5. Intervals: seeded percentile bootstrap 95% over prompts.\n")
        piv = {}
        for _, r in lb.iterrows():
            piv.setdefault(r["point"], {})[r["judge"]] = r
        order = sorted(piv, key=lambda p: -(piv[p].get("proxy", {}).get("win_rate", float("nan")) if "proxy" in piv[p] else -1))
        rows = []
        for p in order:
            cells = [p]
            for judge in ("proxy", "control"):
                r = piv[p].get(judge)
                cells += ["–", "–"] if r is None else [
                    f"{r['win_rate']:.3f} [{r['win_rate_lo']:.3f}, {r['win_rate_hi']:.3f}]",
                    f"{r['sxs_score']:+.2f} [{r['sxs_score_lo']:+.2f}, {r['sxs_score_hi']:+.2f}]"]
            rows.append(cells)
        out.append(_md(["point", "win rate (proxy judge)", "graded score (proxy)", "win rate (control judge)",
                        "graded score (control)"], rows))
        others = sorted(o for o in df.loc[df.section == "sxs", "opponent"].dropna().unique() if o != "sft")
        if others:
            out.append(f"Win rates against the other baselines ({', '.join(others)}) are in `metrics.csv` "
                       "(section `sxs`).\n")
    b = df[df.section == "bench"]
    if len(b):
        out.append("## Benchmarks (lm-eval)\n")
        tab = b.pivot_table(index="point", columns=["opponent", "metric"], values="value", aggfunc="first", sort=False)
        tab_se = b.pivot_table(index="point", columns=["opponent", "metric"], values="se", aggfunc="first", sort=False)
        cols = list(tab.columns)
        rows = [[pt] + [_fmt(tab.loc[pt, c], tab_se.loc[pt, c] if c in tab_se.columns else None) for c in cols] for pt in tab.index]
        out.append(_md(["point"] + [f"{t} {m}" for t, m in cols], rows))
        out.append(f"Limit per task: {st.get('limit') or 'all documents'}.\n")
    if plots:
        out.append("## Plots\n")
        out += [f"![{p}]({p})\n" for p in plots]
    out.append("## Run config\n")
    out.append("```json\n" + json.dumps(meta.get("config", {}), indent=2) + "\n```\n")
    return "\n".join(out)


def render_plots(df: pd.DataFrame, out: Path, meta: dict | None = None) -> list[str]:
    """Seaborn PNGs from the tidy frame; returns the file names written. In pareto.png the bars are
    95% intervals (mean ± 1.96 s.e.) and the points with the report's Pareto ✓ are ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    wide = score_table(df)
    written = []
    if len(wide) and wide["kl"].notna().any():
        fig, ax = plt.subplots(figsize=(7, 5))
        liti = wide[wide.kind == "liti"].sort_values(["iteration", "eta"])
        palette = sns.color_palette("viridis", max(1, liti.iteration.nunique()))
        for k, (color, (i, f)) in enumerate(zip(palette, liti.groupby("iteration"))):
            ax.errorbar(f.kl, f.reward, xerr=Z95 * f.kl_se, yerr=Z95 * f.reward_se, color=color, marker="o", lw=2,
                        capsize=2, label=f"LITI front, iteration {int(i)}")
            on = front_table(wide, int(i))
            on = on[on.pareto]
            ax.scatter(on.kl, on.reward, s=160, facecolors="none", edgecolors=color, linewidths=1.5, zorder=6,
                       label="on the Pareto front beyond noise (✓ in report.md)" if k == 0 else None)
            for _, r in f.iterrows():
                ax.annotate(f"η={r.eta:g}", (r.kl, r.reward), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
        runs = wide[wide.kind == "run"].sort_values(["iteration", "run", "step"])
        sft = wide[wide.kind == "sft"]
        iter_color = {i: c for c, i in zip(palette, sorted(liti.iteration.unique()))}
        for k, ((i, m), f) in enumerate(runs.groupby(["iteration", "run"])):
            ax.errorbar(f.kl, f.reward, xerr=Z95 * f.kl_se, yerr=Z95 * f.reward_se, ls="--", marker="x", alpha=0.8, capsize=2,
                        color=iter_color.get(i, "gray"), label="REINFORCE checkpoints, one line per run" if k == 0 else None)
            last = f.iloc[-1]
            ax.annotate(f"it{int(i)} run{int(m)}", (last.kl, last.reward), textcoords="offset points", xytext=(4, -10 * int(m)),
                        fontsize=7, color="dimgray")
        if len(sft):
            ax.scatter(sft.kl, sft.reward, marker="*", s=200, color="black", zorder=5, label="SFT")
        saved = wide[wide.kind == "liti_ckpt"]
        if len(saved):
            ax.scatter(saved.kl, saved.reward, marker="D", s=45, color="tab:orange", zorder=5,
                       label="saved LITI checkpoints (next iteration's init)")
        base = wide[(wide.kind == "baseline") & wide.kl.notna()]
        if len(base):
            ax.scatter(base.kl, base.reward, marker="s", s=50, color="tab:red", zorder=5, label="baselines")
        t = sampling_temperature(meta)
        ax.set_xlabel(r"KL($\pi^T \,\|\, \pi_\mathrm{sft}^T$)" + (f" at T = {t:g}" if t is not None else "") + ", nats "
                      "(k1; bars: 95% intervals)")
        ax.set_ylabel("proxy reward (bars: 95% intervals)")
        ax.set_title("KL–reward Pareto fronts (LITI) and REINFORCE trajectories")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "pareto.png", dpi=120)
        plt.close(fig)
        written.append("pareto.png")
    liti = wide[wide.kind == "liti"] if len(wide) else wide
    if len(liti):
        long = pd.concat([liti.assign(reward_kind="proxy reward", y=liti.reward, yse=liti.reward_se),
                          liti.assign(reward_kind="control reward (VADER)", y=liti.control_reward, yse=liti.control_reward_se)])
        g = sns.FacetGrid(long, col="reward_kind", hue="iteration", sharey=False, height=3.6, aspect=1.2, palette="viridis")
        g.map(plt.errorbar, "eta", "y", "yse", marker="o", capsize=2)
        g.set_axis_labels("η (LITI: (1−η)·θ_sft + η·θ_slerp)", "mean ± s.e.")
        g.set_titles("{col_name} vs η")
        g.add_legend(title="iteration")
        g.savefig(out / "reward_vs_eta.png", dpi=120)
        plt.close(g.figure)
        written.append("reward_vs_eta.png")
    if len(wide):
        fig, ax = plt.subplots(figsize=(6, 5))
        sns.scatterplot(data=wide, x="reward", y="control_reward", hue="kind", style="kind", s=70, ax=ax)
        ax.errorbar(wide.reward, wide.control_reward, xerr=wide.reward_se, yerr=wide.control_reward_se, fmt="none",
                    ecolor="gray", alpha=0.4)
        ax.set_xlabel("proxy reward (optimised)")
        ax.set_ylabel("control reward (VADER, never optimised)")
        ax.set_title("Proxy vs control reward\n(reward hacking: proxy ↑ while control ↓)", fontsize=11)
        fig.tight_layout()
        fig.savefig(out / "proxy_vs_control.png", dpi=120)
        plt.close(fig)
        written.append("proxy_vs_control.png")
    lb = sxs_table(df, "sft")
    lb = lb[lb.judge == "proxy"].sort_values("win_rate") if len(lb) else lb
    if len(lb):
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(lb) + 1.5))
        y = range(len(lb))
        # a percentile interval need not contain the mean on a skewed sample: clip the bars at the point
        xerr = [(lb.win_rate - lb.win_rate_lo).clip(lower=0), (lb.win_rate_hi - lb.win_rate).clip(lower=0)]
        ax.errorbar(lb.win_rate, list(y), xerr=xerr,
                    fmt="o", capsize=3, color="tab:blue")
        ax.set_yticks(list(y), lb.point.tolist(), fontsize=8)
        ax.axvline(0.5, color="gray", ls=":")
        ax.set_xlim(0, 1)
        ax.set_xlabel("win rate vs SFT (proxy judge), bootstrap 95% interval")
        ax.set_title("Side-by-side leaderboard")
        fig.tight_layout()
        fig.savefig(out / "leaderboard.png", dpi=120)
        plt.close(fig)
        written.append("leaderboard.png")
    return written


def render_report(df: pd.DataFrame, meta: dict, out: str | Path, overwrite: bool = False) -> Path:
    """Write metrics.csv, report.md, meta.json and the PNGs into `out`, atomically."""
    out = Path(out)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        df.to_csv(tmp / "metrics.csv", index=False)
        plots = render_plots(df, tmp, meta)
        (tmp / "report.md").write_text(render_markdown(df, meta, plots), encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


_NUM = (int, float, type(None))          # eval.json writes NaN as null
_OPT_INT = (int, type(None))
SUMMARY_ROWS = {   # list key of eval.json -> the keys of each of its objects and their JSON types
    "points": {"name": str, "kind": str, "iteration": _OPT_INT, "run": _OPT_INT, "step": _OPT_INT, "eta": _NUM,
               "metrics": dict},
    "sxs": {"point": str, "opponent": str, "judge": str,
            **{k: _NUM for k in ("win_rate", "win_rate_lo", "win_rate_hi", "sxs_score", "sxs_score_lo", "sxs_score_hi",
                                 "wins", "ties", "losses")}},
    "bench": {"point": str, "task": str, "metric": str, "value": _NUM},
}
_TYPE_NAMES = {str: "a string", dict: "an object", list: "a list", int: "an integer", float: "a number",
               type(None): "null", bool: "true or false"}


def _check_type(value, types, file: Path, key: str) -> None:
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = " or ".join(dict.fromkeys(_TYPE_NAMES[t] for t in types))
        raise HarnessError(f"{file}: {key}: expected {expected}, got {json.dumps(value)[:60]}")


def check_summary(summary, file: Path) -> None:
    """Validate an eval.json (as `warp eval` writes it): HarnessError naming the file and the key."""
    _check_type(summary, dict, file, "top level")
    for key in ("config", "task", "settings"):
        if key in summary:
            _check_type(summary[key], dict, file, key)
    if "generation" in summary.get("task", {}):
        _check_type(summary["task"]["generation"], dict, file, "task.generation")
    if "points" not in summary:
        raise HarnessError(f"{file}: points: missing (not an eval.json written by `warp eval`)")
    for list_key, fields in SUMMARY_ROWS.items():
        rows = summary.get(list_key, [])
        _check_type(rows, list, file, list_key)
        for i, row in enumerate(rows):
            where = f"{list_key}[{i}]"
            _check_type(row, dict, file, where)
            for key, types in fields.items():
                if key not in row:
                    raise HarnessError(f"{file}: {where}.{key}: missing")
                _check_type(row[key], types, file, f"{where}.{key}")
    names = set()
    for i, point in enumerate(summary["points"]):
        for key, value in point["metrics"].items():
            _check_type(value, _NUM, file, f"points[{i}].metrics.{key}")
        _check_type(point.get("pareto"), (bool, type(None)), file, f"points[{i}].pareto")
        names.add(point["name"])
    for list_key in ("sxs", "bench"):
        for i, row in enumerate(summary.get(list_key, [])):
            if row["point"] not in names:
                raise HarnessError(f"{file}: {list_key}[{i}].point: {row['point']!r} is not one of the points")


def write_report(eval_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """`warp report EVAL_DIR --out results/NAME`."""
    path = Path(eval_dir) / "eval.json"
    if not Path(eval_dir).is_dir():
        raise HarnessError(f"{eval_dir}: no such eval directory (run `warp eval` first)")
    if not path.is_file():
        raise HarnessError(f"{path}: no eval.json (run `warp eval` first)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HarnessError(f"{path}: invalid JSON ({getattr(e, 'msg', None) or e.reason})") from None
    check_summary(summary, path)
    meta = {k: summary[k] for k in ("run_dir", "config", "task", "settings") if k in summary}
    meta["point_engines"] = {p["name"]: p.get("engine") for p in summary.get("points", [])}
    meta["title"] = Path(out).name
    return render_report(tidy_frame(summary), meta, out, overwrite=overwrite)


def leaderboard(reports: Sequence[str | Path], opponent: str = "sft", judge: str = "proxy") -> str:
    """One markdown table over several reports: per report and point kind, the point with the best
    win rate against `opponent`, with its interval, graded score, reward and KL."""
    rows = []
    for rep in reports:
        csv = Path(rep) / "metrics.csv"
        if not csv.is_file():
            raise HarnessError(f"{csv}: not a report directory (no metrics.csv)")
        try:
            df = pd.read_csv(csv)
        except ValueError as e:   # pandas' empty-file and parser errors, a non-UTF-8 file
            raise HarnessError(f"{csv}: not a readable CSV ({(str(e).strip().splitlines() or [type(e).__name__])[0]})") from None
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise HarnessError(f"{csv}: missing column(s) {', '.join(missing)} (not a metrics.csv written by `warp report`)")
        lb = sxs_table(df, opponent)
        lb = lb[lb.judge == judge]
        wide = score_table(df).set_index("point")
        for kind, g in lb.groupby("kind", sort=False):
            best = g.sort_values("win_rate", ascending=False).iloc[0]
            w = wide.loc[best.point] if best.point in wide.index else {}
            rows.append((best.win_rate, [Path(rep).name, best.point, kind,
                                         f"{best.win_rate:.3f} [{best.win_rate_lo:.3f}, {best.win_rate_hi:.3f}]",
                                         f"{best.sxs_score:+.2f} [{best.sxs_score_lo:+.2f}, {best.sxs_score_hi:+.2f}]",
                                         _fmt(w.get("reward"), w.get("reward_se")), _fmt(w.get("kl"), w.get("kl_se"))]))
    rows.sort(key=lambda r: -r[0])
    header = ["report", "point", "kind", f"win rate vs {opponent} ({judge} judge, 95% CI)", "graded score", "proxy reward", "KL"]
    return _md(header, [r for _, r in rows])
