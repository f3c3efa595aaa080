"""The TRL trainer backend: its reference model is WARP's EMA anchor, and both trainers learn."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from merge.config import ConfigError
from rl.rewards import CallableReward
from rl.sampling import sample
from rl.warp import warp
from tests.rl.conftest import config

pytest.importorskip("trl", reason="TRL is installed by the test command (CI requires it)")

FRACTION_A = CallableReward(lambda p, c: [sum(ch == "a" for ch in x) / max(len(x), 1) for x in c])


def test_trl_reference_model_is_the_ema_of_the_policy(tiny_rl_config, tmp_path):
    """After k steps, TRL's reference weights equal (1−μ)^k·θ_init + Σ μ(1−μ)^(k−t)·θ_t computed here
    from the policy's weights after each step (float64)."""
    from transformers import TrainerCallback

    mu = 0.2
    mapping = tiny_rl_config(trainer="trl", reinforce={"mu": mu, "samples_per_prompt": 2, "batch_prompts": 2,
                                                       "lr": 1e-3, "warmup_steps": 0},
                             warp={"iterations": 1, "runs": 1, "merge": False, "steps": 4, "save_every": 0})
    seen, box = [], {}

    class Capture(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            seen.append({k: v.detach().double().clone() for k, v in model.state_dict().items()})

    out = warp(config(mapping), tmp_path / "run", progress=False, callbacks=[Capture()],
               trainer_hook=lambda t: box.setdefault("trainer", t))
    init = {k: v.double() for k, v in load_file(str(out / "sft" / "model.safetensors")).items()}
    assert len(seen) == 4
    ema = dict(init)
    for theta in seen:
        ema = {k: (1 - mu) * ema[k] + mu * theta[k] for k in ema}
    ref = box["trainer"].ref_model.state_dict()
    assert all(ref[k].dtype == torch.float32 for k in ema)                # a float32 anchor keeps μ-sized steps
    moved = max(float((ema[k] - init[k]).abs().max()) for k in ema)
    assert moved > 1e-4                                                    # the anchor did move
    for k in ema:
        torch.testing.assert_close(ref[k].double(), ema[k], rtol=0, atol=1e-6)
    final = load_file(str(out / "iter1/run1/final" / "model.safetensors"))
    assert all(torch.equal(final[k], seen[-1][k].float()) for k in final)  # final/ is the trained policy
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["trainer"] == "trl" for r in rows)


@pytest.mark.parametrize("trainer", ["native", "trl"])
def test_both_trainers_raise_the_held_out_reward(tiny_rl_config, tmp_path, trainer):
    """Reward = fraction of 'a' in the completion (≈1% for the random tiny LM): held-out prompts,
    fixed sampling seed, before (π_sft) and after one run."""
    from rl.models import load_causal_lm

    mapping = tiny_rl_config(trainer=trainer, generation={"max_new_tokens": 8, "temperature": 1.0},
                             reinforce={"samples_per_prompt": 2, "batch_prompts": 4, "lr": 1e-2, "warmup_steps": 0,
                                        "baseline": "rloo", "beta": 0.01},
                             warp={"iterations": 1, "runs": 1, "merge": False, "steps": 40, "save_every": 0})
    out = warp(config(mapping), tmp_path / "run", progress=False, reward_fn=FRACTION_A)
    held = [json.loads(x)["prompt"] for x in (out / "prompts" / "test.jsonl").read_text().splitlines()] * 16

    def held_out(rel):
        model, tok = load_causal_lm(str(out / rel))
        s = sample(model, tok, held, max_new_tokens=8, temperature=1.0, seed=123)
        return FRACTION_A(held, s.completions).double()

    before, after = held_out("sft"), held_out("iter1/run1/final")
    se = float(((before.var() + after.var()) / len(held)).sqrt())
    gain = float(after.mean() - before.mean())
    assert float(before.mean()) < 0.05 and gain > 4 * se and float(after.mean()) > 2 * float(before.mean()), (
        float(before.mean()), float(after.mean()), se)


def test_trl_refuses_what_it_cannot_run(tiny_rl_config, tmp_path):
    with pytest.raises(ConfigError, match="samples_per_prompt ≥ 2"):
        warp(config(tiny_rl_config(trainer="trl")), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="PEFT"):
        warp(config(tiny_rl_config(trainer="trl", reinforce={"samples_per_prompt": 2, "lora": {"r": 2}})),
             tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
