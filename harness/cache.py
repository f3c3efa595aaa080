"""Result cache in EVAL_DIR: one entry per (checkpoint content hash, metric, settings).

An entry is `EVAL_DIR/cache/<metric>/<key>.json` (plus optional sidecar files written before it),
`key = sha256(json(hash, metric, settings))`. Every write is atomic, and the .json is written
last, so an entry that exists is complete; a failed or interrupted evaluation leaves the entries
of the points already done intact, and a re-run recomputes only the missing ones.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from merge.io import atomic_write_json, atomic_write_text


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
