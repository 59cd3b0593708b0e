"""Subject-level train / val / test splits, written once to splits.json and reused; K folds (folds.json).

Only cases with a segmentation are split (the others are for scoring only). A split is a function of the
sorted ids and the seed: `numpy.random.default_rng(seed).permutation`. A run records the `Split` it was
trained with, so its evaluation uses its own validation and test subjects.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmccd.atomic import atomic_write_text
from mmccd.data.store import SPLITS_JSON
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


# ---------------------------------------------------------------- splits a run is trained on, and K folds

FOLDS_JSON = "folds.json"


@dataclass(frozen=True)
class Split:
    """The subjects of one run: trained on `train`, threshold chosen on `val`, evaluated on `test`."""

    name: str  # "splits.json" (the store's own split) or "fold 2 of 5"
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "train": list(self.train), "val": list(self.val), "test": list(self.test)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        return cls(str(d["name"]), tuple(d["train"]), tuple(d["val"]), tuple(d["test"]))

    @classmethod
    def of_store(cls, splits: dict[str, Any]) -> Split:
        """The store's own split (splits.json)."""
        return cls(SPLITS_JSON, tuple(splits["train"]), tuple(splits["val"]), tuple(splits["test"]))


def make_folds(case_ids: Sequence[str], k: int, val_fraction: float, seed: int) -> list[Split]:
    """K subject-level folds: every subject is a test subject exactly once; in each fold the validation
    subjects are drawn (seeded) from that fold's non-test subjects, the rest train.

    Test folds: a seeded permutation of the sorted ids cut into K nearly equal parts. Validation per fold:
    round(val_fraction * n) subjects (at least 1), drawn with seed (seed, fold)."""
    ids = sorted(set(case_ids))
    n = len(ids)
    if k < 2:
        raise DataError(f"--folds {k}: cross-validation needs K >= 2 folds", fix="use --folds 5 (or omit --folds)")
    n_val = max(1, int(round(n * val_fraction)))
    if n < k or n - -(-n // k) - n_val < 1:
        raise DataError(f"{n} subjects with a segmentation are too few for {k} folds",
                        expected=f"at least one test, {n_val} validation and one training subject per fold",
                        found=f"{n} subjects", fix="use fewer folds or add labelled cases")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    parts = np.array_split(np.arange(n), k)
    folds = []
    for f, part in enumerate(parts):
        test = sorted(order[i] for i in part)
        rest = sorted(set(ids) - set(test))
        val = sorted(rest[i] for i in np.random.default_rng([seed, f]).permutation(len(rest))[:n_val])
        folds.append(Split(f"fold {f} of {k}", tuple(sorted(set(rest) - set(val))), tuple(val), tuple(test)))
    return folds


def load_or_create_folds(path: str | Path, case_ids: Sequence[str], k: int, val_fraction: float,
                         seed: int) -> list[Split]:
    """Read `path` (folds.json) if it exists — its cases and settings must match — else write it once."""
    path = Path(path)
    wanted = {"k": int(k), "seed": int(seed), "val_fraction": float(val_fraction)}
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            folds = [Split.from_dict(f) for f in saved["folds"]]
            saved_ids = set(saved["case_ids"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError("the folds file is unreadable", file=path, found=f"{type(exc).__name__}: {exc}",
                            fix="delete it to write new folds (earlier fold results then no longer apply)") from None
        if saved_ids != set(case_ids):
            extra, missing = sorted(saved_ids - set(case_ids)), sorted(set(case_ids) - saved_ids)
            raise DataError("the saved folds are for other cases", file=path,
                            expected=f"the {len(set(case_ids))} current case(s) with segmentation",
                            found=f"{len(missing)} current case(s) not in it ({', '.join(missing[:5])}) and "
                                  f"{len(extra)} case(s) no longer present ({', '.join(extra[:5])})",
                            fix="benchmark the same cases, or use another --out (the folds of a benchmark are "
                                "fixed once its first run is trained)")
        differ = {key: saved.get(key) for key, v in wanted.items() if saved.get(key) != v}
        if differ:
            raise DataError("the saved folds were made with other settings", file=path, expected=str(wanted),
                            found=str(differ), fix="use the same --folds and split settings, or another --out")
        return folds
    folds = make_folds(case_ids, k, val_fraction, seed)
    record = {**wanted, "case_ids": sorted(set(case_ids)), "folds": [f.as_dict() for f in folds],
              "note": "every subject is a test subject exactly once; validation drawn from each fold's non-test subjects"}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return folds
