"""Bad inputs to `warp eval`, `warp report` and `warp leaderboard`: a non-zero exit, exactly one
line on stderr naming what is wrong (no traceback), and nothing half-written: the output directory
is untouched (or still absent) and no temporary is left beside it."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from merge.io import DirectoryLock
from tests.harness.rundir import build_run_dir


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    run = build_run_dir(root / "run", iterations=1, runs=1, steps=(10,))
    assert main(["eval", str(run), "--out", str(root / "eval"), "--etas", "0,1", "--prompts", "2"]) == 0
    assert main(["report", str(root / "eval"), "--out", str(root / "rep")]) == 0
    return root


class Ctx:
    """Fresh copies of the module's run dir, eval dir and report, made on first use."""

    def __init__(self, base: Path, tmp: Path) -> None:
        self.base, self.tmp = base, tmp

    @functools.cached_property
    def run(self) -> Path:
        return Path(shutil.copytree(self.base / "run", self.tmp / "run"))

    @functools.cached_property
    def ev(self) -> Path:
        return Path(shutil.copytree(self.base / "eval", self.tmp / "eval"))

    @functools.cached_property
    def rep(self) -> Path:
        return Path(shutil.copytree(self.base / "rep", self.tmp / "rep"))

    def manifest(self, fn) -> Path:
        data = json.loads((self.run / "manifest.json").read_text())
        fn(data)
        (self.run / "manifest.json").write_text(json.dumps(data))
        return self.run

    def summary(self, fn) -> Path:
        data = json.loads((self.ev / "eval.json").read_text())
        fn(data)
        (self.ev / "eval.json").write_text(json.dumps(data))
        return self.ev

    def eval(self, *options: str, run: Path | None = None, out: Path | None = None) -> list[str]:
        return ["eval", str(run or self.run), "--out", str(out or self.ev), "--prompts", "2", *options]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def eval_dir_in_use(c: Ctx) -> list[str]:
    c.lock = DirectoryLock(c.ev, "warp eval").acquire()   # released by the test
    return c.eval()


def a_copy_of_the_eval_dir_with(c: Ctx, rel: str, text: str) -> Path:
    (c.ev / rel).write_text(text)
    return c.ev


CASES = {
    # id: (argv built from the context, text the error line must contain)
    "eval: missing run dir": (lambda c: c.eval(run=c.tmp / "nope"), "does not exist"),
    "eval: run dir without manifest": (lambda c: c.eval(run=Path(shutil.copytree(c.base / "run" / "prompts", c.tmp / "x"))),
                                       "no manifest.json"),
    "eval: corrupt manifest JSON": (lambda c: ((c.run / "manifest.json").write_text("{oops"), c.eval())[1],
                                    "cannot read JSON"),
    "eval: manifest of wrong types": (lambda c: (c.manifest(lambda d: d["checkpoints"][1].update(iteration="one")),
                                                 c.eval())[1], "checkpoints[1].iteration"),
    "eval: unknown role": (lambda c: (c.manifest(lambda d: d["checkpoints"][1].update(role="teacher")), c.eval())[1],
                           "'teacher'"),
    "eval: missing checkpoint dir": (lambda c: (shutil.rmtree(c.run / "iter1" / "run1" / "step_000010"), c.eval())[1],
                                     "step_000010"),
    "eval: checkpoint without weights": (lambda c: ((c.run / "iter1" / "liti" / "model.safetensors").unlink(), c.eval())[1],
                                         "no *.safetensors weights"),
    "eval: truncated safetensors": (lambda c: (truncate(c.run / "iter1" / "run1" / "step_000010" / "model.safetensors"),
                                               c.eval())[1], "step_000010/model.safetensors: unreadable safetensors"),
    "eval: garbage sft weights": (lambda c: ((c.run / "sft" / "model.safetensors").write_bytes(b"\x00" * 64), c.eval())[1],
                                  "sft/model.safetensors: unreadable safetensors"),
    "eval: corrupt reward model": (lambda c: (truncate(c.run / "rm" / "model.safetensors"), c.eval())[1],
                                   "reward model"),
    "eval: prompt file missing": (lambda c: ((c.run / "prompts" / "test.jsonl").unlink(), c.eval())[1], "test.jsonl"),
    "eval: invalid JSON line in prompts": (lambda c: ((c.run / "prompts" / "test.jsonl").write_text('{"prompt": "a"}\n{oops\n'),
                                                      c.eval())[1], "test.jsonl:2"),
    "eval: eta out of range": (lambda c: c.eval("--etas", "0,1.5"), "1.5"),
    "eval: eta not a number": (lambda c: c.eval("--etas", "0,abc"), "'abc'"),
    "eval: no eta": (lambda c: c.eval("--etas", ""), "--etas"),
    "eval: unknown task": (lambda c: c.eval("--tasks", "not_a_task"), "not_a_task"),
    "eval: bad --bench-on": (lambda c: c.eval("--tasks", "synth_gsm8k", "--bench-on", "iter9/eta=1"), "iter9/eta=1"),
    "eval: unloadable baseline": (lambda c: c.eval("--baseline", "no/such-model-anywhere"), "no/such-model-anywhere"),
    "eval: baseline with corrupt weights": (lambda c: (truncate(Path(shutil.copytree(c.base / "run" / "iter1" / "liti",
                                                                                     c.tmp / "other")) / "model.safetensors"),
                                                       c.eval("--baseline", str(c.tmp / "other")))[1],
                                            "--baseline"),
    "eval: --limit -1": (lambda c: c.eval("--limit", "-1", "--tasks", "synth_gsm8k"), "--limit"),
    "eval: --limit 0": (lambda c: c.eval("--limit", "0"), "--limit"),
    "eval: --prompts 0": (lambda c: c.eval("--prompts", "0"), "--prompts"),
    "eval: --batch-size 0": (lambda c: c.eval("--batch-size", "0"), "--batch-size"),
    "eval: --num-fewshot -1": (lambda c: c.eval("--num-fewshot", "-1"), "--num-fewshot"),
    "eval: --max-gen-toks 0": (lambda c: c.eval("--max-gen-toks", "0"), "--max-gen-toks"),
    "eval: --threads 0": (lambda c: c.eval("--threads", "0"), "--threads"),
    "eval: --seed -1": (lambda c: c.eval("--seed", "-1"), "--seed"),
    "eval: unknown split": (lambda c: c.eval("--split", "nope"), "'nope'"),
    "eval: bad device": (lambda c: c.eval("--device", "tpu"), "--device"),
    "eval: eval dir in use": (eval_dir_in_use, "in use by another warp eval"),
    "eval: --out is a file": (lambda c: ((c.tmp / "file").write_text("x"), c.eval(out=c.tmp / "file"))[1],
                              "not a directory"),
    "report: missing eval dir": (lambda c: ["report", str(c.tmp / "nope"), "--out", str(c.tmp / "r")], "no such eval directory"),
    "report: corrupt eval.json": (lambda c: ["report", str(a_copy_of_the_eval_dir_with(c, "eval.json", '{"points": [')),
                                            "--out", str(c.tmp / "r")], "eval.json: invalid JSON"),
    "report: eval.json without points": (lambda c: ["report", str(c.summary(lambda d: d.pop("points"))),
                                                    "--out", str(c.tmp / "r")], "eval.json: points: missing"),
    "report: points not a list": (lambda c: ["report", str(c.summary(lambda d: d.update(points={}))),
                                             "--out", str(c.tmp / "r")], "eval.json: points: expected a list"),
    "report: a point's metrics of the wrong type": (
        lambda c: ["report", str(c.summary(lambda d: d["points"][1].update(metrics=[1]))), "--out", str(c.tmp / "r")],
        "eval.json: points[1].metrics: expected an object"),
    "report: a metric that is not a number": (
        lambda c: ["report", str(c.summary(lambda d: d["points"][0]["metrics"].update(kl="low"))), "--out", str(c.tmp / "r")],
        "eval.json: points[0].metrics.kl: expected"),
    "report: side-by-side row of an unknown point": (
        lambda c: ["report", str(c.summary(lambda d: d["sxs"][0].update(point="ghost"))), "--out", str(c.tmp / "r")],
        "eval.json: sxs[0].point: 'ghost'"),
    "report: --out exists without --overwrite": (lambda c: ["report", str(c.ev), "--out", str(c.rep)], "already exists"),
    "leaderboard: not a report directory": (lambda c: ["leaderboard", str(c.ev)], "metrics.csv"),
    "leaderboard: empty metrics.csv": (lambda c: ((c.rep / "metrics.csv").write_text(""), ["leaderboard", str(c.rep)])[1],
                                       "not a readable CSV"),
    "leaderboard: a CSV from elsewhere": (lambda c: ((c.rep / "metrics.csv").write_text("a,b\n1,2\n"),
                                                     ["leaderboard", str(c.rep)])[1], "missing column(s) section"),
}


def state(folder: Path) -> dict | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(base, tmp_path, capsys, case):
    build, message = CASES[case]
    c = Ctx(base, tmp_path)
    argv = build(c)
    outputs = [Path(argv[argv.index("--out") + 1])] if "--out" in argv else []
    before = {p: state(p) for p in outputs}
    capsys.readouterr()
    try:
        code = main(argv)
    finally:
        if hasattr(c, "lock"):
            c.lock.release()
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"warp {argv[0]}: error: ") and message in err, err
    assert {p: state(p) for p in outputs} == before                       # untouched, or still absent
    assert [p for p in tmp_path.rglob("*") if ".tmp-" in p.name or ".old-" in p.name] == []
