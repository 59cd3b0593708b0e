"""Torch access to prepared slices: items for `collate_slices`, paired by subject id and slice index.

Augmentation (random left-right flip) is done by the training loop on whole batches (training.py,
`train.augment_flip`), from its checkpointed generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmccd.config import MODALITIES
from mmccd.data.batch import SliceBatch
from mmccd.data.prepare import PreparedCase
from mmccd.data.slicing import positions
from mmccd.data.store import PreparedStore
from mmccd.errors import DataError


def _channel(modalities: Sequence[str], name: str) -> int:
    if name not in modalities:
        raise DataError(f"unknown contrast '{name}'", expected=", ".join(modalities), found=name)
    return list(modalities).index(name)


def _check_present(meta: dict[str, Any], source: str, target: str, need_target: bool) -> None:
    present = meta.get("modalities_present", MODALITIES)
    needed = [source, target] if need_target else [source]
    missing = [m for m in needed if m not in present]
    if missing:
        raise DataError(f"the case has no {', '.join(missing)} image", case=meta["case_id"],
                        expected=f"{' and '.join(needed)} (source and target)", found=f"modalities {', '.join(present)}",
                        fix="prepare the data with these contrasts required, or choose other contrasts")


class SliceDataset(Dataset):
    """(case, stored position) pairs of `case_ids` for a slice set: "train" (tumour-free), "max_tumour"
    (one per case), "all" (every slice with enough brain) or "stored" (every slice with brain).

    Item: source, target (1, S, S) float32; brain_mask (1, S, S) bool; gt_mask (1, S, S) bool (label > 0)
    or None; subject_id str; slice_index int (original axial index). The target may be absent
    (filled -1) except for slices="train"."""

    def __init__(self, store: PreparedStore, case_ids: Sequence[str], source: str, target: str,
                 slices: str = "train"):
        self.store, self.source, self.target, self.slices = store, source, target, slices
        modalities = store.modalities
        self._src, self._tgt = _channel(modalities, source), _channel(modalities, target)
        self.index: list[tuple[str, int]] = []
        for case_id in case_ids:
            meta = store.meta(case_id)
            _check_present(meta, source, target, need_target=slices == "train")
            self.index += [(case_id, p) for p in positions(meta, slices)]
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:  # memmaps are reopened in each worker, never pickled
        return {**self.__dict__, "_arrays": {}}

    def _case_arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if case_id not in self._arrays:
            self._arrays[case_id] = (self.store.images(case_id), self.store.brain(case_id), self.store.seg(case_id))
        return self._arrays[case_id]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        case_id, p = self.index[idx]
        images, brain, seg = self._case_arrays(case_id)
        return {
            "source": torch.from_numpy(images[p, self._src].astype(np.float32))[None],
            "target": torch.from_numpy(images[p, self._tgt].astype(np.float32))[None],
            "brain_mask": torch.from_numpy(brain[p] > 0)[None],
            "gt_mask": None if seg is None else torch.from_numpy(seg[p] > 0)[None],
            "subject_id": case_id,
            "slice_index": int(self.store.meta(case_id)["slice_indices"][p]),
        }


def slices_from_prepared(prepared: PreparedCase, source: str, target: str, which: str = "all") -> SliceBatch:
    """A SliceBatch of one in-memory case (not in a store), e.g. for scoring a new scan.

    which: "all" | "stored" | "max_tumour" | "train". A missing target contrast is -1."""
    meta = prepared.meta
    _check_present(meta, source, target, need_target=which == "train")
    modalities = meta.get("modalities", MODALITIES)
    pos = np.asarray(positions(meta, which), dtype=np.int64)
    images = prepared.images[pos]

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x))[:, None]

    return SliceBatch(
        source=t(images[:, _channel(modalities, source)].astype(np.float32)),
        target=t(images[:, _channel(modalities, target)].astype(np.float32)),
        brain_mask=t(prepared.brain[pos] > 0),
        gt_mask=None if prepared.seg is None else t(prepared.seg[pos] > 0),
        subject_id=[meta["case_id"]] * len(pos),
        slice_index=torch.as_tensor(np.asarray(meta["slice_indices"], dtype=np.int64)[pos], dtype=torch.long),
    )
