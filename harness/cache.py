"""Result cache in EVAL_DIR: one entry per (content hash, metric, settings), and the content hashes.

An entry is `EVAL_DIR/cache/<metric>/<key>.json` (plus optional sidecar files written before it),
`key = sha256(json(hash, metric, settings))`. Every write is atomic, and the .json is written
last, so an entry that exists is complete; a failed or interrupted evaluation leaves the entries
of the points already done intact, and a re-run recomputes only the missing ones.

A model's content hash (`content_hash`) covers every file `from_pretrained` reads from its
directory — weights, config.json, generation_config.json (EOS ids), tokenizer files, chat
template — so editing any of them is a new point; the settings of an entry name everything else
a result depends on (see `harness.evaluate.score_settings`, `harness.bench.bench_settings`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from merge.io import atomic_write_json, atomic_write_text

from .manifest import HarnessError

HASH_SCHEME = 2   # what content_hash covers; bump when that changes (memoised hashes are then recomputed)


def model_files(directory: str | os.PathLike) -> list[Path]:
    """The files of a model directory that can change its behaviour, sorted by name: every regular
    file at its top level except hidden ones (locks, temporaries) and documentation (*.md).
    `from_pretrained` reads nothing below the top level (e.g. a WARM reward model's members/)."""
    directory = Path(directory)
    return sorted((f for f in directory.iterdir() if f.is_file() and not f.name.startswith(".")
                   and f.suffix.lower() != ".md"), key=lambda f: f.name)


def content_hash(directory: str | os.PathLike) -> str:
    """sha256 over the name and bytes of every file in `model_files(directory)`: a model's content hash."""
    files = model_files(directory)
    if not any(f.suffix == ".safetensors" for f in files):
        raise HarnessError(f"no *.safetensors weights in {directory}")
    h = hashlib.sha256(f"scheme {HASH_SCHEME}\n".encode())
    for f in files:
        h.update(f"{f.name}\n{f.stat().st_size}\n".encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


class HashIndex:
    """Content hashes of model directories, remembered in EVAL_DIR/hashes.json by the (name, size,
    mtime) of the same files `content_hash` reads, so an unchanged checkpoint is not re-read."""

    def __init__(self, eval_dir: str | os.PathLike) -> None:
        self.file = Path(eval_dir) / "hashes.json"
        try:
            self.known = json.loads(self.file.read_text(encoding="utf-8")) if self.file.is_file() else {}
        except (OSError, ValueError):
            self.known = {}
        if not isinstance(self.known, dict):
            self.known = {}

    def __call__(self, path: str | os.PathLike) -> str:
        stamp = [HASH_SCHEME] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in model_files(path)]
        key = str(Path(path).resolve())
        hit = self.known.get(key)
        if isinstance(hit, dict) and hit.get("stamp") == stamp:
            return hit["hash"]
        h = content_hash(path)
        self.known[key] = {"stamp": stamp, "hash": h}
        atomic_write_json(self.file, self.known)
        return h


def cache_key(content_hash: str, metric: str, settings: dict[str, Any]) -> str:
    blob = json.dumps({"hash": content_hash, "metric": metric, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _slug(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", metric)


class ResultCache:
    """Thin stateful wrapper over the cache folder."""

    def __init__(self, eval_dir: str | Path) -> None:
        self.root = Path(eval_dir) / "cache"

    def path(self, content_hash: str, metric: str, settings: dict[str, Any], suffix: str = ".json") -> Path:
        return self.root / _slug(metric) / (cache_key(content_hash, metric, settings) + suffix)

    def get(self, content_hash: str, metric: str, settings: dict[str, Any]) -> dict | None:
        p = self.path(content_hash, metric, settings)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a damaged entry is recomputed

    def put(self, content_hash: str, metric: str, settings: dict[str, Any], value: dict,
            records: list[dict] | None = None) -> None:
        if records is not None:
            atomic_write_text(self.path(content_hash, metric, settings, ".jsonl"),
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        atomic_write_json(self.path(content_hash, metric, settings),
                          {"hash": content_hash, "metric": metric, "settings": settings, "value": value})

    def records(self, content_hash: str, metric: str, settings: dict[str, Any]) -> list[dict]:
        p = self.path(content_hash, metric, settings, ".jsonl")
        return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
