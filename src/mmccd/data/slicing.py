"""Which axial slices are stored, trained on and evaluated.

- stored:            every axial slice with any brain voxel (in original axial order);
- brain fraction:    brain voxels of the slice / area of the square crop box (side^2);
- train:             tumour-free (no label > 0 in the slice) AND brain fraction >= min_brain_fraction,
                     and, if `train_slice_window=(a, b)`, original axial index in a..b inclusive
                     (the reference's 70-89); none for a case without segmentation (unknown tumour);
- eval "all":        every stored slice with brain fraction >= min_brain_fraction;
- eval "max_tumour": the stored slice with the most tumour voxels (None without tumour / segmentation).

Positions index the stored slices (0..n-1); `slice_indices[p]` is the original axial index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SLICE_SETS = ("train", "max_tumour", "all", "stored")


@dataclass(frozen=True)
class SliceSelection:
    slice_indices: list[int]  # original axial index of each stored slice
    brain_fraction: list[float]  # per stored slice
    tumour_voxels: list[int]  # per stored slice, in original voxels (0 without segmentation)
    train_slices: list[int]  # positions
    eval_slices_all: list[int]  # positions
    max_tumour_slice: int | None  # position

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_slices(brain: np.ndarray, seg: np.ndarray | None, box_side: int, min_brain_fraction: float,
                  train_slice_window: tuple[int, int] | None = None) -> SliceSelection:
    """brain: (N, H, W) bool axial slices of the whole volume; seg: (N, H, W) labels or None;
    box_side: side of the square crop box in voxels."""
    brain_count = np.count_nonzero(brain, axis=(1, 2))  # no copy of a transposed view
    stored = np.flatnonzero(brain_count > 0)
    fraction = brain_count[stored] / float(box_side * box_side)
    if seg is not None:
        tumour = np.count_nonzero(seg > 0, axis=(1, 2))[stored]
    else:
        tumour = np.zeros(len(stored), dtype=np.int64)
    enough = fraction >= min_brain_fraction
    if seg is None:
        train = np.zeros(len(stored), dtype=bool)
    else:
        train = enough & (tumour == 0)
        if train_slice_window is not None:
            a, b = train_slice_window
            train &= (stored >= a) & (stored <= b)
    max_tumour = int(np.argmax(tumour)) if tumour.size and tumour.max() > 0 else None
    return SliceSelection(
        slice_indices=[int(i) for i in stored],
        brain_fraction=[round(float(f), 6) for f in fraction],
        tumour_voxels=[int(t) for t in tumour],
        train_slices=[int(p) for p in np.flatnonzero(train)],
        eval_slices_all=[int(p) for p in np.flatnonzero(enough)],
        max_tumour_slice=max_tumour,
    )


def positions(meta: dict[str, Any], which: str) -> list[int]:
    """Stored-slice positions of a case's `meta` for `which` in SLICE_SETS."""
    if which == "train":
        return list(meta["train_slices"])
    if which == "all":
        return list(meta["eval_slices_all"])
    if which == "max_tumour":
        return [] if meta["max_tumour_slice"] is None else [int(meta["max_tumour_slice"])]
    if which == "stored":
        return list(range(len(meta["slice_indices"])))
    raise ValueError(f"slices must be one of {', '.join(SLICE_SETS)}, not {which!r}")
