"""Pinned memory: training's DataLoader(pin_memory=True on CUDA) must pin SliceBatch, then copy it non-blocking.

torch's pin routine pins tensors, mappings, sequences and objects with a `pin_memory()` method, and returns any
other object as it is: a dataclass batch without the method stayed in pageable memory, silently.
"""

from __future__ import annotations

import pytest
import torch
from gpu_helpers import NEEDS_CUDA, SliceItems, slices
from torch.utils.data import DataLoader
from torch.utils.data._utils.pin_memory import pin_memory as dataloader_pin

from mmccd.data.batch import SliceBatch, collate_slices

pytestmark = pytest.mark.gpu


def test_the_dataloader_pins_every_image_of_a_slice_batch(monkeypatch) -> None:
    """On any machine: pinning stood in for by a recorder (pinning itself needs a GPU driver)."""
    pinned: list[torch.Size] = []

    def fake_pin(self: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        pinned.append(self.shape)
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = slices(2)
    out = dataloader_pin(batch)
    assert isinstance(out, SliceBatch) and len(pinned) == 4  # source, target, brain_mask, gt_mask
    assert out.subject_id == batch.subject_id and torch.equal(out.source, batch.source)
    no_gt = SliceBatch(batch.source, batch.target, batch.brain_mask, batch.subject_id, batch.slice_index)
    assert dataloader_pin(no_gt).gt_mask is None and len(pinned) == 7


def test_batches_arrive_pinned_and_copy_non_blocking(device: torch.device) -> None:
    if device.type != "cuda":
        pytest.skip(NEEDS_CUDA)
    loader = DataLoader(SliceItems(8), batch_size=4, collate_fn=collate_slices, pin_memory=True)
    for batch in loader:
        assert batch.source.is_pinned() and batch.brain_mask.is_pinned() and batch.gt_mask.is_pinned()
        moved = batch.to(device)  # non_blocking from pinned memory
        torch.cuda.synchronize(device)
        assert moved.source.device == device and torch.equal(moved.source.cpu(), batch.source)
        assert torch.equal(moved.brain_mask.cpu(), batch.brain_mask)
