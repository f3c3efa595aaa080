"""Atomic writes, stale-temporary clean-up and one-writer-per-directory locks.

Everything the project writes to a user path (merged checkpoints, RL checkpoints, eval caches,
reports) goes through here, so a killed process never leaves something that looks finished:
a directory or file appears complete or not at all.

Temporaries are hidden siblings named `.NAME.tmp-HOST-PID-RANDOM` (and `.NAME.old-...` for the
previous version during an overwrite). A process killed with SIGKILL cannot remove its own, so
every later write of NAME (and `sweep_stale` over a whole tree) removes those whose process is
gone: only ours (that naming scheme), only from this host, and only when that pid is not running.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any, Iterator

from .errors import WarpError

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<tag>tmp|old)-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}$")
LOCK_NAME = ".warp.lock"


def _tmp_sibling(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host (one we may not signal counts too)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def stale_temporaries(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Our temporaries in `directory` (of NAME only, when given) whose writing process is gone."""
    out = []
    try:
        entries = list(Path(directory).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return out
    for p in entries:
        m = _TEMP.match(p.name)
        if m and (name is None or m["name"] == name) and m["host"] == _HOST and not pid_alive(int(m["pid"])):
            out.append(p)
    return out


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the stale temporaries a killed writer of `path` left beside it; returns them."""
    path = Path(path)
    found = stale_temporaries(path.parent, path.name)
    for p in found:
        _remove(p)
    return found


def sweep_stale(root: str | os.PathLike) -> list[Path]:
    """Remove every stale temporary anywhere under `root` (a run or eval directory being resumed)."""
    root = Path(root)
    found: list[Path] = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, _ in os.walk(root):
        stale = stale_temporaries(dirpath)
        for p in stale:
            _remove(p)
        found += stale
        gone = {p.name for p in stale}
        dirnames[:] = [d for d in dirnames if d not in gone and not _TEMP.match(d)]
    return found


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `out` to fill; rename it to `out` only if the block succeeds.

    An existing `out` is refused (WarpError) unless `overwrite`; then it is replaced in one rename
    step after the new content is complete. On any exception the temporary directory is removed.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise WarpError(f"{out} already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = _tmp_sibling(out, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        if (out.exists() or out.is_symlink()) and _exchange(tmp, out):
            _remove(tmp)                          # now holds the previous version
        elif out.exists() or out.is_symlink():
            trash = _tmp_sibling(out, "old")
            os.replace(out, trash)                # a kill between these two renames leaves no `out`
            os.replace(tmp, out)
            _remove(trash)
        else:
            os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE): an overwrite never
    leaves a moment without `b`. False where the system or file system cannot do it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path for a writer (e.g. a library that writes a file itself);
    it is renamed to `path` only if the block succeeds, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = _tmp_sibling(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file and an atomic rename (fsync'd)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = _tmp_sibling(path, "tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: list) -> None:
    """A JSON-lines file (one record per line), written atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike, torn_tail_ok: bool = False) -> list[dict]:
    """The records of a JSON-lines file written by this package ([] when it does not exist yet).

    `torn_tail_ok`: an append-only log (metrics.jsonl) may end in a partial line when its writer
    was killed mid-write; that line is dropped (the step it belonged to is redone on resume)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if torn_tail_ok and i == len(lines) - 1:
                break
            raise
    return out


class LockedError(WarpError):
    """Another live process is writing this directory."""


class DirectoryLock:
    """One writer per directory: an exclusive `flock` on DIR/.warp.lock, held until `release`.

    The kernel drops the lock when its holder dies (even by SIGKILL), so a lock left by a killed
    process is simply taken over; the pid written into the file only names the holder in the
    refusal message. Works as a context manager.
    """

    def __init__(self, directory: str | os.PathLike, what: str = "warp") -> None:
        self.directory, self.what, self._fd = Path(directory), what, None

    def acquire(self) -> "DirectoryLock":
        path = self.directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = _read_pid(path)
            who = f"pid {holder}" if holder else "another process"
            raise LockedError(f"{self.directory} is in use by another {self.what} ({who}); "
                              "wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
