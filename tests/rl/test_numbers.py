"""Numbers mean what their labels say: one reward function, one temperature/KL definition, fp32
master weights under bf16 compute, no dropout, exact iteration chaining, non-finite values stop."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

import merge
from rl.config import GenerationConfig, ReinforceConfig
from rl.reinforce import NonFiniteError, make_optimizer, reinforce_step
from rl.rewards import CallableReward, task_rewards
from merge import load_state_dict as load_weights
from rl.warp import warp
from tests.harness.rundir import perturbed
from tests.rl.conftest import config
from tests.tiny import save, tiny_causal_lm

FRACTION_A = CallableReward(lambda p, c: [sum(ch == "a" for ch in x) / max(len(x), 1) for x in c])
ZERO = CallableReward(lambda p, c: [0.0] * len(c))


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_training_rewards_are_the_harness_rewards(tiny_rl_config, tmp_path):
    """reward_with_prompt: training optimises r(prompt + completion), the reward `warp eval` scores."""
    from harness.manifest import load_manifest

    out = warp(config(tiny_rl_config(reward_with_prompt=True, warp={"iterations": 1, "steps": 2, "save_every": 0})),
               tmp_path / "run", progress=False)
    m = load_manifest(out)
    assert m.task.reward_with_prompt is True
    # what the harness's Scorer builds (harness/evaluate.py, Scorer.rewards)
    harness_reward = task_rewards(m.reward_model_spec(), m.task.control_reward, m.task.reward_with_prompt,
                                  base_dir=m.run_dir)["reward"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    got = [r["sample_reward"] for r in rows]
    want = harness_reward([r["sample_prompt"] for r in rows], [r["sample"] for r in rows]).tolist()
    assert got == pytest.approx(want, abs=1e-6)
    # and the prompt matters for this reward model, so the comparison above can tell the two apart
    without = task_rewards(m.reward_model_spec(), "vader", False, base_dir=m.run_dir)["reward"]
    alone = without([r["sample_prompt"] for r in rows], [r["sample"] for r in rows]).tolist()
    assert max(abs(a - b) for a, b in zip(alone, want)) > 1e-4


def test_training_kl_of_a_checkpoint_equals_the_harness_kl_on_the_same_samples():
    """One temperature story: training's kl_sft (and the KL penalty) is KL(π^T‖π_sft^T), what the harness reports."""
    from harness.score import kl_on_samples

    sft, tok = tiny_causal_lm(0)
    policy = perturbed(copy.deepcopy(sft), 0.05, seed=3)
    before = copy.deepcopy(policy)             # the checkpoint the step's samples and metrics are of
    T = 0.6
    rc = ReinforceConfig(lr=1e-3, warmup_steps=0, beta=0.1)
    gen = GenerationConfig(max_new_tokens=6, temperature=T)
    opt, sched = make_optimizer(policy, rc)
    res = reinforce_step(policy, copy.deepcopy(sft), sft, tok, ["ab", "hello", "xyz", "q"], FRACTION_A, ZERO, rc, gen,
                         opt, sched, seed=11)
    k1, _ = kl_on_samples(before, sft, res.samples, T)
    assert res.metrics["kl_sft"] == pytest.approx(float(k1.mean()), abs=1e-5)
    assert res.metrics["kl_anchor"] == pytest.approx(float(k1.mean()), abs=1e-5)    # anchor = sft here
    k1_untempered, _ = kl_on_samples(before, sft, res.samples, 1.0)
    assert abs(res.metrics["kl_sft"] - float(k1_untempered.mean())) > 1e-3          # T matters at this size


def test_no_dropout_in_any_pass():
    """Every forward pass of the policy (sampling, policy gradient) and of the anchor runs in eval mode."""
    from transformers import LlamaForCausalLM

    base, tok = tiny_causal_lm(0)
    cfg = copy.deepcopy(base.config)
    cfg.attention_dropout = 0.5
    policy = LlamaForCausalLM(cfg)
    policy.load_state_dict(base.state_dict())
    anchor = copy.deepcopy(policy)
    seen = []
    for m in (policy, anchor):
        m.register_forward_pre_hook(lambda mod, args: seen.append(mod.training))
    rc, gen = ReinforceConfig(lr=1e-3, warmup_steps=0), GenerationConfig(max_new_tokens=4)
    opt, sched = make_optimizer(policy, rc)
    reinforce_step(policy, anchor, None, tok, ["ab", "cd"], FRACTION_A, ZERO, rc, gen, opt, sched, seed=0)
    assert seen and not any(seen)


def _displacement(a: dict, b: dict) -> float:
    return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a)))


def test_bf16_mode_moves_weights_and_anchor_like_fp32(tiny_rl_config, tmp_path):
    """lr 1e-6, μ = 0.01 (the paper's): in bf16 mode the float32 master weights and EMA anchor move
    by what float32 mode moves them (displacement norms within 20%); bf16 parameters would round
    nearly every update away."""
    moved = {}
    for dtype in ("float32", "bfloat16"):
        mapping = tiny_rl_config(dtype=dtype, reinforce={"lr": 1e-6, "mu": 0.01, "warmup_steps": 0},
                                 warp={"iterations": 1, "runs": 1, "merge": False, "steps": 4, "state_every": 1,
                                       "save_every": 0})
        out = tmp_path / dtype
        with pytest.raises(KeyboardInterrupt):
            warp(config(mapping), out, progress=False, stop_after=3)
        init = weights(out / "sft")
        state = out / "iter1/run1/state"
        policy, anchor = load_file(str(state / "policy.safetensors")), load_file(str(state / "anchor.safetensors"))
        assert all(v.dtype == torch.float32 for v in [*policy.values(), *anchor.values()])
        moved[dtype] = (_displacement(policy, init), _displacement(anchor, init))
    (p32, a32), (p16, a16) = moved["float32"], moved["bfloat16"]
    assert p32 > 0 and a32 > 0
    assert 0.8 < p16 / p32 < 1.25 and 0.8 < a16 / a32 < 1.25, moved


def test_iteration_chaining_is_exact_including_a_resume_between_iterations(tiny_rl_config, tmp_path, monkeypatch):
    """Iteration i+1's runs start from exactly liti(θ_init_i, θ_slerp_i, η), bitwise; its SLERP is
    taken around that init; a kill between the iterations changes nothing."""
    import rl.run
    import rl.warp

    mapping = tiny_rl_config(warp={"iterations": 2, "runs": 2, "steps": 2, "save_every": 0, "eta": 0.3})
    loaded = {}
    real_load = rl.run.load_causal_lm

    def spy(spec, *a, **k):
        model, tok = real_load(spec, *a, **k)
        loaded.setdefault(spec, {n: t.clone() for n, t in model.state_dict().items()})
        return model, tok

    monkeypatch.setattr(rl.run, "load_causal_lm", spy)
    whole = warp(config(mapping), tmp_path / "whole", progress=False)
    sd = {rel: load_weights(whole / rel) for rel in ("sft", "iter1/slerp", "iter1/liti", "iter2/slerp", "iter2/liti",
                                                       "iter2/run1/final", "iter2/run2/final")}
    liti1 = merge.liti(sd["sft"], sd["iter1/slerp"], 0.3)
    assert all(torch.equal(liti1[k], sd["iter1/liti"][k]) for k in liti1)
    init2 = loaded[str(whole / "iter1/liti")]                     # what iteration 2's runs loaded as θ_init
    assert all(torch.equal(init2[k], liti1[k]) for k in liti1)
    slerp2 = merge.slerp(sd["iter1/liti"], [sd["iter2/run1/final"], sd["iter2/run2/final"]], 0.5)
    assert all(torch.equal(slerp2[k], sd["iter2/slerp"][k]) for k in slerp2)
    liti2 = merge.liti(sd["iter1/liti"], sd["iter2/slerp"], 0.3)
    assert all(torch.equal(liti2[k], sd["iter2/liti"][k]) for k in liti2)

    real_train = rl.warp.train_run

    def killed_at_iteration_2(cfg, run_dir, iteration, *a, **k):
        if iteration == 2:
            raise KeyboardInterrupt("killed between iterations")
        return real_train(cfg, run_dir, iteration, *a, **k)

    monkeypatch.setattr(rl.warp, "train_run", killed_at_iteration_2)
    with pytest.raises(KeyboardInterrupt):
        warp(config(mapping), tmp_path / "resumed", progress=False)
    monkeypatch.setattr(rl.warp, "train_run", real_train)
    resumed = warp(config(mapping), tmp_path / "resumed", progress=False)
    for rel in sd:
        a, b = weights(whole / rel), weights(resumed / rel)
        assert all(torch.equal(a[k], b[k]) for k in a), rel


def test_threads_are_set_before_any_work_even_when_only_merges_remain(tiny_rl_config, tmp_path):
    mapping = tiny_rl_config(warp={"iterations": 1, "steps": 1, "save_every": 0}, threads=1)
    out = warp(config(mapping), tmp_path / "run", progress=False)
    torch.set_num_threads(2)
    try:
        warp(config(mapping), out, progress=False)      # everything exists: nothing trains
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)


def test_resume_refuses_only_for_keys_that_change_the_weights(tiny_rl_config, tmp_path):
    from rl.rundir import RunDirError

    mapping = tiny_rl_config(warp={"iterations": 1, "steps": 2, "save_every": 0, "state_every": 1})
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        warp(config(mapping), out, progress=False, stop_after=1)
    other_runtime = tiny_rl_config(warp={"iterations": 1, "steps": 2, "save_every": 0, "state_every": 2},
                                   threads=2, device="cpu", executor={"num_cpus": 2, "max_retries": 1})
    warp(config(other_runtime), out, progress=False)    # threads, device, state_every, executor: accepted
    whole = warp(config(mapping), tmp_path / "whole", progress=False)
    for rel in ("iter1/run1/final", "iter1/liti"):
        a, b = weights(whole / rel), weights(out / rel)
        assert all(torch.equal(a[k], b[k]) for k in a), rel
    for changed in ({"reinforce": {"lr": 2e-3}}, {"seed": 1}, {"dtype": "bfloat16"}, {"generation": {"temperature": 0.5}}):
        with pytest.raises(RunDirError, match="different config"):
            warp(config(tiny_rl_config(**{"warp": {"iterations": 1, "steps": 2, "save_every": 0}, **changed})), out,
                 progress=False)


def test_non_finite_reward_stops_the_run_naming_where_and_writes_no_nan(tiny_rl_config, tmp_path):
    calls = []

    def nan_on_step_2(prompts, completions):
        calls.append(1)
        return torch.full((len(completions),), float("nan") if len(calls) == 2 else 0.5)

    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"iteration 1, run 1, step 2: reward is NaN/Inf \(2 of 2 values\)"):
        warp(config(tiny_rl_config(warp={"iterations": 1, "steps": 3, "save_every": 1, "state_every": 1})), out,
             progress=False, reward_fn=nan_on_step_2)
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    for f in out.rglob("*.safetensors"):
        assert all(bool(torch.isfinite(t).all()) for t in load_file(str(f)).values() if t.is_floating_point()), f
    assert [json.loads(x)["step"] for x in (out / "iter1/run1/metrics.jsonl").read_text().splitlines()] == [1]


def test_non_finite_gradient_is_not_applied():
    model, tok = tiny_causal_lm(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rc, gen = ReinforceConfig(lr=1e-3, warmup_steps=0), GenerationConfig(max_new_tokens=4)
    opt, sched = make_optimizer(model, rc)
    inf = CallableReward(lambda p, c: [float("inf")] * len(c))
    with pytest.raises(NonFiniteError, match="reward"):
        reinforce_step(model, copy.deepcopy(model), None, tok, ["ab"], inf, ZERO, rc, gen, opt, sched, seed=0)
    huge = CallableReward(lambda p, c: [3e38] * len(c))      # finite, but r·Σ log π overflows float32
    rc_none = ReinforceConfig(lr=1e-3, warmup_steps=0, baseline="none")
    with pytest.raises(NonFiniteError, match="loss|gradient"):
        reinforce_step(model, copy.deepcopy(model), None, tok, ["ab", "cd"], huge, ZERO, rc_none, gen, opt, sched, seed=0)
    hook = model.lm_head.weight.register_hook(lambda g: g * float("inf"))   # finite loss, infinite gradient
    with pytest.raises(NonFiniteError, match="gradient norm"):
        reinforce_step(model, copy.deepcopy(model), None, tok, ["ab", "cd"], FRACTION_A, ZERO, rc, gen, opt, sched, seed=0)
    hook.remove()
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_a_nan_reward_model_is_one_line_and_exit_2(tiny_rl_config, tmp_path, capsys):
    import yaml

    from harness.cli import main
    from tests.tiny import tiny_classifier

    rm, rtok = tiny_classifier(0)
    with torch.no_grad():
        rm.classifier.weight.fill_(float("nan"))
    nan_rm = save(rm, rtok, tmp_path / "nan-rm")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_rl_config(reward_model=str(nan_rm), warp={"iterations": 1, "steps": 2})))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "iteration 1, run 1, step 1: reward is NaN/Inf" in err[0], err


def test_a_second_writer_is_refused(tiny_rl_config, tmp_path, capsys):
    import yaml

    from harness.cli import main
    from rl.rundir import RunDir

    mapping = tiny_rl_config(warp={"iterations": 1, "steps": 1, "save_every": 0}, engine={"name": "hf"})
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(mapping))
    with RunDir.open(out, config(mapping)):                 # a writer holds the directory
        assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 2
        assert "is in use by another warp run" in capsys.readouterr().err
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0   # released: it resumes


def test_storage_dtype_applies_to_intermediate_checkpoints_only(tiny_rl_config, tmp_path):
    out = warp(config(tiny_rl_config(warp={"iterations": 1, "steps": 3, "save_every": 2, "storage_dtype": "bfloat16"})),
               tmp_path / "run", progress=False)
    assert {t.dtype for t in weights(out / "iter1/run1/step_000002").values()} == {torch.bfloat16}
    for rel in ("sft", "iter1/run1/final", "iter1/slerp", "iter1/liti"):
        assert {t.dtype for t in weights(out / rel).values()} == {torch.float32}, rel
