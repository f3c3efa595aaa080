"""Streamed merges of Hugging Face checkpoint directories (safetensors, sharded or not).

Inputs are read one tensor at a time (`safetensors.safe_open`); every registered method
(`merge.registry`) is applied to that tensor by the same function the in-memory merge uses, so the
results are identical; the output shards are planned from the input headers up front (the output
has init's dtypes and shapes), so each shard's safetensors header is written first and tensors are
appended as they are computed: peak memory is a few tensors, not a model or a shard. Two worker
threads read (through the file mapping) and merge the next tensors while a writer thread writes
the previous ones in order; the chunked arithmetic runs with one intra-op thread (`merge.threads`:
the bits do not depend on the thread count, and no OpenMP barriers), so both cores do useful
work. The output directory appears atomically (`merge.io`).
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import struct
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from .checks import check_finite, check_shapes
from .errors import MergeError
from .io import atomic_directory, atomic_write_json, atomic_write_text
from .registry import get_method, params_dict
from .state_dict import warn_degenerate
from .threads import one_intra_op_thread

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"   # recognised only to refuse it with a clear message
RECIPE_FILE = "merge_recipe.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
# Files copied from the init (or first model) dir: the config, generation config and tokenizer.
COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "vocab.txt",
              "merges.txt", "chat_template.jinja", "chat_template.json", "preprocessor_config.json")

_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}
_DTYPES = {v: k for k, v in _DTYPE_NAMES.items()}


class CheckpointError(MergeError):
    """A checkpoint directory is missing, unreadable, pickled (never loaded), or inconsistent."""


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
class Checkpoint:
    """Read-only view of a model directory's weights: key → shape/dtype from the headers, and
    `get(key)` reading one tensor. Safetensors only: nothing loads a pickle from a user path."""

    def __init__(self, path: str | os.PathLike, name: str | None = None):
        self.path = Path(path)
        self.name = name or str(self.path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.name}: not a directory")
        self.shapes: dict[str, tuple] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.file_of: dict[str, str] = {}
        files = self._weight_files()
        for fname in files:
            self._read_header(fname)
        if not self.shapes:
            raise CheckpointError(f"{self.name}: no tensors in {', '.join(files)}")

    def _weight_files(self) -> list[str]:
        p = self.path
        if (p / SAFE_INDEX).is_file():
            return self._index_files(SAFE_INDEX)
        if (p / SAFE_SINGLE).is_file():
            return [SAFE_SINGLE]
        safes = sorted(f.name for f in p.glob("*.safetensors"))
        if safes:
            return safes
        pickled = PICKLE_INDEX if (p / PICKLE_INDEX).is_file() else PICKLE_SINGLE if (p / PICKLE_SINGLE).is_file() else None
        if pickled is None:
            raise CheckpointError(f"{self.name}: no model weights ({SAFE_SINGLE}, {SAFE_INDEX}, or *.safetensors)")
        raise CheckpointError(f"{self.name}: only pickled weights ({pickled}), and pickled weights are not loaded; "
                              "convert them to safetensors (save_pretrained(..., safe_serialization=True))")

    def _index_files(self, index: str) -> list[str]:
        try:
            weight_map = json.loads((self.path / index).read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{self.path / index}: unreadable index ({e})") from None
        files = list(dict.fromkeys(weight_map.values()))
        for f in files:
            if not (self.path / f).is_file():
                raise CheckpointError(f"{self.path / index} names shard {f}, which does not exist")
        return files

    def _read_header(self, fname: str) -> None:
        from safetensors import safe_open

        path = self.path / fname
        try:
            with safe_open(str(path), framework="pt") as h:
                for k in h.keys():
                    sl = h.get_slice(k)
                    self._add(k, tuple(sl.get_shape()), _DTYPES.get(sl.get_dtype()), fname)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None

    def _add(self, key: str, shape: tuple, dtype: Optional[torch.dtype], fname: str) -> None:
        if dtype is None:
            raise CheckpointError(f"{self.name}: tensor {key!r} has an unsupported dtype")
        if key in self.file_of:
            raise CheckpointError(f"{self.name}: tensor {key!r} appears in both {self.file_of[key]} and {fname}")
        self.shapes[key], self.dtypes[key], self.file_of[key] = shape, dtype, fname

    def keys(self) -> list[str]:
        return list(self.shapes)

    def get(self, key: str, copy: bool = True) -> torch.Tensor:
        """One tensor. copy=True: in process memory. copy=False: a view of the file mapping (no copy;
        the pages are read when touched), valid after the handle is closed, dropped with the tensor."""
        from safetensors import safe_open

        fname = self.file_of[key]
        # A fresh handle per tensor: a long-lived handle keeps every page it ever touched in this
        # process's RSS (the whole model, by the end); here each mapping goes with its tensor.
        with safe_open(str(self.path / fname), framework="pt") as h:
            mapped = h.get_tensor(key)
        if not copy:
            return mapped
        t = torch.empty_like(mapped, memory_format=torch.contiguous_format)
        t.copy_(mapped)
        return t


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a model directory, in memory (for tests and small models)."""
    ck = Checkpoint(path)
    return {k: ck.get(k) for k in ck.keys()}


# ------------------------------------------------------------------------------------------------
# Writing: shards planned from shapes, header first, tensors appended as computed
# ------------------------------------------------------------------------------------------------
@dataclass
class Shard:
    name: str
    keys: list[str] = field(default_factory=list)
    nbytes: int = 0


def plan_shards(keys: Sequence[str], shapes: Mapping[str, tuple], dtypes: Mapping[str, torch.dtype],
                max_shard_bytes: int) -> list[Shard]:
    """Greedy shards of at most `max_shard_bytes` (a larger single tensor gets its own shard)."""
    shards: list[Shard] = [Shard("")]
    for k in keys:
        n = _nbytes(shapes[k], dtypes[k])
        if shards[-1].keys and shards[-1].nbytes + n > max_shard_bytes:
            shards.append(Shard(""))
        shards[-1].keys.append(k)
        shards[-1].nbytes += n
    if len(shards) == 1:
        shards[0].name = SAFE_SINGLE
    else:
        for i, s in enumerate(shards, 1):
            s.name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
    return shards


def _nbytes(shape: tuple, dtype: torch.dtype) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n * torch.empty((), dtype=dtype).element_size()


def safetensors_header(shard: Shard, shapes: Mapping[str, tuple], dtypes: Mapping[str, torch.dtype]) -> bytes:
    """The 8-byte length + JSON header of a safetensors file holding `shard.keys` in that order."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for k in shard.keys:
        n = _nbytes(shapes[k], dtypes[k])
        header[k] = {"dtype": _DTYPE_NAMES[dtypes[k]], "shape": list(shapes[k]), "data_offsets": [offset, offset + n]}
        offset += n
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-(8 + len(body)) % 8)   # the data section starts 8-byte aligned
    return struct.pack("<Q", len(body)) + body


def _tensor_bytes(t: torch.Tensor):
    t = t.contiguous().reshape(-1)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.view(torch.uint8).numpy()


# ------------------------------------------------------------------------------------------------
# The streamed merge
# ------------------------------------------------------------------------------------------------
def _open_inputs(init: Optional[str | os.PathLike], models: Sequence[str | os.PathLike],
                 uses_init: bool) -> tuple[Optional[Checkpoint], list[Checkpoint]]:
    ck_init = Checkpoint(init, name=f"init {init}") if uses_init else None
    ck_models = [Checkpoint(m, name=f"models[{i}] {m}") for i, m in enumerate(models)]
    return ck_init, ck_models


def merge_checkpoints(method: str, models: Sequence[str | os.PathLike], out: str | os.PathLike,
                      init: Optional[str | os.PathLike] = None, params: Mapping[str, Any] | None = None,
                      overwrite: bool = False,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, progress: bool = True,
                      recipe_extra: Mapping[str, Any] | None = None, relative_paths: bool = False) -> Path:
    """Merge model directories with registered `method` into the new directory `out`, streamed.

    `init` is required by methods that use θ_init (slerp, liti, task_arithmetic, ties, dare).
    Every input is checked (existence, key sets, shapes, parameters, where `out` goes) before
    anything is written; a NaN/Inf in an input tensor is found as that tensor is read, and the
    temporary output is removed (MergeError naming the input and key): `out` never appears.
    Returns the output path. The result equals `merge.merge_state_dicts` on the loaded inputs.
    `relative_paths`: the recipe names the inputs relative to `out` (a run directory that can move).
    """
    m = get_method(method)
    models = [Path(p) for p in models]
    m.check_count(len(models))
    p = m.make_params(len(models), params)
    out = Path(out)
    if m.uses_init and init is None:
        raise MergeError(f"{method} needs --init")
    check_out(out, ([Path(init)] if m.uses_init else []) + models, overwrite)
    if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) or max_shard_bytes <= 0:
        raise MergeError(f"max_shard_bytes must be a positive integer, got {max_shard_bytes!r}")
    ck_init, ck_models = _open_inputs(init, models, m.uses_init)
    ref = ck_init if ck_init is not None else ck_models[0]
    rest = ck_models if ck_init is not None else ck_models[1:]
    check_shapes(ref.shapes, [c.shapes for c in rest], ref.name, [c.name for c in rest])
    keys = ref.keys()
    shards = plan_shards(keys, ref.shapes, ref.dtypes, max_shard_bytes)
    try:
        with atomic_directory(out, overwrite=overwrite) as tmp, one_intra_op_thread():
            degenerate = _stream(m, p, ref, ck_init, ck_models, shards, tmp, progress)
            if len(shards) > 1:
                atomic_write_json(tmp / SAFE_INDEX, {
                    "metadata": {"total_size": sum(s.nbytes for s in shards)},
                    "weight_map": {k: s.name for s in shards for k in s.keys}})
            copied = _copy_side_files(ref.path, tmp)
            recipe = {
                "format": 1,
                "method": method,
                "params": params_dict(p),
                "init": _recorded(Path(init), out, relative_paths) if m.uses_init else None,
                "models": [_recorded(x, out, relative_paths) for x in models],
                "output": {"tensors": len(keys), "total_size": sum(s.nbytes for s in shards),
                           "shards": [s.name for s in shards], "copied_from_reference": copied},
                "lerp_fallback_tensors": degenerate,
                **dict(recipe_extra or {}),
            }
            atomic_write_json(tmp / RECIPE_FILE, recipe)
            atomic_write_text(tmp / "README.md", model_card(recipe))
    except OSError as e:   # e.g. disk full mid-merge: one line; atomic_directory removed the temporary
        raise MergeError(f"writing {out} failed: {e.strerror or e}" + (f" ({e.filename})" if e.filename else "")) from None
    warn_degenerate(method, degenerate)
    return out


def check_out(out: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    """Refuse, before any work, an output that exists (unless `overwrite`), cannot be created (its
    nearest existing ancestor is not a writable directory), is an input, lies inside one, or holds
    one (replacing it would delete it)."""
    if out.exists() and not overwrite:
        raise MergeError(f"{out} already exists (pass --overwrite to replace it)")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MergeError(f"cannot create --out {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MergeError(f"cannot create --out {out}: {parent} is not writable (permission denied or read-only)")
    o = out.resolve()
    for src in inputs:
        s = src.resolve()
        if o == s:
            raise MergeError(f"--out {out} is also an input; write the merge somewhere else")
        if s in o.parents:
            raise MergeError(f"--out {out} is inside the input {src}; write the merge somewhere else")
        if o in s.parents:
            raise MergeError(f"--out {out} holds the input {src}, which replacing it would delete; "
                             "write the merge somewhere else")


def _stream(m, p, ref: Checkpoint, ck_init: Optional[Checkpoint], ck_models: list[Checkpoint],
            shards: list[Shard], tmp: Path, progress: bool, workers: int = 2) -> list[str]:
    """Read → apply → write, pipelined: `workers` threads read and merge the next tensors while the
    writer thread writes the previous ones, in order."""
    from tqdm.auto import tqdm

    order = [(s, k) for s in shards for k in s.keys]
    inputs = ([ck_init] if ck_init is not None else []) + ck_models

    def read(key: str):
        # Mapped, not copied: the arithmetic reads each input in place (one pass fewer over memory);
        # touching one byte per page here faults the pages in on the reader thread, not the main one.
        xs = [ck_init.get(key, copy=False) if ck_init is not None else None] + [c.get(key, copy=False) for c in ck_models]
        for x in xs:
            if x is not None and x.numel() and x.is_contiguous():
                x.reshape(-1).view(torch.uint8)[::4096].sum()
        return xs[0], xs[1:]

    def work(key: str):
        """Read and merge one tensor (on a worker thread; torch releases the GIL in the arithmetic)."""
        x_init, xs = read(key)
        x_ref = x_init if x_init is not None else xs[0]
        if not x_ref.is_floating_point():
            return x_ref, False
        named = [(ck.name, {key: x}) for ck, x in zip(inputs, ([x_init] if x_init is not None else []) + xs)]
        if not m.checks_finite:
            check_finite(named)
        try:
            y, deg = m.apply(key, x_init, xs, p)
        except MergeError:
            if m.checks_finite:
                check_finite(named)   # a NaN/Inf input made apply fail: name it
            raise
        return y.to(x_ref.dtype), deg

    degenerate: list[str] = []
    bar = tqdm(total=len(order), unit="tensor", desc=f"merge {m.name}", disable=not progress)
    writes: queue.Queue = queue.Queue(maxsize=2)
    errors: list[BaseException] = []

    def writer():
        f = None
        while (item := writes.get()) is not None:
            if errors:   # after a failure only drain the queue, so the main thread's put() never blocks
                continue
            try:
                kind, payload = item
                if kind == "open":
                    if f is not None:
                        f.close()
                    f = open(tmp / payload[0], "wb")
                    f.write(payload[1])
                elif f is not None:
                    f.write(_tensor_bytes(payload))
            except BaseException as e:  # reported to the main thread below
                errors.append(e)
        try:
            if f is not None:
                f.close()
        except OSError as e:
            errors.append(e)

    wt = threading.Thread(target=writer, daemon=True)
    wt.start()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            inflight = workers + 1   # bounded: peak memory stays a few tensors
            pending = deque(pool.submit(work, k) for _, k in order[:inflight])
            nxt = len(pending)
            current = None
            for shard, key in order:
                if shard is not current:
                    writes.put(("open", (shard.name, safetensors_header(shard, ref.shapes, ref.dtypes))))
                    current = shard
                y, deg = pending.popleft().result()
                if nxt < len(order):
                    pending.append(pool.submit(work, order[nxt][1]))
                    nxt += 1
                if deg:
                    degenerate.append(key)
                if tuple(y.shape) != ref.shapes[key]:
                    raise MergeError(f"key {key!r}: merged shape {tuple(y.shape)} != {ref.shapes[key]}")
                if errors:
                    break
                writes.put(("tensor", y))
                bar.update(1)
            for f in pending:
                f.cancel()
    finally:
        writes.put(None)
        wt.join()
        bar.close()
    if errors:
        raise errors[0]
    return degenerate


def _copy_side_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in COPY_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def _recorded(path: Path, out: Path, relative: bool) -> str:
    """How the recipe names an input: absolute, or relative to the output directory."""
    return os.path.relpath(path.resolve(), out.resolve()) if relative else str(path.resolve())


def model_card(recipe: Mapping[str, Any]) -> str:
    """A README.md model card recording how the checkpoint was made."""
    params = ", ".join(f"{k}={v}" for k, v in recipe["params"].items()) or "defaults"
    lines = ["---", "tags:", "- merge", "- warp", "library_name: transformers", "---", "",
             f"# Merged checkpoint ({recipe['method']})", "",
             f"Made with `warp merge {recipe['method']}` (warp-harness), streamed over safetensors.", "",
             f"- method: `{recipe['method']}` ({get_method(recipe['method']).summary})",
             f"- parameters: {params}"]
    if recipe.get("init"):
        lines.append(f"- init (θ_init): `{recipe['init']}`")
    lines.append("- models:")
    lines += [f"  - `{x}`" for x in recipe["models"]]
    if recipe.get("lerp_fallback_tensors"):
        lines.append(f"- {len(recipe['lerp_fallback_tensors'])} tensor(s) fell back to LERP (zero or parallel task vectors)")
    lines += ["", f"The full recipe is in `{RECIPE_FILE}`.", ""]
    return "\n".join(lines)

