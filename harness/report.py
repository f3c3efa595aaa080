"""`warp report` and `warp leaderboard`: data frames in, markdown tables and seaborn plots out.

`tidy_frame(eval_summary)` turns EVAL_DIR/eval.json into one tidy frame (one row per point and
metric; side-by-side and benchmark results are rows too, with section = score | sxs | bench).
Everything else here renders that frame: tables and plots read values, they never compute them
(the Pareto mask is taken by `metrics.pareto_front` on the table before plotting).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from merge.io import atomic_directory, atomic_write_text

from .manifest import HarnessError
from .metrics import pareto_front

COLUMNS = ["section", "point", "kind", "iteration", "run", "step", "eta", "opponent", "judge", "metric",
           "value", "se", "lo", "hi"]
SCORE_METRICS = ["kl", "kl_k3", "reward", "control_reward", "length", "unfinished", "distinct_1", "distinct_2"]
POINT_KEYS = ["point", "kind", "iteration", "run", "step", "eta"]


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
    """The LITI front of one iteration (η ascending) with its Pareto mask over (KL, reward)."""
    f = wide[(wide.kind == "liti") & (wide.iteration == iteration)].sort_values("eta").copy()
    f["pareto"] = pareto_front(f["kl"].tolist(), f["reward"].tolist()) if len(f) else []
    return f


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
    out.append("KL(π‖π_sft) is a Monte Carlo estimate over the sampled completions (k1: Σ_t log π/π_sft; "
               "k3: Σ_t (r−1) − log r with r = π_sft/π), both at the sampling temperature; values are mean ± s.e. "
               "over prompts.\n")
    out.append("## Pareto fronts (LITI, per iteration)\n")
    iterations = sorted(int(i) for i in wide.loc[wide.kind == "liti", "iteration"].dropna().unique()) if len(wide) else []
    for i in iterations:
        f = front_table(wide, i)
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


def render_plots(df: pd.DataFrame, out: Path) -> list[str]:
    """Seaborn PNGs from the tidy frame; returns the file names written."""
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
        for color, (i, f) in zip(palette, liti.groupby("iteration")):
            ax.errorbar(f.kl, f.reward, xerr=f.kl_se, yerr=f.reward_se, color=color, marker="o", lw=2,
                        capsize=2, label=f"LITI front, iteration {int(i)}")
            for _, r in f.iterrows():
                ax.annotate(f"η={r.eta:g}", (r.kl, r.reward), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
        runs = wide[wide.kind == "run"].sort_values(["iteration", "run", "step"])
        sft = wide[wide.kind == "sft"]
        iter_color = {i: c for c, i in zip(palette, sorted(liti.iteration.unique()))}
        for k, ((i, m), f) in enumerate(runs.groupby(["iteration", "run"])):
            ax.errorbar(f.kl, f.reward, xerr=f.kl_se, yerr=f.reward_se, ls="--", marker="x", alpha=0.8, capsize=2,
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
        ax.set_xlabel("KL(π ‖ π_sft), nats (k1, mean ± s.e.)")
        ax.set_ylabel("proxy reward (mean ± s.e.)")
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
        plots = render_plots(df, tmp)
        (tmp / "report.md").write_text(render_markdown(df, meta, plots), encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def write_report(eval_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """`warp report EVAL_DIR --out results/NAME`."""
    path = Path(eval_dir) / "eval.json"
    if not path.is_file():
        raise HarnessError(f"{path}: no eval.json (run `warp eval` first)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise HarnessError(f"{path}: invalid JSON ({e.msg})") from None
    meta = {k: summary.get(k) for k in ("run_dir", "config", "task", "settings")}
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
        df = pd.read_csv(csv)
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
