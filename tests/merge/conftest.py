"""Fixtures for merge tests: tiny Llama checkpoints on disk, 'fine-tuned' as init + small noise,
saved with different shard layouts (single file, small shards, other small shards)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.tiny import save, tiny_causal_lm


def finetuned(sd: dict, seed: int, scale: float = 0.02) -> dict:
    """init + N(0, scale²) on every float tensor (a task vector in every tensor, no degenerate angles)."""
    g = torch.Generator().manual_seed(seed)
    return {k: (v + scale * torch.randn(v.shape, generator=g)).to(v.dtype) if v.is_floating_point() else v.clone()
            for k, v in sd.items()}


@dataclass
class Ckpts:
    init: Path
    models: list
    init_sd: dict
    model_sds: list


def make_ckpts(root: Path, n_models: int = 3, dtype=torch.float32) -> Ckpts:
    model, tok = tiny_causal_lm(seed=0)
    model = model.to(dtype)
    init_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save(model, tok, root / "init")
    layouts = ["20KB", "50KB", "5GB", "30KB"]
    paths, sds = [], []
    for i in range(n_models):
        sd = finetuned(init_sd, seed=100 + i)
        model.load_state_dict(sd)
        model.save_pretrained(root / f"m{i + 1}", safe_serialization=True, max_shard_size=layouts[i % len(layouts)])
        tok.save_pretrained(root / f"m{i + 1}")
        paths.append(root / f"m{i + 1}")
        sds.append(sd)
    return Ckpts(root / "init", paths, init_sd, sds)


@pytest.fixture
def ckpts(tmp_path) -> Ckpts:
    return make_ckpts(tmp_path, n_models=3)
