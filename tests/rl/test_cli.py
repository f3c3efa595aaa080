import json

import pytest
import yaml

from harness.cli import main


def write(tmp_path, mapping, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(mapping))
    return str(path)


def run_cli(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def test_cli_run_end_to_end(tiny_rl_config, tmp_path, capsys):
    cfg = write(tmp_path, tiny_rl_config(warp={"steps": 2, "save_every": 0}))
    out = tmp_path / "run"
    assert main(["run", cfg, "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["role"] for c in manifest["checkpoints"]] == ["sft"] + ["run", "run", "slerp", "liti"] * 2
    assert main(["run", cfg, "--out", str(out), "--no-progress"]) == 0   # finished: re-running is a no-op
    assert json.loads((out / "manifest.json").read_text()) == manifest


@pytest.mark.parametrize("change,message", [
    ({"reinforce": {"betta": 0.1}}, "unknown key 'betta'"),
    ({"warp": {"eta": 1.5}}, "warp.eta must be in [0, 1], got 1.5"),
    ({"reinforce": {"baseline": "rloo"}}, "'rloo' needs samples_per_prompt ≥ 2"),
    ({"policy": "no-such-model"}, "cannot load model 'no-such-model': not a builtin alias"),
    ({"data": {"dataset": "/nonexistent/tweets.csv"}}, "dataset file /nonexistent/tweets.csv does not exist"),
    ({"reward_model": "./nowhere-rm"}, "reward model directory ./nowhere-rm does not exist"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tiny_rl_config, tmp_path, capsys, change, message):
    cfg = write(tmp_path, tiny_rl_config(**change))
    out = tmp_path / "run"
    code, err = run_cli(["run", cfg, "--out", str(out), "--no-progress"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("warp run: error:") and message in err
    assert not out.exists()


def test_cli_refuses_run_dir_of_another_config(tiny_rl_config, tmp_path, capsys):
    out = tmp_path / "run"
    a = write(tmp_path, tiny_rl_config(warp={"iterations": 1, "steps": 1, "save_every": 0}), "a.yaml")
    assert main(["run", a, "--out", str(out), "--no-progress"]) == 0
    before = (out / "manifest.json").read_text()
    b = write(tmp_path, tiny_rl_config(warp={"iterations": 1, "steps": 2, "save_every": 0}), "b.yaml")
    code, err = run_cli(["run", b, "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "different config (config.warp.steps: 1 there, 2 now)" in err and err.count("\n") == 1
    assert (out / "manifest.json").read_text() == before


def test_cli_train_rm_and_warm(tiny_rm_dir, tiny_csv, tmp_path, capsys):
    cfg = write(tmp_path, {"backbone": str(tiny_rm_dir), "train_per_class": 50, "eval_per_class": 50, "batch_size": 8,
                           "lr": 1e-3, "label_noise": [0.2],
                           "data": {"dataset": str(tiny_csv), "validation_fraction": 0.2, "test_fraction": 0.2}})
    assert main(["train-rm", cfg, "--seed", "3", "--out", str(tmp_path / "rm"), "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line)["held_out_accuracy"] == json.loads((tmp_path / "rm" / "rm_metrics.json").read_text())["held_out_accuracy"]
    assert main(["train-rm", cfg, "--warm", "2", "--out", str(tmp_path / "warm"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "label noise 0%: WARM" in out and "label noise 20%: WARM" in out
    assert (tmp_path / "warm" / "members" / "seed1" / "model.safetensors").exists()
    code, err = run_cli(["train-rm", cfg, "--seed", "3", "--out", str(tmp_path / "rm"), "--no-progress"], capsys)
    assert code == 2 and "already exists" in err


@pytest.mark.parametrize("name", ["quick", "reinforce", "paper"])
def test_shipped_configs_validate(name):
    from merge.config import load_config
    from rl.config import RLConfig

    cfg = load_config(RLConfig, f"configs/{name}.yaml")
    assert cfg.reinforce.beta == 0.1
    if name == "paper":
        assert (cfg.reinforce.lr, cfg.reinforce.warmup_steps, cfg.reinforce.batch_prompts, cfg.warp.steps) == (1e-6, 100, 128, 9000)
        assert (cfg.reinforce.mu, cfg.warp.lam, cfg.warp.eta, cfg.warp.runs) == (0.01, 0.5, 0.3, 2)


def test_shipped_warm_config_validates():
    from merge.config import load_config
    from rl.rm import RewardTrainConfig

    cfg = load_config(RewardTrainConfig, "configs/warm.yaml")
    assert cfg.label_noise == [0.2, 0.4] and cfg.train_per_class == 1000
