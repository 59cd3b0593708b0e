"""Atomic writes: every file this package writes goes to a temporary name next to it and is renamed.

A reader (or a resumed run) never sees a half-written file, only the old one or the new one; a writer
killed mid-write leaves at most a hidden `.tmp-*` file that nothing reads. A full disk (ENOSPC / EDQUOT)
becomes one `DiskFullError` naming the file, the free space and what the write needed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mmccd.errors import MmccdError

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile on a full disk: an OSError without errno
NEARLY_FULL = 1 << 20  # bytes: a write that fails with less free than this failed for lack of space


class DiskFullError(MmccdError):
    """The disk (or quota) is full: names the file, the free space and roughly what the step needs.

    `path`, `needed`, `at_least`: what `disk_full_error` was given, so that a caller can say what to do instead."""

    def __init__(self, message: str, path: str | Path | None = None, needed: int | None = None, at_least: bool = False):
        super().__init__(message)
        self.path, self.needed, self.at_least = path, needed, at_least


def _megabytes(n: float) -> str:
    return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n / 1024:,.0f} kB"


def _free(path: Path) -> int:
    """Free bytes on the disk of `path` (its nearest existing folder)."""
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return shutil.disk_usage(Path.cwd()).free


def is_disk_full(exc: BaseException, path: str | Path | None = None) -> bool:
    """True when `exc` is a write that failed for lack of space: ENOSPC / EDQUOT anywhere in its chain (torch's
    writer wraps it in a RuntimeError), numpy's short write (no errno), or, when `path` is given, any other
    OSError / RuntimeError while the disk of `path` has less than NEARLY_FULL bytes free (torch writing to a
    file name reports a full disk as "unexpected pos ...")."""
    seen: BaseException | None = exc
    for _ in range(16):  # the chain of causes, bounded
        if seen is None:
            break
        if isinstance(seen, OSError) and (seen.errno in _FULL or (seen.errno is None and _SHORT_WRITE.search(str(seen)))):
            return True
        seen = seen.__cause__ or seen.__context__
    if path is None or not isinstance(exc, (OSError, RuntimeError)) or "alloc" in str(exc).lower():
        return False  # (an allocation that failed is out of memory, not out of disk)
    try:
        return _free(Path(path)) < NEARLY_FULL
    except OSError:
        return False


RUN_AGAIN = "run the same command again: finished work is kept"


def disk_full_error(path: str | Path | None, needed: int | None = None, at_least: bool = False,
                    then: str = RUN_AGAIN) -> DiskFullError:
    """A one-line DiskFullError for a write to `path` (None: not known) that failed for lack of space.

    needed: the bytes the file needs (at_least: only what had been written when the disk filled);
    then: what to do once space is free."""
    try:
        where = f"{_megabytes(_free(Path(path) if path is not None else Path.cwd()))} free on its disk"
    except OSError:
        where = "the free space could not be read"
    need = f"; the file needed {'at least' if at_least else 'about'} {_megabytes(needed)}" if needed else ""
    what = f"to write {path}" if path is not None else "on the device (the file is not known: --debug shows where)"
    return DiskFullError(f"no space left {what} ({where}{need}); nothing was written under that name — free "
                         f"some space (or choose another --out), then {then}", path, needed, at_least)


@contextlib.contextmanager
def atomic_write(path: str | Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path` (same suffixes); on success it replaces `path`.

        with atomic_write(out / "images.npy") as tmp:
            np.save(tmp, array)

    On an exception the temporary file is removed and `path` is left untouched; a full disk is
    re-raised as DiskFullError (`needed`: the file's size in bytes, for its message, when known)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}"
    full: BaseException | None = None
    written = None
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        if not is_disk_full(exc, path):
            raise
        full, written = exc, (tmp.stat().st_size if tmp.exists() else None)
    finally:
        if tmp.exists():
            tmp.unlink()
    if full is not None:  # after removing the partial file, so that the message shows the space really free
        raise disk_full_error(path, needed or written, at_least=needed is None) from full


@contextlib.contextmanager
def disk_full_as_error(path: str | Path) -> Iterator[None]:
    """Around a write that cannot be atomic (a log appended to): a full disk is a DiskFullError naming `path`."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path) from exc
        raise


class _Stream:
    """A binary file seen only through write/flush: libraries that detect real files (torch, numpy) and write
    to them in C lose the errno of a full disk; through Python's write it stays in the exception chain."""

    def __init__(self, file: BinaryIO):
        self._file = file

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()


@contextlib.contextmanager
def atomic_stream(path: str | Path, needed: int | None = None) -> Iterator[_Stream]:
    """`atomic_write` yielding a binary stream to write to (e.g. `torch.save(obj, stream)`)."""
    with atomic_write(path, needed) as tmp, open(tmp, "wb") as f:
        yield _Stream(f)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_write(path, len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    data = text.encode("utf-8")
    with atomic_write(path, len(data)) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    """np.save to `path` (which must end in .npy) atomically."""
    with atomic_write(path, int(np.asarray(array).nbytes) + 128) as tmp:  # + the .npy header
        np.save(tmp, array)


__all__ = ["NEARLY_FULL", "DiskFullError", "atomic_save_npy", "atomic_stream", "atomic_write", "atomic_write_bytes",
           "atomic_write_text", "disk_full_as_error", "disk_full_error", "is_disk_full"]
