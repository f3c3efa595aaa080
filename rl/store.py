"""The checkpoint store of a run directory: checkpoints by their path relative to RUN_DIR, and the
WARP loop's merges, which go through the same streamed merge as `warp merge`
(`merge.merge_checkpoints`): tensors are read one at a time from disk, so a policy larger than
RAM merges too, and the result equals the in-memory merge bit for bit."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from merge import merge_checkpoints


class CheckpointStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def exists(self, rel: str) -> bool:
        """A checkpoint is there (written atomically: present means complete)."""
        return (self.root / rel / "config.json").is_file()

    def merge(self, method: str, out: str, init: str, models: Sequence[str], params: Mapping[str, Any]) -> str:
        """Checkpoint `out` = `method`(init, models; params), streamed from disk, unless it exists."""
        if not self.exists(out):
            merge_checkpoints(method, [self.path(m) for m in models], self.path(out), init=self.path(init),
                              params=dict(params), overwrite=True, progress=False, relative_paths=True)
        return out
