"""Where things live. Every root can be set by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path


def real_data_dir() -> Path | None:
    """The real BraTS cases used by tests and benchmarks: $MMCCD_REAL_DATA or ../shared/data/brats
    next to the repository. None when absent."""
    env = os.environ.get("MMCCD_REAL_DATA")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parents[2]
    candidates.append(repo.parent / "shared" / "data" / "brats")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def unlabeled_data_dir() -> Path | None:
    env = os.environ.get("MMCCD_UNLABELED_DATA")
    repo = Path(__file__).resolve().parents[2]
    for c in ([Path(env)] if env else []) + [repo.parent / "shared" / "data" / "brats-unlabeled"]:
        if c.is_dir():
            return c
    return None
