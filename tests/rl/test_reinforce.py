import copy

import pytest
import torch

from rl.config import GenerationConfig, ReinforceConfig
from rl.reinforce import (baseline, kl_regularised_reward, make_optimizer, policy_gradient_loss, reinforce_step,
                          shaped_reward, warmup_lambda)
from rl.rewards import CallableReward
from rl.sampling import sample, token_logprobs
from tests.tiny import tiny_causal_lm

FRACTION_A = CallableReward(lambda p, c: [sum(ch == "a" for ch in x) / max(len(x), 1) for x in c])
ZERO = CallableReward(lambda p, c: [0.0] * len(c))


def test_rloo_baseline_matches_hand_computation():
    r = torch.tensor([1.0, 2.0, 6.0, 0.0, 4.0, 5.0])   # two prompts, k = 3
    expected = torch.tensor([(2 + 6) / 2, (1 + 6) / 2, (1 + 2) / 2, (4 + 5) / 2, (0 + 5) / 2, (0 + 4) / 2])
    assert torch.allclose(baseline(r, "rloo", 3), expected)
    assert torch.allclose(baseline(r, "mean", 3), torch.full((6,), 3.0))
    assert torch.equal(baseline(r, "none", 3), torch.zeros(6))
    with pytest.raises(ValueError):
        baseline(r, "rloo", 4)


def test_kl_regularised_reward_and_loss_gradient():
    r = torch.tensor([1.0, 0.5])
    lp = torch.tensor([-3.0, -2.0], requires_grad=True)
    la = torch.tensor([-2.0, -2.5])
    rb = kl_regularised_reward(r, lp, la, beta=0.1)
    assert torch.allclose(rb, torch.tensor([1.0 - 0.1 * (-1.0), 0.5 - 0.1 * 0.5]))
    assert not rb.requires_grad
    loss = policy_gradient_loss(lp, rb, torch.tensor([0.2, 0.2]))
    loss.backward()
    assert torch.allclose(lp.grad, -(rb - 0.2) / 2)


def test_shaped_reward_penalties():
    cfg = ReinforceConfig(unfinished_reward=-1.0, length_penalty=0.0005)
    r = shaped_reward(torch.tensor([0.8, 0.6]), torch.tensor([True, False]), torch.tensor([10, 16]), cfg)
    assert torch.allclose(r, torch.tensor([0.8 - 0.005, -1.0 - 0.008]))
    assert torch.equal(shaped_reward(torch.tensor([0.3]), torch.tensor([False]), torch.tensor([4]), ReinforceConfig()),
                       torch.tensor([0.3]))


def test_warmup_is_linear_then_constant():
    f = warmup_lambda(4)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_lambda(0)(0) == 1.0


def test_kl_penalty_and_r_beta_match_an_independent_computation():
    """kl_anchor and r_β from a step equal a plain forward of the pre-update policy and anchor at the
    sampling temperature: Σ_t [log softmax(z/T)_θ − log softmax(z/T)_anchor] over completion tokens."""
    from tests.harness.rundir import perturbed

    anchor, tok = tiny_causal_lm(0)
    policy = perturbed(copy.deepcopy(anchor), 0.05, seed=1)
    before = copy.deepcopy(policy)
    T, beta = 0.8, 0.3
    rc, gen = ReinforceConfig(lr=1e-3, warmup_steps=0, beta=beta), GenerationConfig(max_new_tokens=5, temperature=T)
    opt, sched = make_optimizer(policy, rc)
    res = reinforce_step(policy, anchor, None, tok, ["ab", "hello"], FRACTION_A, ZERO, rc, gen, opt, sched, seed=1,
                         ema_anchor=False)
    s = res.samples
    with torch.no_grad():
        def seq_logp(m):
            pos = (s.attention_mask.cumsum(-1) - 1).clamp(min=0)
            z = m(input_ids=s.input_ids, attention_mask=s.attention_mask, position_ids=pos).logits[:, :-1].double() / T
            lp = torch.log_softmax(z, -1).gather(-1, s.input_ids[:, 1:, None])[..., 0]
            return (lp * s.completion_mask[:, 1:]).sum(-1)
        kl = seq_logp(before) - seq_logp(anchor)
    assert abs(kl.mean().item()) > 1e-3                       # the policy differs from the anchor
    assert res.metrics["kl_anchor"] == pytest.approx(kl.mean().item(), abs=1e-4)
    reward = FRACTION_A(["ab", "hello"], s.completions)
    assert res.metrics["r_beta"] == pytest.approx((reward.double() - beta * kl).mean().item(), abs=1e-4)


def test_ema_anchor_starts_at_init_and_follows_mu():
    model, tok = tiny_causal_lm(0)
    mu = 0.25
    rc, gen = ReinforceConfig(lr=1e-2, warmup_steps=0, mu=mu, beta=0.1), GenerationConfig(max_new_tokens=5)
    anchor = copy.deepcopy(model)
    theta_init = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(anchor.state_dict()[k], v) for k, v in theta_init.items())
    opt, sched = make_optimizer(model, rc)
    expected = {k: v.clone() for k, v in theta_init.items()}
    for step in range(3):
        reinforce_step(model, anchor, None, tok, ["ab", "cd"], FRACTION_A, ZERO, rc, gen, opt, sched, seed=step)
        theta = model.state_dict()
        expected = {k: (1 - mu) * expected[k] + mu * theta[k] for k in expected}
        assert any(not torch.equal(theta[k], theta_init[k]) for k in theta)
        for k, v in anchor.state_dict().items():
            torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-7)


def test_sft_anchor_is_not_updated():
    model, tok = tiny_causal_lm(0)
    rc, gen = ReinforceConfig(lr=1e-2, warmup_steps=0, anchor="sft"), GenerationConfig(max_new_tokens=5)
    anchor = copy.deepcopy(model)
    before = {k: v.clone() for k, v in anchor.state_dict().items()}
    opt, sched = make_optimizer(model, rc)
    reinforce_step(model, anchor, anchor, tok, ["ab"], FRACTION_A, ZERO, rc, gen, opt, sched, seed=0, ema_anchor=False)
    assert all(torch.equal(anchor.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("kind,k", [("mean", 1), ("rloo", 2)])
def test_policy_gradient_raises_reward_on_toy_task(kind, k):
    """reward = fraction of 'a' in the completion: from ~1% (uniform over 100 chars) to > 50%."""
    model, tok = tiny_causal_lm(0)
    rc = ReinforceConfig(lr=1e-2, beta=0.0, batch_prompts=8 // k, samples_per_prompt=k, warmup_steps=0, baseline=kind)
    gen = GenerationConfig(max_new_tokens=8, temperature=1.0)
    anchor = copy.deepcopy(model)
    opt, sched = make_optimizer(model, rc)
    rewards = [reinforce_step(model, anchor, None, tok, (["hi", "yo", "ok", "no"] * 2)[: 8 // k], FRACTION_A, ZERO, rc, gen,
                              opt, sched, seed=s).metrics["reward"] for s in range(50)]
    assert sum(rewards[:5]) / 5 < 0.1
    assert sum(rewards[-5:]) / 5 > 0.5
