"""The typed batch every model, scorer and metric speaks: domain names, paired by id, never by position."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class SliceBatch:
    """A batch of axial slices, intensities in [-1, 1] (background -1).

    source, target: (B, 1, H, W) float32 — input contrast and the contrast it is translated to
    brain_mask:     (B, 1, H, W) bool
    gt_mask:        (B, 1, H, W) bool, tumour (label > 0); None when the cases have no segmentation
    subject_id:     B case ids
    slice_index:    (B,) long, index along the volume's axial axis in the original voxel grid
    """

    source: Tensor
    target: Tensor
    brain_mask: Tensor
    subject_id: list[str]
    slice_index: Tensor
    gt_mask: Tensor | None = None

    def __len__(self) -> int:
        return self.source.shape[0]

    def to(self, device: torch.device | str) -> SliceBatch:
        nb = device != "cpu" and torch.device(device).type == "cuda"
        return replace(
            self,
            source=self.source.to(device, non_blocking=nb),
            target=self.target.to(device, non_blocking=nb),
            brain_mask=self.brain_mask.to(device, non_blocking=nb),
            gt_mask=None if self.gt_mask is None else self.gt_mask.to(device, non_blocking=nb),
        )

    def pin_memory(self) -> SliceBatch:
        """The image tensors in page-locked memory, so that `to(cuda)` copies asynchronously.

        DataLoader(pin_memory=True) calls this; without it a dataclass batch is returned unpinned."""
        return replace(
            self,
            source=self.source.pin_memory(),
            target=self.target.pin_memory(),
            brain_mask=self.brain_mask.pin_memory(),
            gt_mask=None if self.gt_mask is None else self.gt_mask.pin_memory(),
        )


def collate_slices(items: list[dict]) -> SliceBatch:
    """Collate dataset items {source, target, brain_mask, gt_mask?, subject_id, slice_index} to a SliceBatch.

    Images in items are (1, H, W) tensors."""
    has_gt = all(it.get("gt_mask") is not None for it in items)
    return SliceBatch(
        source=torch.stack([it["source"] for it in items]),
        target=torch.stack([it["target"] for it in items]),
        brain_mask=torch.stack([it["brain_mask"] for it in items]),
        gt_mask=torch.stack([it["gt_mask"] for it in items]) if has_gt else None,
        subject_id=[it["subject_id"] for it in items],
        slice_index=torch.tensor([int(it["slice_index"]) for it in items], dtype=torch.long),
    )
