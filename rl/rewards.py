"""Reward models behind one interface: (prompts, completions) -> float32 tensor of scores.

- `ClassifierReward`: a sequence-classification model directory (e.g. the MiniLM reward model
  `warp train-rm` writes, or a hub sentiment classifier); score = P(positive label) of the
  completion (or of prompt + completion).
- `VaderReward`: VADER's compound score in [−1, 1], the never-optimised control reward.
- `load_reward(spec)`: "vader", a local directory, or a hub id.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch

from merge.errors import WarpError


class RewardError(WarpError):
    """A reward model cannot be loaded or used."""


@runtime_checkable
class RewardModel(Protocol):
    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor: ...


class VaderReward:
    """VADER compound sentiment of the completion, in [−1, 1] (rule-based, 0.06 ms/text)."""

    name = "vader"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self._analyzer.polarity_scores(c)["compound"] for c in completions], dtype=torch.float32)


def positive_label_index(config) -> int:
    """Index of the 'positive' class in a classifier config (label names, else the last class)."""
    for idx, label in (getattr(config, "id2label", None) or {}).items():
        if str(label).lower() in ("positive", "pos", "label_pos"):
            return int(idx)
    return int(config.num_labels) - 1


class ClassifierReward:
    """P(positive) from a sequence classifier. `with_prompt` scores prompt + completion together."""

    def __init__(self, path: str | os.PathLike, with_prompt: bool = False, batch_size: int = 64,
                 max_length: int = 128, device: str | torch.device = "cpu") -> None:
        from .models import load_classifier

        self.name = str(path)
        try:
            self.model, self.tokenizer = load_classifier(str(path))
        except WarpError as e:
            raise RewardError(f"cannot load reward model {path}: {e}") from None
        self.model.to(device).eval()
        self.positive = positive_label_index(self.model.config)
        self.with_prompt, self.batch_size, self.max_length, self.device = with_prompt, batch_size, max_length, device

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        texts = [p + c for p, c in zip(prompts, completions)] if self.with_prompt else list(completions)
        scores = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            logits = self.model(**enc).logits.float()
            scores.append(logits.softmax(-1)[:, self.positive].cpu())
        return torch.cat(scores) if scores else torch.zeros(0)


class CallableReward:
    """Wraps a user's function (prompts, completions) -> sequence of floats."""

    def __init__(self, fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]], name: str = "callable") -> None:
        self.fn, self.name = fn, name

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        return torch.as_tensor(self.fn(prompts, completions), dtype=torch.float32)


def load_reward(spec: str, base_dir: str | os.PathLike | None = None, **kwargs) -> RewardModel:
    """'vader' -> VaderReward; a directory (absolute, or relative to `base_dir`) or hub id -> ClassifierReward."""
    if spec == "vader":
        return VaderReward()
    path = Path(spec)
    if base_dir is not None and not path.is_absolute() and (Path(base_dir) / path).exists():
        path = Path(base_dir) / path
    return ClassifierReward(path if path.exists() else spec, **kwargs)


def task_rewards(reward_model: str, control_reward: str, with_prompt: bool, base_dir: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu") -> dict[str, RewardModel]:
    """The one way a run's rewards are built, for training, `warp eval` and the side-by-side judge:
    {"reward": the proxy reward (optimised), "control_reward": the control reward (never optimised)}.

    `with_prompt` (the config's `reward_with_prompt`) makes the proxy score prompt + completion;
    the control reward always scores the completion. Relative specs resolve against `base_dir`
    (the run directory)."""
    return {"reward": load_reward(reward_model, base_dir=base_dir, with_prompt=with_prompt, device=device)
            if reward_model != "vader" else VaderReward(),
            "control_reward": load_reward(control_reward, base_dir=base_dir) if control_reward else ZeroReward()}


class ZeroReward:
    """No control reward configured: zeros."""

    name = "none"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        return torch.zeros(len(completions), dtype=torch.float32)
