"""Reading a run directory: `RUN_DIR/manifest.json`, its checkpoints and its prompt files.

This is the only thing the harness reads from a run. The manifest's schema lives in one module,
`rl.contract` (the RL loop writes through it, the harness reads through it); this module turns a
contract violation into a `HarnessError` naming the file and key, and reads the prompt files.
"""
from __future__ import annotations

import json
from pathlib import Path

from merge.errors import WarpError
from rl.config import GenerationConfig as Generation
from rl.contract import ROLES, Checkpoint, ContractError, Manifest, Task, read_manifest

__all__ = ["HarnessError", "Generation", "Checkpoint", "Manifest", "Task", "ROLES", "load_manifest", "load_prompts"]


class HarnessError(WarpError):
    """Bad input to the harness: a missing or malformed manifest, checkpoint, prompt file, option."""


def load_manifest(run_dir: str | Path) -> Manifest:
    """Read and validate RUN_DIR/manifest.json (rl.contract): fields, roles, and that every prompt
    file and checkpoint exists. Raises HarnessError naming the file and the key at fault."""
    try:
        return read_manifest(run_dir)
    except ContractError as e:
        raise HarnessError(str(e)) from None


def load_prompts(path: Path, n: int | None = None) -> list[dict]:
    """The first `n` records {"id", "prompt"} of a JSON-lines prompt file (all when n is None)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise HarnessError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                raise HarnessError(f"{path}:{lineno}: expected an object with a string 'prompt'")
            out.append({"id": str(rec.get("id", lineno)), "prompt": rec["prompt"]})
            if n is not None and len(out) >= n:
                break
    if not out:
        raise HarnessError(f"{path}: no prompts")
    return out
