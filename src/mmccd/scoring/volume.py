"""Whole volumes: score every axial slice with brain and map the result into the input's voxel grid."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from mmccd.data.dataset import slices_from_prepared
from mmccd.data.prepare import PreparedCase
from mmccd.data.preprocess import uncrop
from mmccd.distributed import dist_info
from mmccd.scoring.base import AnomalyMethod

log = logging.getLogger("mmccd")


@dataclass
class VolumeScore:
    anomaly_map: np.ndarray  # original voxel grid, float32, 0 outside scored slices
    stored_maps: np.ndarray  # (n, S, S) maps in the prepared (cropped, resized) space
    prepared: PreparedCase


@torch.inference_mode()
def score_prepared_case(method: AnomalyMethod, prepared: PreparedCase, batch_size: int = 16,
                        generator: torch.Generator | None = None, brain: np.ndarray | None = None) -> VolumeScore:
    """Score all stored slices of a prepared case and map them back to the original grid.

    brain: the brain mask on the original grid (e.g. source != 0); the restored map is zeroed outside
    it, since resampling back from the crop blurs the map across the brain's edge."""
    cfg = method.cfg
    meta = prepared.meta
    batch = slices_from_prepared(prepared, cfg.source, cfg.target, which="stored")  # every slice with brain
    device = method.device
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(cfg.score.seed)
    maps = []
    # under torchrun only the per-rank case bars are shown (inner bars of several ranks would overwrite each other)
    for i in tqdm(range(0, len(batch), batch_size), desc=f"score {meta['case_id']}", unit="batch", leave=False,
                  disable=dist_info()[1] > 1):
        sub = _slice_batch(batch, i, i + batch_size).to(device)
        maps.append(method.score(sub, generator)["anomaly_map"].float().cpu().numpy()[:, 0])
    stored = np.concatenate(maps) if maps else np.zeros((0, cfg.prepare.size, cfg.prepare.size), np.float32)
    volume = np.zeros(meta["original_shape"], dtype=np.float32)
    axis = meta["axial_axis"]
    in_plane = [s for a, s in enumerate(meta["original_shape"]) if a != axis]
    restored = uncrop(stored, meta["box"], tuple(in_plane))  # (n, H, W) in original in-plane order
    positions = batch.slice_index.numpy()
    np.moveaxis(volume, axis, 0)[positions] = restored
    if brain is not None:
        volume *= brain
    return VolumeScore(volume, stored, prepared)


def _slice_batch(batch, start: int, stop: int):  # noqa: ANN001, ANN202 — SliceBatch slicing
    from mmccd.data.batch import SliceBatch

    return SliceBatch(source=batch.source[start:stop], target=batch.target[start:stop],
                      brain_mask=batch.brain_mask[start:stop],
                      gt_mask=None if batch.gt_mask is None else batch.gt_mask[start:stop],
                      subject_id=batch.subject_id[start:stop], slice_index=batch.slice_index[start:stop])
