import csv
import random

import pytest

from merge.config import from_mapping
from rl.config import RLConfig

POS = ["good", "great", "happy", "love", "nice", "fun"]
NEG = ["bad", "sad", "awful", "hate", "poor", "dull"]


@pytest.fixture
def tiny_csv(tmp_path):
    """60 labelled texts: positive ones use positive words, negative ones negative words."""
    rng = random.Random(0)
    path = tmp_path / "texts.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "sentiment"])
        for i in range(60):
            label = ["positive", "negative", "neutral"][i % 3]
            words = POS if label == "positive" else NEG if label == "negative" else POS + NEG
            w.writerow([" ".join(rng.choice(words) for _ in range(6)) + f" {i}", label])
    return path


@pytest.fixture
def tiny_rl_config(tiny_lm_dir, tiny_rm_dir, tiny_csv):
    """A config factory for a tiny WARP run; keyword overrides go into the named sections."""

    def make(**sections):
        base = {
            "policy": str(tiny_lm_dir), "reward_model": str(tiny_rm_dir), "control_reward": "vader",
            "data": {"dataset": str(tiny_csv), "prompt_words": 2, "validation_fraction": 0.2, "test_fraction": 0.2},
            "generation": {"max_new_tokens": 6},
            "reinforce": {"batch_prompts": 2, "lr": 1e-3, "warmup_steps": 1},
            "warp": {"iterations": 2, "runs": 2, "steps": 3, "save_every": 2, "state_every": 1},
            "eval_prompts": 4, "threads": 1,
        }
        for k, v in sections.items():
            if isinstance(v, dict):
                base.setdefault(k, {}).update(v)
            else:
                base[k] = v
        return base

    return make


def config(mapping) -> RLConfig:
    return from_mapping(RLConfig, mapping)
