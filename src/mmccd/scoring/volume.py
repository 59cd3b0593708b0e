"""Whole volumes: score every axial slice with brain and map the result into the input's voxel grid.

`score_case` is the one path from a case on disk to its anomaly map and binary `pred_mask`, used by
`mmccd score` and by `Detector.score`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from mmccd.config import ScoreConfig
from mmccd.data.batch import SliceBatch
from mmccd.data.dataset import slices_from_prepared
from mmccd.data.discovery import Case
from mmccd.data.io import load_nifti
from mmccd.data.prepare import PreparedCase, prepare_case
from mmccd.data.preprocess import uncrop
from mmccd.distributed import dist_info
from mmccd.errors import DataError
from mmccd.scoring.base import AnomalyMethod
from mmccd.scoring.slices import VOLUME_BATCH, score_batches

log = logging.getLogger("mmccd")


@dataclass
class VolumeScore:
    anomaly_map: np.ndarray  # original voxel grid, float32, 0 outside scored slices
    stored_maps: np.ndarray  # (n, S, S) maps in the prepared (cropped, resized) space
    prepared: PreparedCase
    pred_mask: np.ndarray | None = None  # original voxel grid, bool: anomaly_map >= threshold (None: no threshold)
    threshold: float | None = None
    reference: nib.Nifti1Image | None = None  # the source image whose grid the maps are on


def score_prepared_case(method: AnomalyMethod, settings: ScoreConfig, prepared: PreparedCase,
                        brain: np.ndarray | None = None) -> VolumeScore:
    """Score all stored slices of a prepared case and map them back to the original grid.

    brain: the brain mask on the original grid (e.g. source != 0); the restored map is zeroed outside
    it, since resampling back from the crop blurs the map across the brain's edge."""
    cfg = method.cfg
    meta = prepared.meta
    batch = slices_from_prepared(prepared, cfg.source, cfg.target, which="stored")  # every slice with brain
    chunks = [_slice_batch(batch, i, i + VOLUME_BATCH) for i in range(0, len(batch), VOLUME_BATCH)]
    # under torchrun only the per-rank case bars are shown (inner bars of several ranks would overwrite each other)
    maps = [out.anomaly_map.float().cpu().numpy()[:, 0] for _, out in
            score_batches(method, settings, chunks, desc=f"score {meta['case_id']}", progress=dist_info()[1] == 1,
                          leave=False)]
    stored = np.concatenate(maps) if maps else np.zeros((0, cfg.prepare.size, cfg.prepare.size), np.float32)
    volume = to_original_grid(meta, batch.slice_index.numpy(), stored)
    if brain is not None:
        volume *= brain
    return VolumeScore(volume, stored, prepared)


def to_original_grid(meta: dict, slice_indices: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Maps of stored slices (n, S, S), at original axial indices `slice_indices` (n,), back on the case's
    original voxel grid (float32, 0 on the slices not given): un-crop, un-resize, the file's own axis order."""
    volume = np.zeros(meta["original_shape"], dtype=np.float32)
    axis = meta["axial_axis"]
    in_plane = [s for a, s in enumerate(meta["original_shape"]) if a != axis]
    restored = uncrop(stored, meta["box"], tuple(in_plane))  # (n, H, W) in original in-plane order
    np.moveaxis(volume, axis, 0)[np.asarray(slice_indices, dtype=np.int64)] = restored
    return volume


def prepare_for_scoring(case: Case, method: AnomalyMethod) -> PreparedCase:
    """The case prepared as for training (brain mask from every contrast present); when a file other than
    the source is unusable, a warning and the source image alone: scoring needs only the source."""
    cfg = method.cfg
    try:
        return prepare_case(case, cfg.prepare)
    except DataError as exc:
        source = case.images[cfg.source]
        if exc.file is None or Path(exc.file) == Path(source):
            raise
        log.warning("%s; scoring %s from its %s image alone (brain mask from that image)", exc, case.case_id,
                    cfg.source)
        alone = dataclasses.replace(case, images={cfg.source: source}, seg=None, problems=())
        return prepare_case(alone, cfg.prepare, required=[cfg.source])


def score_case(method: AnomalyMethod, settings: ScoreConfig, case: Case, threshold: float | None = None) -> VolumeScore:
    """A case's anomaly map on the source image's own voxel grid, and `pred_mask` = map >= threshold.

    Only the source contrast is needed (`case.images[method.cfg.source]`)."""
    source_name = method.cfg.source
    if case.problems and not case.files:  # an empty folder, a dangling link: its own reason, not "no source"
        raise DataError(case.problems[0], case=case.case_id, file=case.root)
    if source_name not in case.images:
        raise DataError("the source contrast is missing", case=case.case_id, file=case.root,
                        expected=f"a {source_name} image (the run's source contrast)",
                        found=", ".join(sorted(case.images)) or "no images")
    prepared = prepare_for_scoring(case, method)
    source, reference = load_nifti(case.images[source_name], case.case_id)
    result = score_prepared_case(method, settings, prepared, brain=source != 0)
    pred = result.anomaly_map >= threshold if threshold is not None else None
    return dataclasses.replace(result, pred_mask=pred, threshold=threshold, reference=reference)


def _slice_batch(batch: SliceBatch, start: int, stop: int) -> SliceBatch:
    return SliceBatch(source=batch.source[start:stop], target=batch.target[start:stop],
                      brain_mask=batch.brain_mask[start:stop],
                      gt_mask=None if batch.gt_mask is None else batch.gt_mask[start:stop],
                      subject_id=batch.subject_id[start:stop], slice_index=batch.slice_index[start:stop])


__all__ = ["VolumeScore", "prepare_for_scoring", "score_case", "score_prepared_case", "to_original_grid"]
