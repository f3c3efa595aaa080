"""Reward models: train one (backbone + 2-label head on positive/negative texts), WARM (M reward
models from the same init, uniformly weight-averaged with `merge`), and the `rm:<name>` specs
that train once with the default config and cache the result under $WARP_CACHE.

WARM (Ramé et al. 2024, "WARM: On the Benefits of Weight Averaged Reward Models"): the M members
share the pretrained backbone AND the head's initial values; they differ in seed (data order,
dropout). θ_WARM = (1/M)·Σ_m θ_m, by merge.average.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

import merge
from merge.config import ConfigError, from_mapping, to_mapping
from merge.io import atomic_directory, atomic_write_json
from merge.threads import set_threads

from .data import DataConfig, Example, labelled, load_splits
from .models import cache_root, load_classifier, write_checkpoint
from .rewards import RewardError, positive_label_index
from .stats import paired_difference

LABELS = {0: "negative", 1: "positive"}


@dataclass
class RewardTrainConfig:
    """`warp train-rm` config (defaults = DESIGN's measured set-up: ~86% held-out, ~120 s on 2 cores)."""

    backbone: str = "minilm-l6"
    data: DataConfig = field(default_factory=DataConfig)
    train_per_class: int = 2000
    eval_per_class: int = 500
    batch_size: int = 32
    max_length: int = 64
    lr: float = 5e-5
    epochs: int = 1
    head_seed: int = 0                  # the shared head initialisation (WARM: same init for all members)
    label_noise: list[float] = field(default_factory=lambda: [0.3])   # WARM comparison: flipped train-label fractions
    threads: Optional[int] = None

    def validate(self) -> None:
        for name in ("train_per_class", "eval_per_class", "batch_size", "max_length", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), got {self.lr}")
        for p in self.label_noise:
            if not 0 <= p < 0.5:
                raise ConfigError(f"label_noise values must be in [0, 0.5), got {p}")


def rm_datasets(cfg: RewardTrainConfig) -> tuple[list[Example], list[Example]]:
    """(train, held-out): balanced pos/neg from the train split, and from validation + test."""
    splits = load_splits(cfg.data)
    train = labelled(splits["train"], cfg.train_per_class)
    held = labelled(splits["validation"] + splits["test"], cfg.eval_per_class)
    if not train or len({e.label for e in train}) < 2:
        raise RewardError(f"dataset {cfg.data.dataset!r} has no positive and negative training examples "
                          f"(labels {cfg.data.positive_labels} / {cfg.data.negative_labels})")
    return train, held


def flip_labels(examples: Sequence[Example], fraction: float, seed: int) -> list[Example]:
    """A copy with round(fraction·N) labels flipped (a fixed, seeded corruption shared by all members)."""
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    flip = set(idx[:round(fraction * len(examples))])
    return [Example(e.id, e.text, 1 - e.label) if i in flip else e for i, e in enumerate(examples)]


def init_classifier(cfg: RewardTrainConfig):
    """Backbone + a 2-label head whose initial values depend only on `head_seed` (WARM's shared init)."""
    torch.manual_seed(cfg.head_seed)
    return load_classifier(cfg.backbone, num_labels=2, id2label=dict(LABELS))


def train_classifier(cfg: RewardTrainConfig, train: Sequence[Example], seed: int, progress: bool = True):
    """Fine-tune from the shared init on (text, label), data order and dropout from `seed`."""
    from tqdm.auto import tqdm

    model, tok = init_classifier(cfg)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    model.train()
    n_batches = cfg.epochs * ((len(train) + cfg.batch_size - 1) // cfg.batch_size)
    bar = tqdm(total=n_batches, desc=f"reward model seed {seed}", disable=not progress, dynamic_ncols=True)
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        for i in range(0, len(order), cfg.batch_size):
            batch = [train[j] for j in order[i:i + cfg.batch_size]]
            enc = tok([e.text for e in batch], padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt")
            loss = model(**enc, labels=torch.tensor([e.label for e in batch])).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval(), tok


@torch.no_grad()
def positive_probs(model, tok, texts: Sequence[str], max_length: int = 64, batch_size: int = 64) -> torch.Tensor:
    """P(positive) per text, [N]."""
    pos = positive_label_index(model.config)
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out.append(model(**enc).logits.float().softmax(-1)[:, pos])
    return torch.cat(out) if out else torch.zeros(0)


def accuracy(probs: torch.Tensor, labels: Sequence[int]) -> float:
    """Fraction of (P(positive) > 0.5) == label."""
    return float(((probs > 0.5).long() == torch.tensor(list(labels))).float().mean())


def _score(model, tok, held: Sequence[Example], cfg: RewardTrainConfig) -> torch.Tensor:
    return positive_probs(model, tok, [e.text for e in held], cfg.max_length)


def _prepare(cfg: RewardTrainConfig, out: str | Path, overwrite: bool) -> tuple[Path, list, list]:
    """Threads, the refusal of an existing `out`, and the train / held-out examples."""
    set_threads(cfg.threads)
    out = Path(out)
    if out.exists() and not overwrite:
        raise RewardError(f"{out} already exists (pass --overwrite to replace it)")
    return (out, *rm_datasets(cfg))


def train_rm(cfg: RewardTrainConfig, seed: int, out: str | Path, overwrite: bool = False, progress: bool = True) -> dict:
    """Train one reward model, save it (atomic) with `rm_metrics.json` (held-out accuracy)."""
    out, train, held = _prepare(cfg, out, overwrite)
    t0 = time.perf_counter()
    model, tok = train_classifier(cfg, train, seed, progress)
    seconds = time.perf_counter() - t0
    acc = accuracy(_score(model, tok, held, cfg), [e.label for e in held])
    metrics = {"seed": seed, "held_out_accuracy": acc, "n_train": len(train), "n_held_out": len(held),
               "train_seconds": round(seconds, 1), "config": to_mapping(cfg)}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        write_checkpoint(model, tok, tmp)
        atomic_write_json(tmp / "rm_metrics.json", metrics)
    return metrics


def warm(cfg: RewardTrainConfig, seeds: Sequence[int], out: str | Path, overwrite: bool = False, progress: bool = True) -> dict:
    """WARM: M members (same init, seeds `seeds`) on clean labels and on each `label_noise` level;
    compares on the clean held-out set the weight average vs each member vs the prediction
    ensemble (mean of P(positive)). Saves the clean-label WARM model (and its members) to `out`."""
    out, train, held = _prepare(cfg, out, overwrite)
    labels = [e.label for e in held]
    report = {"members": list(seeds), "n_train": len(train), "n_held_out": len(held), "config": to_mapping(cfg), "noise": {}}
    saved, predictions = None, {}
    for noise in [0.0] + [p for p in cfg.label_noise if p > 0]:
        data = flip_labels(train, noise, seed=12345) if noise else list(train)
        members = [train_classifier(cfg, data, s, progress) for s in seeds]
        probs = [_score(m, t, held, cfg) for m, t in members]
        tok = members[0][1]
        warm_model, _ = init_classifier(cfg)
        warm_model.load_state_dict(merge.average([m.state_dict() for m, _ in members]))
        warm_model.eval()
        ens_probs, warm_probs = torch.stack(probs).mean(0), _score(warm_model, tok, held, cfg)
        row = {"members": [accuracy(p, labels) for p in probs], "ensemble": accuracy(ens_probs, labels),
               "warm": accuracy(warm_probs, labels)}
        row["member_mean"] = sum(row["members"]) / len(row["members"])
        row["paired"] = paired_accuracy_differences(warm_probs, ens_probs, probs, labels)
        report["noise"][str(noise)] = row
        predictions[str(noise)] = {"warm": warm_probs.tolist(), "ensemble": ens_probs.tolist(),
                                   **{f"member_seed{s}": p.tolist() for s, p in zip(seeds, probs)}}
        if noise == 0.0:
            saved = (warm_model, tok, members)
    warm_model, tok, members = saved
    report["held_out_accuracy"] = report["noise"]["0.0"]["warm"]
    with atomic_directory(out, overwrite=overwrite) as tmp:
        write_checkpoint(warm_model, tok, tmp)
        for s, (m, t) in zip(seeds, members):
            write_checkpoint(m, t, tmp / "members" / f"seed{s}")
        atomic_write_json(tmp / "rm_metrics.json", report)
        atomic_write_json(tmp / "held_out_predictions.json",
                          {"ids": [e.id for e in held], "labels": labels, "p_positive": predictions})
    return report


def paired_accuracy_differences(warm_probs: torch.Tensor, ens_probs: torch.Tensor, member_probs: Sequence[torch.Tensor],
                                labels: Sequence[int]) -> dict:
    """Per-example correctness differences on the same held-out examples, each with a bootstrap 95%
    interval over examples: WARM − mean member, WARM − ensemble, WARM − each member."""
    y = torch.tensor(list(labels))
    correct = lambda p: ((p > 0.5).long() == y).double().numpy()  # noqa: E731
    w = correct(warm_probs)
    members = [correct(p) for p in member_probs]
    out = {"warm_minus_member_mean": paired_difference(w, sum(members) / len(members)),
           "warm_minus_ensemble": paired_difference(w, correct(ens_probs))}
    for i, m in enumerate(members):
        out[f"warm_minus_member{i}"] = paired_difference(w, m)
    return out


# ---- rm:<name> specs ---------------------------------------------------------------------------

BUILTIN_RMS = {"tweets-minilm": RewardTrainConfig()}


def check_reward_spec(spec: str) -> str:
    """The spec, checked without training anything: a known `rm:<name>`, an existing directory
    (returned absolute), 'vader' or a hub id. RewardError naming what is wrong."""
    if spec.startswith("rm:"):
        if spec[3:] not in BUILTIN_RMS:
            raise RewardError(f"unknown reward model {spec!r} (builtin: {', '.join('rm:' + n for n in BUILTIN_RMS)})")
        return spec
    return resolve_reward_spec(spec)


def resolve_reward_spec(spec: str, progress: bool = True) -> str:
    """A reward spec as written into the manifest: 'vader'; `rm:<name>` -> the cached reward-model
    directory (trained once with the builtin config, atomically); a local dir -> its absolute path;
    else a hub id, unchanged."""
    if spec == "vader":
        return spec
    if spec.startswith("rm:"):
        name = spec[3:]
        if name not in BUILTIN_RMS:
            raise RewardError(f"unknown reward model {spec!r} (builtin: {', '.join('rm:' + n for n in BUILTIN_RMS)})")
        cfg = BUILTIN_RMS[name]
        digest = hashlib.sha256(json.dumps(to_mapping(cfg), sort_keys=True).encode()).hexdigest()[:10]
        out = cache_root() / "reward_models" / f"{name}-{digest}"
        if not (out / "config.json").exists():
            train_rm(cfg, seed=0, out=out, overwrite=True, progress=progress)
        return str(out)
    path = Path(spec).expanduser()
    if path.exists():
        return str(path.resolve())
    if spec.startswith((".", "/", "~")):
        raise RewardError(f"reward model directory {spec} does not exist")
    return spec


def load_train_config(path: str | None) -> RewardTrainConfig:
    from merge.config import load_config

    return load_config(RewardTrainConfig, path) if path else from_mapping(RewardTrainConfig, {})
