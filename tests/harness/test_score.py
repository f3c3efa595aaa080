"""KL estimators against exact enumeration, each record against an independent sample and forward
pass, and the other per-point metrics."""
from __future__ import annotations

import math

import pytest
import torch

from harness.manifest import Generation
from harness.metrics import distinct_n, kl_estimates, mean_se
from harness.cache import content_hash
from harness.score import liti_hash, score_policy, summarize
from tests.harness.rundir import perturbed
from tests.tiny import save, tiny_causal_lm

PROMPT = "ab"
T = 0.7


def peaky_lm(noise_seed: int | None):
    """Tiny Llama with sharpened logits and an EOS that is likely (p ≈ 0.15–0.25) after PROMPT,
    so the enumeration below exercises both branches (stop after 1 token / 2 tokens)."""
    m, tok = tiny_causal_lm(seed=0)
    if noise_seed is not None:
        perturbed(m, 0.02, noise_seed)
    with torch.no_grad():
        m.lm_head.weight.mul_(8)
        h = m.model(tok(PROMPT, return_tensors="pt").input_ids).last_hidden_state[0, -1]
        m.lm_head.weight[tok.eos_token_id] = 0.5 * h / h.norm()
    return m, tok


@torch.no_grad()
def exact_kl_two_tokens(p_model, q_model, tok, temperature: float) -> tuple[float, float]:
    """Exact sequence-level KL(p^T‖q^T) over completions of at most 2 tokens, by enumeration:
    y1 = EOS ends the completion; otherwise y2 ranges over the whole vocabulary (EOS included).
    KL = Σ_y1 p(y1) log p/q(y1) + Σ_{y1≠EOS} p(y1) Σ_y2 p(y2|y1) log p/q(y2|y1). Also returns p(EOS first)."""
    ids = tok(PROMPT, return_tensors="pt").input_ids
    lp = torch.log_softmax(p_model(ids).logits[0, -1].double() / temperature, -1)
    lq = torch.log_softmax(q_model(ids).logits[0, -1].double() / temperature, -1)
    kl = (lp.exp() * (lp - lq)).sum()
    eos = tok.eos_token_id
    y1 = torch.tensor([v for v in range(lp.numel()) if v != eos])
    seq = torch.cat([ids.repeat(len(y1), 1), y1[:, None]], dim=1)
    lp2 = torch.log_softmax(p_model(seq).logits[:, -1].double() / temperature, -1)
    lq2 = torch.log_softmax(q_model(seq).logits[:, -1].double() / temperature, -1)
    kl = kl + (lp[y1].exp() * (lp2.exp() * (lp2 - lq2)).sum(-1)).sum()
    return kl.item(), lp[eos].exp().item()


def test_mc_kl_matches_exact_enumeration():
    sft, tok = peaky_lm(None)
    pol, _ = peaky_lm(1)
    exact, p_eos = exact_kl_two_tokens(pol, sft, tok, T)
    assert 0.05 < p_eos < 0.5 and exact > 0.1  # both branches matter, KL clearly non-zero
    prompts = [{"id": str(i), "prompt": PROMPT} for i in range(4000)]
    res = score_policy(pol, tok, sft, prompts, {}, Generation(max_new_tokens=2, temperature=T), seed=0, batch_size=1000)
    m = res.metrics
    assert abs(m["kl_k1"] - exact) < 4 * m["kl_k1_se"], (m["kl_k1"], m["kl_k1_se"], exact)
    assert abs(m["kl_k3"] - exact) < 4 * m["kl_k3_se"], (m["kl_k3"], m["kl_k3_se"], exact)
    # the share of completions stopped by EOS after one token matches p(EOS first)
    first_eos = sum(r["length"] == 1 for r in res.records) / len(res.records)
    assert abs(first_eos - p_eos) < 4 * math.sqrt(p_eos * (1 - p_eos) / len(res.records))
    # and the untempered KL is a different quantity: the estimator must not be matching it by luck
    untempered, _ = exact_kl_two_tokens(pol, sft, tok, 1.0)
    assert abs(untempered - exact) > 8 * m["kl_k1_se"]


@torch.no_grad()
def test_each_record_matches_an_independent_sample_and_forward_pass():
    """Per completion, against plain transformers calls: its tokens are what `generate` samples at the
    configured temperature with the batch's seed; its kl_k1 / kl_k3 are the log-ratios of the POINT's
    model and π_sft, summed over those tokens (EOS included), from a forward pass on that one unpadded
    sequence with logits / T; its rewards are the reward functions applied to its own prompt and text."""
    sft, tok = tiny_causal_lm(seed=0)
    pol = perturbed(tiny_causal_lm(seed=0)[0], 0.05, seed=3)
    texts = ["hello", "a b c", "xyz!", "q", "the movie was", "ok"]
    prompts = [{"id": str(i), "prompt": p} for i, p in enumerate(texts)]
    gen, seed, bs = Generation(max_new_tokens=6, temperature=T), 3, 4
    rewards = {"reward": lambda ps, cs: torch.tensor([len(c) + 0.01 * len(p) for p, c in zip(ps, cs)], dtype=torch.float),
               "control_reward": lambda ps, cs: torch.tensor([float(c.count("a") - p.count("a")) for p, c in zip(ps, cs)])}
    res = score_policy(pol, tok, sft, prompts, rewards, gen, seed=seed, batch_size=bs)
    eos = tok.eos_token_id

    def sampled(temperature: float) -> list[list[int]]:
        out = []
        for b, start in enumerate(range(0, len(texts), bs)):
            tok.padding_side = "left"
            enc = tok(texts[start:start + bs], return_tensors="pt", padding=True)
            torch.manual_seed(seed + b)
            gen_ids = pol.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0, max_new_tokens=6,
                                   eos_token_id=[eos], pad_token_id=tok.pad_token_id)[:, enc.input_ids.shape[1]:]
            out += [row[: row.index(eos) + 1] if eos in row else row for row in gen_ids.tolist()]
        return out

    def logps(model, prompt_ids: list[int], ids: list[int]) -> torch.Tensor:
        seq = torch.tensor([prompt_ids + ids])
        lp = torch.log_softmax(model(seq).logits[0, :-1].double() / T, -1)
        return lp.gather(-1, seq[0, 1:, None])[-len(ids):, 0]

    tokens = sampled(T)
    kl = []
    for rec, ids in zip(res.records, tokens):
        assert rec["completion"] == tok.decode(ids, skip_special_tokens=True) and rec["length"] == len(ids)
        assert rec["finished"] == (ids[-1] == eos)
        log_ratio = logps(pol, tok(rec["prompt"]).input_ids, ids) - logps(sft, tok(rec["prompt"]).input_ids, ids)
        assert rec["kl_k1"] == pytest.approx(log_ratio.sum().item(), abs=1e-4)
        assert rec["kl_k3"] == pytest.approx((torch.expm1(-log_ratio) + log_ratio).sum().item(), abs=1e-4)
        assert rec["reward"] == pytest.approx(len(rec["completion"]) + 0.01 * len(rec["prompt"]), abs=1e-5)
        assert rec["control_reward"] == float(rec["completion"].count("a") - rec["prompt"].count("a"))
        kl.append(rec["kl_k1"])
    assert res.metrics["kl"] == pytest.approx(sum(kl) / len(kl)) and min(kl) != max(kl)
    assert sampled(1.0) != tokens          # the same seeds at T = 1 sample other tokens: T was the configured one


def test_kl_estimates_per_token_formulas():
    logp = torch.tensor([[0.0, -1.0, -2.0, 0.0]])
    logp_sft = torch.tensor([[0.0, -1.5, -1.0, -9.0]])
    mask = torch.tensor([[0, 1, 1, 0]])
    k1, k3 = kl_estimates(logp, logp_sft, mask)
    assert k1.item() == pytest.approx(0.5 + (-1.0))
    r1, r2 = math.exp(-0.5), math.exp(1.0)  # r = π_sft/π
    assert k3.item() == pytest.approx((r1 - 1 - math.log(r1)) + (r2 - 1 - math.log(r2)))


def test_token_logprobs_at_a_temperature_divide_the_logits():
    from rl.sampling import token_logprobs

    model, tok = tiny_causal_lm(seed=0)
    ids = tok("abcd", return_tensors="pt").input_ids
    att, mask = torch.ones_like(ids), torch.tensor([[0, 0, 1, 1]])
    with torch.no_grad():
        got = token_logprobs(model, ids, att, mask, temperature=0.5)
        logp = torch.log_softmax(model(input_ids=ids).logits / 0.5, dim=-1)
    expected = torch.tensor([[0.0, 0.0, logp[0, 1, ids[0, 2]].item(), logp[0, 2, ids[0, 3]].item()]])
    torch.testing.assert_close(got, expected)
    with torch.no_grad():
        assert not torch.allclose(token_logprobs(model, ids, att, mask), got)   # T = 1 differs


def test_mean_se_and_distinct_n():
    mean, se = mean_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and se == pytest.approx(math.sqrt(5 / 3) / 2)
    assert math.isnan(mean_se([1.0])[1])
    assert distinct_n(["a b a b", "a c"], 1) == pytest.approx(3 / 6)
    assert distinct_n(["a b a b", "a c"], 2) == pytest.approx(3 / 4)  # ab, ba, ab, ac -> 3 unique / 4
    assert math.isnan(distinct_n(["a"], 2))


def test_summarize_and_rewards_in_records():
    model, tok = tiny_causal_lm(seed=0)
    prompts = [{"id": str(i), "prompt": "hi"} for i in range(6)]
    rewards = {"reward": lambda p, c: torch.tensor([float(len(x)) for x in c]),
               "control_reward": lambda p, c: torch.ones(len(c))}
    res = score_policy(model, tok, None, prompts, rewards, Generation(max_new_tokens=4), seed=0, batch_size=4)
    assert math.isnan(res.metrics["kl"])  # no π_sft given
    assert [r["reward"] for r in res.records] == [float(len(r["completion"])) for r in res.records]
    assert res.metrics["control_reward"] == 1.0
    assert res.metrics["unfinished"] == pytest.approx(sum(not r["finished"] for r in res.records) / 6)
    again = summarize(res.records, ["reward", "control_reward"])
    assert again["reward"] == pytest.approx(sum(r["reward"] for r in res.records) / 6)


def test_fixed_seed_reproduces_completions():
    model, tok = tiny_causal_lm(seed=0)
    prompts = [{"id": str(i), "prompt": "hey"} for i in range(4)]
    a = score_policy(model, tok, model, prompts, {}, Generation(max_new_tokens=6), seed=5, batch_size=2)
    b = score_policy(model, tok, model, prompts, {}, Generation(max_new_tokens=6), seed=5, batch_size=2)
    assert [r["completion"] for r in a.records] == [r["completion"] for r in b.records]


def test_content_hashes(tmp_path):
    m, tok = tiny_causal_lm(seed=0)
    a = content_hash(save(m, tok, tmp_path / "a"))
    assert a == content_hash(save(m, tok, tmp_path / "b"))
    assert a != content_hash(save(perturbed(m, 0.01, 0), tok, tmp_path / "c"))
    assert liti_hash("s", "l", 0.0) == "s" and liti_hash("s", "l", 1.0) == "l"
    assert liti_hash("s", "l", 0.3) != liti_hash("s", "l", 0.5)


def test_load_policy_goes_through_the_project_loader_and_refuses_pickles(tmp_path, tiny_lm_dir):
    import shutil

    import torch

    from harness.manifest import HarnessError
    from harness.score import load_policy

    model, tok = load_policy(tiny_lm_dir)
    assert not model.training and tok.pad_token_id is not None
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_lm_dir, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(HarnessError, match="cannot load checkpoint"):
        load_policy(pickled)
