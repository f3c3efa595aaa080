"""Bad input to `warp run` and `warp train-rm`: exit 2, one line on stderr naming what is wrong
(no traceback), and nothing written or changed."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from harness.cli import main
from tests.tiny import save, tiny_causal_lm


def _snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _set(d: dict, dotted: str, value) -> dict:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    if value is _DROP:
        d.pop(leaf, None)
    else:
        d[leaf] = value
    return d


_DROP = object()


def _nan_policy(tmp):
    m, t = tiny_causal_lm(0)
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    return str(save(m, t, tmp / "nan-lm"))


def _no_config_dir(tmp):
    (tmp / "empty-model").mkdir()
    return str(tmp / "empty-model")


RUN_CASES = {
    # id: (config edits {dotted key: value} or a callable(tmp) -> config text, expected words in the message)
    "unknown key": ({"learning_rate": 1e-3}, "unknown key 'learning_rate'"),
    "unknown nested key": ({"reinforce.lrr": 1e-3}, "unknown key 'lrr'"),
    "wrong type": ({"warp.steps": "ten"}, "warp.steps"),
    "bool for int": ({"warp.steps": True}, "warp.steps"),
    "negative beta": ({"reinforce.beta": -0.1}, "reinforce.beta must be ≥ 0"),
    "mu above 1": ({"reinforce.mu": 1.5}, "reinforce.mu must be in [0, 1]"),
    "eta above 1": ({"warp.eta": 1.2}, "warp.eta must be in [0, 1]"),
    "lam out of range": ({"warp.lam": -0.5}, "warp.lam must be in [0, 1]"),
    "lam with three runs": ({"warp.runs": 3, "warp.lam": 0.5}, "warp.lam applies to runs = 2"),
    "merge with one run": ({"warp.runs": 1}, "warp.merge needs runs ≥ 2"),
    "zero steps": ({"warp.steps": 0}, "warp.steps must be ≥ 1"),
    "temperature 0": ({"generation.temperature": 0}, "generation.temperature must be > 0"),
    "top_p above 1": ({"generation.top_p": 1.5}, "generation.top_p"),
    "rloo with one sample": ({"reinforce.baseline": "rloo"}, "rloo"),
    "unknown anchor": ({"reinforce.anchor": "both"}, "reinforce.anchor"),
    "unknown dtype": ({"dtype": "float16"}, "dtype"),
    "zero threads": ({"threads": 0}, "threads must be ≥ 1"),
    "lr as text": ({"reinforce.lr": "fast"}, "reinforce.lr"),
    "unknown policy alias": ({"policy": "no-such-model"}, "no-such-model"),
    "policy dir missing": ({"policy": "./nowhere/model"}, "does not exist"),
    "policy dir without config": ({"policy": _no_config_dir}, "not a Hugging Face model directory"),
    "policy with NaN weights": ({"policy": _nan_policy}, "NaN/Inf"),
    "reward model dir missing": ({"reward_model": "./nowhere/rm"}, "does not exist"),
    "unknown builtin reward model": ({"reward_model": "rm:nope"}, "unknown reward model 'rm:nope'"),
    "dataset file missing": ({"data.dataset": "./nowhere.csv"}, "does not exist"),
    "dataset without the column": ({"data.text_column": "body"}, "has no column 'body'"),
    "config is a list": (lambda tmp: "- 1\n- 2\n", "expected a mapping"),
    "config is not YAML": (lambda tmp: "policy: [unclosed\n", "invalid YAML"),
}


@pytest.mark.parametrize("case", list(RUN_CASES), ids=list(RUN_CASES))
def test_warp_run_bad_config(case, tiny_rl_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WARP_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    edits, words = RUN_CASES[case]
    cfg = tmp_path / "c.yaml"
    mapping = tiny_rl_config(warp={"iterations": 1, "steps": 1})
    if callable(edits):
        cfg.write_text(edits(tmp_path))
    else:
        for key, value in edits.items():
            _set(mapping, key, value(tmp_path) if callable(value) else value)
        cfg.write_text(yaml.safe_dump(mapping))
    capsys.readouterr()
    before = _snapshot(tmp_path)
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "Traceback" not in err[0], err
    assert _snapshot(tmp_path) == before


def _out_is_a_file(tmp, cfg):
    (tmp / "out").write_text("mine")


def _out_not_a_run_dir(tmp, cfg):
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")


def _out_of_another_config(tmp, cfg):
    other = yaml.safe_load(cfg.read_text())
    other["reinforce"]["beta"] = 0.5
    (tmp / "other.yaml").write_text(yaml.safe_dump(other))
    assert main(["run", str(tmp / "other.yaml"), "--out", str(tmp / "out"), "--no-progress"]) == 0


def _corrupt_manifest(tmp, cfg):
    assert main(["run", str(cfg), "--out", str(tmp / "out"), "--no-progress"]) == 0
    (tmp / "out" / "manifest.json").write_text("{not json")


def _manifest_of_wrong_shape(tmp, cfg):
    assert main(["run", str(cfg), "--out", str(tmp / "out"), "--no-progress"]) == 0
    m = json.loads((tmp / "out" / "manifest.json").read_text())
    m["checkpoints"][0]["role"] = "weird"
    (tmp / "out" / "manifest.json").write_text(json.dumps(m))


OUT_CASES = {
    "out is a file": (_out_is_a_file, "is not a directory"),
    "out is not a run directory": (_out_not_a_run_dir, "not a warp run directory"),
    "out holds another config": (_out_of_another_config, "different config (config.reinforce.beta"),
    "corrupt manifest": (_corrupt_manifest, "unreadable manifest"),
    "manifest of the wrong shape": (_manifest_of_wrong_shape, "role: 'weird'"),
}


@pytest.mark.parametrize("case", list(OUT_CASES), ids=list(OUT_CASES))
def test_warp_run_bad_output_directory(case, tiny_rl_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WARP_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_rl_config(warp={"iterations": 1, "steps": 1, "save_every": 0})))
    prepare, words = OUT_CASES[case]
    prepare(tmp_path, cfg)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert _snapshot(tmp_path) == before


TRAIN_RM_CASES = {
    "one WARM member": (["--warm", "1"], {}, "--warm needs M ≥ 2"),
    "label noise too high": ([], {"label_noise": [0.6]}, "label_noise"),
    "unknown key": ([], {"epoch": 2}, "unknown key 'epoch'"),
    "zero batch size": ([], {"batch_size": 0}, "batch_size must be ≥ 1"),
    "unknown backbone": ([], {"backbone": "no-such-backbone"}, "no-such-backbone"),
    "output exists": (["--exists"], {}, "already exists"),
}


@pytest.mark.parametrize("case", list(TRAIN_RM_CASES), ids=list(TRAIN_RM_CASES))
def test_warp_train_rm_bad_input(case, tiny_rm_dir, tiny_csv, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WARP_CACHE", str(tmp_path / "cache"))
    flags, edits, words = TRAIN_RM_CASES[case]
    mapping = {"backbone": str(tiny_rm_dir), "train_per_class": 4, "eval_per_class": 4, "batch_size": 4,
               "data": {"dataset": str(tiny_csv), "validation_fraction": 0.2, "test_fraction": 0.2}, **edits}
    cfg = tmp_path / "rm.yaml"
    cfg.write_text(yaml.safe_dump(mapping))
    out = tmp_path / "rm-out"
    if "--exists" in flags:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        flags = []
    before = _snapshot(tmp_path)
    assert main(["train-rm", str(cfg), "--out", str(out), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert _snapshot(tmp_path) == before
