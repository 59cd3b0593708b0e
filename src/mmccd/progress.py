"""Progress of long work: a tqdm bar with an ETA on a terminal, one log line per step elsewhere.

Off a terminal (CI, `nohup`, a log file, a benchmark's worker processes) a bar's carriage returns would
fill the log; there `progress` logs "desc: 30/120 (25%), 1m12s elapsed, ETA 3m36s" lines instead, at most
one every `MMCCD_PROGRESS_SECONDS` (default 30 s) and always the last. `MMCCD_PROGRESS=bar|log|off`
forces a mode.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

log = logging.getLogger("mmccd")
T = TypeVar("T")


def mode() -> str:
    """"bar" on a terminal, "log" otherwise; MMCCD_PROGRESS overrides."""
    forced = os.environ.get("MMCCD_PROGRESS", "").lower()
    if forced in ("bar", "log", "off"):
        return forced
    return "bar" if sys.stderr.isatty() else "log"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class LogProgress:
    """The tqdm subset mmccd uses (iterate, update, set_postfix, close), written as throttled log lines."""

    def __init__(self, iterable: Iterable[Any] | None = None, desc: str = "", total: int | None = None,
                 initial: int = 0, unit: str = "it", every: float | None = None, **_: Any):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)  # type: ignore[arg-type]
        self.n, self.start_n, self.postfix = initial, initial, ""
        self.every = float(os.environ.get("MMCCD_PROGRESS_SECONDS", "30")) if every is None else every
        self.t0 = self.last = time.monotonic()

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every or (self.total is not None and self.n >= self.total):
            self.last = now
            log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self.t0
        done = self.n - self.start_n
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
            if done and self.n < self.total:
                text += f", ETA {_duration(elapsed / done * (self.total - self.n))}"
        else:
            text += f" {self.unit}"
        text += f", {_duration(elapsed)} elapsed"
        return text + (f" [{self.postfix}]" if self.postfix else "")

    def close(self) -> None:
        pass

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable[T] | None = None, desc: str = "", total: int | None = None, *,
             disable: bool = False, **kwargs: Any) -> Any:
    """A progress bar over `iterable` (or a manual one: `update`, `set_postfix`, `close`)."""
    chosen = "off" if disable else mode()
    if chosen == "bar":
        return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, **kwargs)
    if chosen == "log":
        return LogProgress(iterable, desc=desc, total=total, **kwargs)
    return tqdm(iterable, desc=desc, total=total, disable=True, **kwargs)


__all__ = ["LogProgress", "mode", "progress"]
