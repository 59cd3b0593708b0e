"""Subject-level train / val / test splits, written once to splits.json and reused.

Only cases with a segmentation are split (the others are for scoring only). The split is a
function of the sorted ids and the seed: `numpy.random.default_rng(seed).permutation`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmccd.atomic import atomic_write_text
from mmccd.errors import DataError

log = logging.getLogger("mmccd")
SPLITS = ("train", "val", "test")


def make_splits(case_ids: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """{"train", "val", "test"} -> sorted ids. With >= 3 cases: at least 1 val, 1 test and 1 train."""
    ids = sorted(set(case_ids))
    n = len(ids)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n < 3:
        n_test = n_val = 0  # too few subjects to hold any out
    else:
        n_test, n_val = max(1, n_test), max(1, n_val)
        while n_test + n_val > n - 1:  # keep at least one training subject
            if n_test >= n_val and n_test > 1:
                n_test -= 1
            elif n_val > 1:
                n_val -= 1
            else:
                break
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    return {"train": sorted(order[n_test + n_val:]), "val": sorted(order[n_test:n_test + n_val]),
            "test": sorted(order[:n_test])}


def load_or_create_splits(path: str | Path, case_ids: Sequence[str], val_fraction: float, test_fraction: float,
                          seed: int) -> dict[str, Any]:
    """Read `path` if it exists (its ids and settings must match), else write it once (atomically).

    Returns {"train": [...], "val": [...], "test": [...], "seed", "val_fraction", "test_fraction"}."""
    path = Path(path)
    wanted = {"seed": int(seed), "val_fraction": float(val_fraction), "test_fraction": float(test_fraction)}
    if path.exists():
        try:
            splits = json.loads(path.read_text())
            saved = set().union(*(splits[k] for k in SPLITS))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError("the splits file is unreadable", file=path, found=str(exc),
                            fix="delete it to write new splits") from None
        if saved != set(case_ids):
            extra, missing = sorted(saved - set(case_ids)), sorted(set(case_ids) - saved)
            raise DataError("the saved splits are for other cases", file=path,
                            expected=f"the {len(set(case_ids))} current case(s) with segmentation",
                            found=f"{len(missing)} current case(s) not in it ({', '.join(missing[:5])}) and "
                                  f"{len(extra)} case(s) no longer present ({', '.join(extra[:5])})",
                            fix="prepare the same cases, or delete splits.json to split again (earlier results "
                                "then no longer share the split)")
        differ = {k: splits.get(k) for k, v in wanted.items() if splits.get(k) != v}
        if differ:
            raise DataError("the saved splits were made with other settings", file=path,
                            expected=str(wanted), found=str(differ),
                            fix="use the same split settings, or delete splits.json to split again")
        return splits
    splits = {**make_splits(case_ids, val_fraction, test_fraction, seed), **wanted}
    if not splits["val"] or not splits["test"]:
        log.warning("only %d case(s) with a segmentation: no validation or test subjects, so `mmccd evaluate` "
                    "cannot run on this store (it needs at least 3 labelled cases)", len(set(case_ids)))
    atomic_write_text(path, json.dumps(splits, indent=2) + "\n")
    return splits
