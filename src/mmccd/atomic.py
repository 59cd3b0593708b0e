"""Atomic writes: every file this package writes goes to a temporary name next to it and is renamed.

A reader (or a resumed run) never sees a half-written file, only the old one or the new one; a writer
killed mid-write leaves at most a hidden `.tmp-*` file that nothing reads. A full disk (ENOSPC / EDQUOT)
becomes one `DiskFullError` naming the file, the free space and what the write needed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmccd.errors import MmccdError

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class DiskFullError(MmccdError):
    """The disk (or quota) is full: names the file, the free space and roughly what the step needs."""


def _megabytes(n: float) -> str:
    return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n / 1024:,.0f} kB"


def disk_full_error(path: Path, needed: int | None = None) -> DiskFullError:
    """A one-line DiskFullError for a write to `path` that failed for lack of space."""
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
        where = f"{_megabytes(free)} free on its disk"
    except OSError:
        where = "the free space could not be read"
    need = f"; the file needed about {_megabytes(needed)}" if needed else ""
    return DiskFullError(f"no space left to write {path} ({where}{need}); nothing was written under "
                                       "that name — free some space (or choose another --out) and run the same "
                                       "command again: finished work is kept")


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path` (same suffixes); on success it replaces `path`.

        with atomic_write(out / "images.npy") as tmp:
            np.save(tmp, array)

    On an exception the temporary file is removed and `path` is left untouched; a full disk is
    re-raised as DiskFullError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}"
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in _FULL:
            size = tmp.stat().st_size if tmp.exists() else None
            raise disk_full_error(path, size) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_write(path) as tmp:
        _guard_full(lambda: tmp.write_bytes(data), path, len(data))
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_write(path) as tmp:
        _guard_full(lambda: tmp.write_text(text, encoding="utf-8"), path, len(text.encode("utf-8")))
    return Path(path)


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    """np.save to `path` (which must end in .npy) atomically."""
    with atomic_write(path) as tmp:
        _guard_full(lambda: np.save(tmp, array), path, int(np.asarray(array).nbytes))


def _guard_full(write, path: str | Path, needed: int) -> None:  # noqa: ANN001 — a zero-argument callable
    """Run `write`; a full disk becomes a DiskFullError that knows how many bytes were needed."""
    try:
        write()
    except OSError as exc:
        if exc.errno in _FULL:
            raise disk_full_error(Path(path), needed) from exc
        raise


__all__ = ["DiskFullError", "atomic_save_npy", "atomic_write", "atomic_write_bytes", "atomic_write_text",
           "disk_full_error"]
