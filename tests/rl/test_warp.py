import json

import pytest
import torch
from safetensors.torch import load_file

import merge
from rl.models import load_causal_lm
from merge import load_state_dict as load_weights
from rl.rundir import RunDirError
from rl.warp import warp
from tests.rl.conftest import config


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_warp_i2_m2_writes_the_manifest(tiny_rl_config, tmp_path):
    cfg = config(tiny_rl_config())
    out = warp(cfg, tmp_path / "run", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == 1
    assert manifest["config"]["warp"]["runs"] == 2
    expected = [{"path": "sft", "iteration": 0, "run": None, "role": "sft", "step": 0}]
    for i in (1, 2):
        for m in (1, 2):
            expected += [{"path": f"iter{i}/run{m}/step_000002", "iteration": i, "run": m, "role": "run", "step": 2},
                         {"path": f"iter{i}/run{m}/final", "iteration": i, "run": m, "role": "run", "step": 3}]
        expected += [{"path": f"iter{i}/slerp", "iteration": i, "run": None, "role": "slerp", "step": 3},
                     {"path": f"iter{i}/liti", "iteration": i, "run": None, "role": "liti", "step": 3}]
    assert manifest["checkpoints"] == expected
    task = manifest["task"]
    assert task["generation"] == {"max_new_tokens": 6, "temperature": 0.9, "top_p": 1.0, "chat_template": False}
    assert task["control_reward"] == "vader" and task["reward_with_prompt"] is False
    # The reward model is copied into the run dir (self-contained) and named relatively.
    assert task["reward_model"] == "reward_model" and (out / "reward_model" / "config.json").exists()
    assert manifest["complete"] is True
    for split in ("validation", "test"):
        rows = [json.loads(x) for x in (out / task["prompts"][split]).read_text().splitlines()]
        assert 1 <= len(rows) <= 4 and all(set(r) == {"id", "prompt"} and len(r["prompt"].split()) == 2 for r in rows)
    for c in manifest["checkpoints"]:
        assert (out / c["path"] / "model.safetensors").exists() and (out / c["path"] / "tokenizer.json").exists()
        assert not list((out / c["path"]).glob("*.bin"))
    load_causal_lm(str(out / "iter2/liti"))
    assert not (out / "iter1/run1/state").exists()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["run"], r["step"]) for r in rows] == [(i, m, s) for i in (1, 2) for m in (1, 2) for s in (1, 2, 3)]
    for key in ("reward", "control_reward", "kl_anchor", "kl_sft", "length", "entropy"):
        assert all(isinstance(r[key], float) for r in rows)
    assert rows[0]["kl_anchor"] == 0.0 and rows[0]["kl_sft"] == 0.0   # first step: policy = anchor = sft


def _slerp_reference(init, a, b, lam=0.5):
    """Task-vector SLERP of one tensor in float64 numpy, written from the paper's Eq. 4 (independent of merge/)."""
    import numpy as np

    x0, d1, d2 = (np.asarray(v, dtype=np.float64).ravel() for v in (init, a - init, b - init))
    n1, n2 = np.linalg.norm(d1), np.linalg.norm(d2)
    omega = np.arccos(np.clip(d1 @ d2 / (n1 * n2), -1, 1))
    out = x0 + np.sin((1 - lam) * omega) / np.sin(omega) * d1 + np.sin(lam * omega) / np.sin(omega) * d2
    return torch.from_numpy(out.reshape(tuple(init.shape)))


def test_slerp_and_liti_checkpoints_are_the_merges_of_the_runs(tiny_rl_config, tmp_path):
    out = warp(config(tiny_rl_config(warp={"iterations": 1, "save_every": 0, "eta": 0.3})), tmp_path / "run", progress=False)
    init = load_weights(out / "sft")
    runs = [load_weights(out / f"iter1/run{m}/final") for m in (1, 2)]
    changed = [k for k in init if not torch.equal(runs[0][k], init[k]) and not torch.equal(runs[1][k], init[k])]
    assert len(changed) > 5                                             # the runs moved, and differently
    saved, liti = load_weights(out / "iter1/slerp"), load_weights(out / "iter1/liti")
    for k in changed:                                                   # one angle PER TENSOR
        ref = _slerp_reference(init[k].double(), runs[0][k].double(), runs[1][k].double())
        torch.testing.assert_close(saved[k].double(), ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(liti[k].double(), 0.7 * init[k].double() + 0.3 * ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("state_every,kills", [(1, [2, 3, 1]), (2, [1, 3]), (5, [3])])
def test_resume_equals_uninterrupted(tiny_rl_config, tmp_path, state_every, kills):
    mapping = tiny_rl_config(warp={"state_every": state_every, "steps": 4})
    whole = warp(config(mapping), tmp_path / "whole", progress=False)
    out = tmp_path / "killed"
    for k in kills:   # each attempt is killed after k steps of the run it is in
        with pytest.raises(KeyboardInterrupt):
            warp(config(mapping), out, progress=False, stop_after=k)
        assert json.loads((out / "manifest.json").read_text())["complete"] is False
    warp(config(mapping), out, progress=False)
    a = json.loads((whole / "manifest.json").read_text())
    b = json.loads((out / "manifest.json").read_text())
    assert a["checkpoints"] == b["checkpoints"]
    for c in a["checkpoints"]:
        wa, wb = weights(whole / c["path"]), weights(out / c["path"])
        assert all(torch.equal(wa[k], wb[k]) for k in wa), c["path"]
    assert (whole / "metrics.jsonl").read_text().count("\n") == (out / "metrics.jsonl").read_text().count("\n")
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if not k.startswith("time_")} for x in p.read_text().splitlines()]
    assert strip(whole / "metrics.jsonl") == strip(out / "metrics.jsonl")


def test_ema_anchor_in_a_run_starts_at_theta_init(tiny_rl_config, tmp_path):
    mu = 0.2
    mapping = tiny_rl_config(reinforce={"mu": mu}, warp={"iterations": 1, "state_every": 1, "steps": 3})
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        warp(config(mapping), out, progress=False, stop_after=1)
    state = out / "iter1/run1/state"
    init = load_weights(out / "sft")
    theta1 = load_file(str(state / "policy.safetensors"))
    anchor = load_file(str(state / "anchor.safetensors"))
    assert json.loads((state / "state.json").read_text())["step"] == 1
    for k, v in anchor.items():
        torch.testing.assert_close(v, (1 - mu) * init[k] + mu * theta1[k])


def test_plain_reinforce_run_dir(tiny_rl_config, tmp_path):
    cfg = config(tiny_rl_config(warp={"iterations": 1, "runs": 1, "merge": False, "save_every": 0},
                                reinforce={"anchor": "sft"}))
    out = warp(cfg, tmp_path / "run", progress=False)
    cks = json.loads((out / "manifest.json").read_text())["checkpoints"]
    assert [c["role"] for c in cks] == ["sft", "run"] and cks[1]["path"] == "iter1/run1/final"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kl_sft"] == r["kl_anchor"] for r in rows)


def test_run_dir_of_another_config_is_refused_untouched(tiny_rl_config, tmp_path):
    out = warp(config(tiny_rl_config(warp={"iterations": 1, "steps": 1, "save_every": 0})), tmp_path / "run", progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError, match=r"different config \(config\.reinforce\.beta"):
        warp(config(tiny_rl_config(warp={"iterations": 1, "steps": 1, "save_every": 0}, reinforce={"beta": 0.2})),
             out, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_non_run_directory_is_refused(tiny_rl_config, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a warp run directory"):
        warp(config(tiny_rl_config()), tmp_path / "busy", progress=False)
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


def test_lora_runs_merge_dense_task_vectors(tiny_rl_config, tmp_path):
    cfg = config(tiny_rl_config(reinforce={"lora": {"r": 2, "target_modules": ["q_proj", "v_proj"]}, "lr": 1e-2},
                                warp={"iterations": 1, "save_every": 0}))
    out = warp(cfg, tmp_path / "run", progress=False)
    sft, final = load_weights(out / "sft"), load_weights(out / "iter1/run1/final")
    assert set(final) == set(sft)                                   # dense checkpoints, no LoRA factors
    changed = {k for k in sft if not torch.equal(sft[k], final[k])}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)
    load_causal_lm(str(out / "iter1/liti"))
