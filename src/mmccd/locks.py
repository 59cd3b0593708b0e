"""One writer per output folder: `prepare`, `train`, `score` and `benchmark` hold a lock file in the folder they
write, so that a second process on the same folder refuses at once instead of mixing its files with the first's.

    OUT/.mmccd.lock   {"pid", "host", "command", "stage", "started", "token", "pid_start", "slurm_job", "slurm_restart"}

- Created with O_CREAT | O_EXCL: of two processes starting together exactly one gets it.
- A lock held by a live process, on this folder or on a folder above it (a benchmark's folder holds its runs),
  is a FolderLockedError naming the process, its command and the lock file.
- A lock of a process that is gone (same host, pid not running, or the pid now belongs to a process started
  later; or an earlier run of this requeued SLURM job, on any node) is taken over with a warning. A lock
  written on another host cannot be checked otherwise: refused, with how to remove it if that process is gone.
- Released on exit, also on an exception or Ctrl-C; a process killed outright leaves a stale lock, which the
  next run takes over.
- Processes started by the holder (the benchmark's parallel jobs, which train runs inside the benchmark's
  folder) inherit its token through the environment (MMCCD_LOCK_TOKENS): the holder's lock does not block
  them; each still locks its own run folder. Under torchrun only rank 0 takes the lock; every rank learns
  the outcome, so all stop together when it is refused.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from mmccd.atomic import disk_full_error, is_disk_full
from mmccd.errors import MmccdError, printable

log = logging.getLogger("mmccd")
LOCK_NAME = ".mmccd.lock"
TOKENS_ENV = "MMCCD_LOCK_TOKENS"  # tokens of the locks held by this process and the processes that started it
F = TypeVar("F", bound=Callable[..., Any])


class FolderLockedError(MmccdError):
    """Another live process is writing the output folder (or a folder that contains it)."""


# ---------------------------------------------------------------- the lock file


def _process_start(pid: int) -> str | None:
    """When `pid` started (Linux: clock ticks since boot, /proc/PID/stat field 22); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    """True if `pid` runs on this host and is the process that wrote the lock (not a later one with its pid)."""
    if os.name == "nt":  # os.kill(pid, 0) would send Ctrl-C there: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    now = _process_start(pid)
    return started is None or now is None or now == started


def _held_tokens() -> list[str]:
    return [t for t in os.environ.get(TOKENS_ENV, "").split(",") if t]


def _set_tokens(tokens: list[str]) -> None:
    if tokens:
        os.environ[TOKENS_ENV] = ",".join(tokens)
    else:
        os.environ.pop(TOKENS_ENV, None)


def _read(path: Path) -> dict[str, Any] | None:
    """The lock's record; None if there is none. A record that cannot be read (a writer that died in the
    microseconds between creating and writing it, or a file this user may not read) is an empty dict."""
    for _ in range(10):
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            return record if isinstance(record, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            time.sleep(0.05)  # maybe being written right now
    return {}


def _describe(record: dict[str, Any]) -> str:
    host = "this machine" if record.get("host") == socket.gethostname() else f"host {record.get('host', '?')}"
    return f"process {record.get('pid', '?')} on {host} (`{record.get('command', '?')}`, started {record.get('started', '?')})"


def _live_holder(path: Path) -> dict[str, Any] | None:
    """The record of the lock file `path` if a live process other than this one (and its parents) holds it;
    None when there is no lock, it is ours, or it is stale."""
    record = _read(path)
    if record is None or record.get("token") in _held_tokens() or _earlier_run_of_this_job(record):
        return None
    if not record:  # unreadable: a writer that died while creating it (stale once old), or one writing it now
        return None if time.time() - _mtime(path) > 30 else record
    if record.get("host") != socket.gethostname():
        return record  # cannot be checked from here: assumed alive
    pid = record.get("pid")
    return record if isinstance(pid, int) and _alive(pid, record.get("pid_start")) else None


def _slurm() -> tuple[str | None, str]:
    """(job id, restart count) of the SLURM job this process belongs to; (None, "0") outside SLURM."""
    return os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_RESTART_COUNT", "0")


def _earlier_run_of_this_job(record: dict[str, Any]) -> bool:
    """True for a lock of an earlier run of this requeued SLURM job (same job id, another restart count): SLURM
    runs a job once at a time, so that run is gone, on whatever node it ran."""
    job, restart = _slurm()
    return job is not None and record.get("slurm_job") == job and str(record.get("slurm_restart", "0")) != restart


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _refusal(folder: Path, lock: Path, record: dict[str, Any], inside: bool) -> FolderLockedError:
    where = f"{folder} is inside {lock.parent}, which" if inside else str(folder)
    where += f" is being written by {_describe(record)}"
    if record.get("host") != socket.gethostname():
        fix = (f"mmccd cannot check a process on another machine: if it is still running, wait for it to finish or "
               f"choose another --out; if it is gone, delete {lock} and run again")
    else:
        fix = (f"wait for it to finish (or stop it: kill {record.get('pid')}), or choose another --out; two "
               "processes writing one folder would mix their files")
    return FolderLockedError(printable(f"{where} (lock file {lock}); {fix}"))


def _create(lock: Path, record: dict[str, Any]) -> bool:
    """Create `lock` holding `record` if it does not exist (O_CREAT | O_EXCL); False if it exists."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
    except OSError as exc:
        os.close(fd)
        lock.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full_error(lock) from exc
        raise
    os.close(fd)
    return True


def _take_over(lock: Path, seen: dict[str, Any]) -> None:
    """Remove the stale lock `seen` (only if the file still holds it: another process may have taken it over)."""
    grave = lock.with_name(f"{lock.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(lock, grave)
    except FileNotFoundError:
        return
    moved_fresh = _read(grave) != seen  # another process took it over first: we moved its fresh lock
    if moved_fresh:
        try:
            os.link(grave, lock)  # put it back (never over a lock created meanwhile)
        except OSError:
            pass
    grave.unlink(missing_ok=True)
    if moved_fresh:
        return
    if seen:
        log.warning("taking over the lock %s of %s, which is no longer running", lock, _describe(seen))
    else:
        log.warning("taking over the unreadable lock %s (its writer died while creating it)", lock)


def _command(stage: str) -> str:
    """`mmccd <stage> ARGS` when run from the command line, else the stage and the Python program's command."""
    if stage in sys.argv[1:]:
        return shlex.join(["mmccd", *sys.argv[1:]])
    return f"mmccd.{stage} in {shlex.join(sys.argv) or 'python'}"


def acquire(folder: Path, stage: str) -> dict[str, Any]:
    """Take the lock of `folder` (created if missing) for this process; FolderLockedError if a live process
    holds it or a folder above it. Returns the record written."""
    folder = Path(folder)
    for parent in folder.resolve().parents:
        holder = _live_holder(parent / LOCK_NAME)
        if holder is not None:
            raise _refusal(folder, parent / LOCK_NAME, holder, inside=True)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    job, restart = _slurm()
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(stage), "stage": stage,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": uuid.uuid4().hex,
              "pid_start": _process_start(os.getpid()), "slurm_job": job, "slurm_restart": restart}
    for _ in range(5):
        if _create(lock, record):
            _set_tokens([*_held_tokens(), record["token"]])
            return record
        seen = _read(lock)
        if seen is None:
            continue  # released meanwhile
        if seen.get("token") in _held_tokens():
            return {}  # this process (or the one that started it) holds it already: nothing to release
        holder = _live_holder(lock)
        if holder is not None:
            raise _refusal(folder, lock, holder, inside=False)
        _take_over(lock, seen)
    raise FolderLockedError(f"{lock} keeps being taken by other processes; run again when they have finished")


def release(folder: Path, record: dict[str, Any]) -> None:
    """Remove the lock if it is still ours (`record`: what `acquire` returned; {} for a lock held by a caller)."""
    if not record:
        return
    lock = Path(folder) / LOCK_NAME
    _set_tokens([t for t in _held_tokens() if t != record["token"]])
    current = _read(lock)
    if current and current.get("token") == record["token"]:
        lock.unlink(missing_ok=True)


@contextmanager
def folder_lock(folder: str | Path, stage: str) -> Iterator[None]:
    """Hold the lock of `folder` while the block runs (rank 0 under torchrun; every rank raises if refused).

    A folder this call created that holds nothing when the block ends is removed again."""
    from mmccd.distributed import dist_info, gather_objects  # torch: imported only where a lock is taken

    folder = Path(folder)
    rank, world = dist_info()
    existed = folder.exists()
    record: dict[str, Any] = {}
    problem: BaseException | None = None
    if rank == 0:
        try:
            record = acquire(folder, stage)
        except Exception as exc:  # noqa: BLE001 — every rank must hear of it before anyone raises
            problem = exc
    if world > 1:
        message = gather_objects(None if problem is None else str(problem))[0]
        if message is not None and problem is None:
            raise FolderLockedError(message)
    if problem is not None:
        raise problem
    try:
        yield
    finally:
        if rank == 0:
            release(folder, record)
            if not existed and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def holds_folder_lock(argument: str, stage: str) -> Callable[[F], F]:
    """Decorator: the function holds the lock of the folder passed as `argument` while it runs."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with folder_lock(signature.bind(*args, **kwargs).arguments[argument], stage):
                return fn(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate


# ---------------------------------------------------------------- folders that hold a lock


def contents(folder: Path) -> list[Path]:
    """The entries of `folder` other than its lock file."""
    return [p for p in Path(folder).iterdir() if p.name != LOCK_NAME]


def clear(folder: Path) -> None:
    """Delete everything in `folder` but its lock file (replacing an output while holding its lock)."""
    for p in contents(folder):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


__all__ = ["LOCK_NAME", "TOKENS_ENV", "FolderLockedError", "acquire", "clear", "contents", "folder_lock",
           "holds_folder_lock", "release"]
