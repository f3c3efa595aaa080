"""`warp merge` end to end on tiny checkpoints: in-process through harness.cli.main, and one subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import merge
from harness.cli import main
from merge.checkpoint import RECIPE_FILE, load_state_dict

ROOT = Path(__file__).resolve().parents[2]


def same(out, ref):
    got = load_state_dict(out)
    assert set(got) == set(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_cli_slerp_then_liti(ckpts, tmp_path, capsys):
    rc = main(["merge", "slerp", "--init", str(ckpts.init), "--models", *map(str, ckpts.models[:2]), "--lam", "0.4",
               "--out", str(tmp_path / "slerp"), "--no-progress"])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    slerp_sd = merge.slerp(ckpts.init_sd, ckpts.model_sds[:2], 0.4)
    same(tmp_path / "slerp", slerp_sd)
    rc = main(["merge", "liti", "--init", str(ckpts.init), "--merged", str(tmp_path / "slerp"), "--eta", "0.3",
               "--out", str(tmp_path / "liti"), "--max-shard-size", "30KB"])
    assert rc == 0
    same(tmp_path / "liti", merge.liti(ckpts.init_sd, slerp_sd, 0.3))
    assert json.loads((tmp_path / "liti" / RECIPE_FILE).read_text())["params"] == {"eta": 0.3}


@pytest.mark.parametrize("argv, ref", [
    (["slerp"], lambda c: merge.slerp(c.init_sd, c.model_sds)),
    (["task_arithmetic", "--scale", "0.5", "--weights", "1", "0.5", "2"],
     lambda c: merge.task_arithmetic(c.init_sd, c.model_sds, 0.5, [1, 0.5, 2])),
    (["ties", "--density", "0.4"], lambda c: merge.ties(c.init_sd, c.model_sds, density=0.4)),
    (["dare", "--density", "0.6", "--seed", "9"], lambda c: merge.dare(c.init_sd, c.model_sds, density=0.6, seed=9)),
    (["average"], lambda c: merge.average(c.model_sds)),
])
def test_cli_methods(ckpts, tmp_path, argv, ref):
    init = [] if argv[0] == "average" else ["--init", str(ckpts.init)]
    assert main(["merge", argv[0], *init, "--models", *map(str, ckpts.models), *argv[1:], "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    same(tmp_path / "o", ref(ckpts))


def test_cli_yaml_recipe(ckpts, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"method: slerp\ninit: {ckpts.init}\nmodels: [{ckpts.models[0]}, {ckpts.models[1]}]\n"
                      f"params: {{lam: 0.7}}\nout: merged\n")
    assert main(["merge", "--config", str(recipe)]) == 0
    same(tmp_path / "merged", merge.slerp(ckpts.init_sd, ckpts.model_sds[:2], 0.7))
    rec = json.loads((tmp_path / "merged" / RECIPE_FILE).read_text())
    assert rec["recipe_file"] == str(recipe) and rec["params"] == {"lam": 0.7}
    liti = tmp_path / "liti.yaml"
    liti.write_text(f"method: liti\ninit: {ckpts.init}\nmerged: merged\nparams: {{eta: 0.5}}\nout: liti\n")
    assert main(["merge", "--config", str(liti)]) == 0
    same(tmp_path / "liti", merge.liti(ckpts.init_sd, merge.slerp(ckpts.init_sd, ckpts.model_sds[:2], 0.7), 0.5))


@pytest.mark.parametrize("text, match", [
    ("method: slerp\nmodels: [a, b]\nout: o\nbogus: 1\n", "unknown key 'bogus'"),
    ("method: frobnicate\nmodels: [a, b]\nout: o\n", "unknown merge method 'frobnicate'"),
    ("method: slerp\nmodels: [a, b]\nout: o\n", "needs `init`"),
    ("method: slerp\ninit: {init}\nmodels: [{m1}, {m2}]\nparams: {{lam: 2}}\nout: o\n", r"lam must be in \[0, 1\]"),
    ("method: slerp\ninit: {init}\nmodels: [{m1}, {m2}]\nparams: {{eta: 0.3}}\nout: o\n", "unknown key 'eta'"),
    ("method: slerp\n  bad: [yaml\n", "invalid YAML"),
    ("method: slerp\ninit: {init}\nmodels: [{m1}, {m2}]\nallow_pickle: true\nout: o\n", "unknown key 'allow_pickle'"),
])
def test_cli_yaml_recipe_errors(ckpts, tmp_path, capsys, text, match):
    import re

    recipe = tmp_path / "r.yaml"
    recipe.write_text(text.format(init=ckpts.init, m1=ckpts.models[0], m2=ckpts.models[1]))
    assert main(["merge", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("warp merge: error:") and len(err.strip().splitlines()) == 1 and re.search(match, err), err
    assert not (tmp_path / "o").exists()


def test_cli_errors_one_line_exit_2_nothing_written(ckpts, tmp_path, capsys):
    rc = main(["merge", "slerp", "--init", str(ckpts.init), "--models", *map(str, ckpts.models[:2]), "--lam", "1.5",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == "warp merge: error: lam must be in [0, 1], got 1.5"
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as e:   # a missing required flag is argparse's usage error, also exit 2
        main(["merge", "slerp", "--init", str(ckpts.init), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and not (tmp_path / "o").exists()


def test_cli_existing_out_and_missing_model(ckpts, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    assert main(["merge", "slerp", "--init", str(ckpts.init), "--models", *map(str, ckpts.models[:2]),
                 "--out", str(tmp_path / "o")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["merge", "slerp", "--init", str(ckpts.init), "--models", str(ckpts.models[0]), str(tmp_path / "missing"),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "not a directory" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    assert main(["merge", "slerp", "--init", str(ckpts.init), "--models", str(ckpts.models[0]),
                 "--out", str(tmp_path / "o3")]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["merge"]) == 2
    assert main(["merge", "--config", str(tmp_path / "none.yaml")]) == 2


def test_cli_subprocess(ckpts, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "harness.cli", "merge", "slerp", "--init", str(ckpts.init),
                        "--models", *map(str, ckpts.models[:2]), "--out", str(tmp_path / "sub")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "tensor" in r.stderr   # the progress bar over tensors
    same(tmp_path / "sub", merge.slerp(ckpts.init_sd, ckpts.model_sds[:2]))
    r = subprocess.run([sys.executable, "-m", "harness.cli", "merge", "liti", "--init", str(ckpts.init),
                        "--merged", str(tmp_path / "sub"), "--eta", "3", "--out", str(tmp_path / "bad")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "warp merge: error: eta must be in [0, 1], got 3.0"
    assert not (tmp_path / "bad").exists()


def test_cli_lerp_two_models(ckpts, tmp_path):
    assert main(["merge", "lerp", "--models", *map(str, ckpts.models[:2]), "--t", "0.25", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    same(tmp_path / "o", merge.lerp(ckpts.model_sds[0], ckpts.model_sds[1], 0.25))
    assert main(["merge", "lerp", "--models", *map(str, ckpts.models), "--out", str(tmp_path / "o2")]) == 2


def test_cli_has_no_pickle_opt_in(ckpts, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["merge", "slerp", "--init", str(ckpts.init), "--models", *map(str, ckpts.models[:2]),
              "--out", str(tmp_path / "o"), "--allow-pickle"])
    assert e.value.code == 2 and "--allow-pickle" in capsys.readouterr().err and not (tmp_path / "o").exists()
