import json

import pytest
import torch

from merge.config import ConfigError, from_mapping
from rl import rm
from rl.data import DataConfig, Example
from rl.rewards import ClassifierReward, RewardError
from rl.rm import RewardTrainConfig, flip_labels, resolve_reward_spec, rm_datasets, train_rm, warm


@pytest.fixture
def rm_config(tiny_rm_dir, tiny_csv):
    return RewardTrainConfig(backbone=str(tiny_rm_dir), train_per_class=100, eval_per_class=100, batch_size=4,
                             max_length=48, lr=3e-3, epochs=4, label_noise=[0.3],
                             data=DataConfig(dataset=str(tiny_csv), validation_fraction=0.2, test_fraction=0.2))


def test_train_rm_learns_and_reports_true_held_out_accuracy(rm_config, tmp_path):
    metrics = train_rm(rm_config, seed=0, out=tmp_path / "rm", progress=False)
    saved = json.loads((tmp_path / "rm" / "rm_metrics.json").read_text())
    assert saved["held_out_accuracy"] == metrics["held_out_accuracy"]
    train, held = rm_datasets(rm_config)
    reward = ClassifierReward(tmp_path / "rm", max_length=48)
    p = reward([""] * len(held), [e.text for e in held])
    independent = sum(int((x > 0.5).item() == bool(e.label)) for x, e in zip(p, held)) / len(held)
    assert metrics["held_out_accuracy"] == pytest.approx(independent)
    p_train = reward([""] * len(train), [e.text for e in train])
    assert sum(int((x > 0.5).item() == bool(e.label)) for x, e in zip(p_train, train)) / len(train) >= 0.9
    with pytest.raises(RewardError, match="already exists"):
        train_rm(rm_config, seed=0, out=tmp_path / "rm", progress=False)


def test_uniform_average_is_the_exact_mean():
    import merge

    torch.manual_seed(0)
    sds = [{"w": torch.randn(3, 4), "b": torch.randn(4)} for _ in range(3)]
    avg = merge.average(sds)   # what warm() averages its members with
    for k in ("w", "b"):
        torch.testing.assert_close(avg[k], torch.stack([s[k] for s in sds]).mean(0))


def test_flip_labels_flips_the_requested_fraction():
    ex = [Example(str(i), f"t{i}", i % 2) for i in range(20)]
    noisy = flip_labels(ex, 0.3, seed=1)
    assert sum(a.label != b.label for a, b in zip(ex, noisy)) == 6
    assert flip_labels(ex, 0.3, seed=1) == noisy


def test_warm_averages_members_and_compares(rm_config, tmp_path):
    report = warm(rm_config, [0, 1], tmp_path / "warm", progress=False)
    assert set(report["noise"]) == {"0.0", "0.3"}
    for row in report["noise"].values():
        assert len(row["members"]) == 2 and all(0 <= a <= 1 for a in row["members"] + [row["ensemble"], row["warm"]])
    from rl.models import load_classifier

    members = [load_classifier(str(tmp_path / "warm" / "members" / f"seed{s}"))[0].state_dict() for s in (0, 1)]
    assert any(not torch.equal(members[0][k], members[1][k]) for k in members[0])
    w = load_classifier(str(tmp_path / "warm"))[0].state_dict()
    for k, v in w.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (members[0][k] + members[1][k]) / 2)
    assert json.loads((tmp_path / "warm" / "rm_metrics.json").read_text())["held_out_accuracy"] == report["noise"]["0.0"]["warm"]
    # every reported accuracy and paired difference, recomputed independently from the saved models
    _, held = rm_datasets(rm_config)
    y = torch.tensor([e.label for e in held])
    score = lambda d: ClassifierReward(d, max_length=rm_config.max_length)([""] * len(held), [e.text for e in held])  # noqa: E731
    p_members = [score(tmp_path / "warm" / "members" / f"seed{s}") for s in (0, 1)]
    p_warm = score(tmp_path / "warm")
    acc = lambda p: float(((p > 0.5).long() == y).float().mean())  # noqa: E731
    row = report["noise"]["0.0"]
    assert row["members"] == pytest.approx([acc(p) for p in p_members], abs=1e-9)
    assert row["ensemble"] == pytest.approx(acc((p_members[0] + p_members[1]) / 2), abs=1e-9)
    assert row["warm"] == pytest.approx(acc(p_warm), abs=1e-9)
    diff = row["paired"]["warm_minus_member_mean"]
    assert diff["estimate"] == pytest.approx(row["warm"] - row["member_mean"], abs=1e-9) and diff["n"] == len(held)
    assert diff["ci_low"] <= diff["estimate"] <= diff["ci_high"]
    preds = json.loads((tmp_path / "warm" / "held_out_predictions.json").read_text())
    assert preds["p_positive"]["0.0"]["warm"] == pytest.approx(p_warm.tolist(), abs=1e-6)
    assert preds["p_positive"]["0.0"]["ensemble"] == pytest.approx(((p_members[0] + p_members[1]) / 2).tolist(), abs=1e-6)


def test_rm_spec_trains_once_and_is_cached(monkeypatch, tmp_path, rm_config):
    monkeypatch.setenv("WARP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(rm.BUILTIN_RMS, "tiny", rm_config)
    calls = []
    real = rm.train_rm
    monkeypatch.setattr(rm, "train_rm", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = resolve_reward_spec("rm:tiny", progress=False)
    assert first.startswith(str(tmp_path / "cache" / "reward_models" / "tiny-"))
    assert resolve_reward_spec("rm:tiny", progress=False) == first and calls == [1]
    with pytest.raises(RewardError, match="unknown reward model 'rm:nope'"):
        resolve_reward_spec("rm:nope")
    with pytest.raises(RewardError, match="does not exist"):
        resolve_reward_spec("./nowhere")
    assert resolve_reward_spec("vader") == "vader"


def test_rm_config_validation():
    with pytest.raises(ConfigError, match="label_noise"):
        from_mapping(RewardTrainConfig, {"label_noise": [0.6]})
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        from_mapping(RewardTrainConfig, {"epoch": 2})
