"""Browsable case views (evaluation/viewer.py) of evaluated subjects: the map over the subject's own scan.

For an evaluation the views are of its worst and its best test subject (by Dice), written into
OUT/views/<subject>_view.html and linked from its report.html. The map is the one the evaluation scored:
the whole-volume protocol's cached slice maps put back on the scan's voxel grid; for the max-tumour protocol
(one slice per subject) the subject's stored volume is scored once for the view. The input is the subject's
source-contrast NIfTI and the ground truth its segmentation file, both as recorded by `mmccd prepare`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mmccd.config import ScoreConfig
from mmccd.data.prepare import PreparedCase
from mmccd.data.store import PreparedStore
from mmccd.evaluation.postprocess import PostProcess
from mmccd.evaluation.viewer import case_view_name, write_case_view
from mmccd.scoring.base import AnomalyMethod
from mmccd.scoring.volume import score_prepared_case, to_original_grid

log = logging.getLogger("mmccd")


def worst_and_best(per_subject: Sequence[dict[str, Any]]) -> list[str]:
    """The ids of the subjects with the lowest and the highest Dice (one id when they are the same)."""
    rows = [r for r in per_subject if r.get("dice") is not None]
    if not rows:
        return []
    ranked = sorted(rows, key=lambda r: (r["dice"], r["subject_id"]))
    return list(dict.fromkeys([ranked[0]["subject_id"], ranked[-1]["subject_id"]]))


def prepared_case(store: PreparedStore, case_id: str) -> PreparedCase:
    """A stored case back in memory (what `prepare_case` returned when it was prepared)."""
    images = np.asarray(store.images(case_id), dtype=np.float32)
    seg = store.seg(case_id)
    return PreparedCase(images, np.asarray(store.brain(case_id)), None if seg is None else np.asarray(seg),
                        store.meta(case_id))


def subject_view(out_dir: Path, store: PreparedStore, case_id: str, source: str, threshold: float, title: str,
                 pp: PostProcess, slice_maps: tuple[np.ndarray, np.ndarray] | None = None,
                 method: AnomalyMethod | None = None, settings: ScoreConfig | None = None) -> Path | None:
    """Write OUT/<case>_view.html for one stored subject; None (with a warning) when its scan is not on disk.

    slice_maps: (slice indices (n,), maps (n, S, S)) already scored, or None to score the stored volume with
    `method` and `settings`. The map shown is post-processed by `pp` (as evaluated); pred_mask = map >= threshold."""
    meta = store.meta(case_id)
    files = meta.get("source_files", {})
    path = Path(files.get(source, ""))
    if not path.is_file():
        log.warning("no case view for %s: its %s image %s is not on disk any more", case_id, source, path)
        return None
    image = nib.load(path)
    if slice_maps is None:
        if method is None or settings is None:
            raise ValueError("subject_view: give slice_maps, or method and settings to score the volume")
        scored = score_prepared_case(method, settings, prepared_case(store, case_id))
        indices, maps = np.asarray(meta["slice_indices"]), scored.stored_maps
    else:
        indices, maps = slice_maps
    brain = np.asarray(store.brain(case_id))[[meta["slice_indices"].index(int(k)) for k in indices]] > 0
    maps, brain = pp.apply_map(np.asarray(maps, dtype=np.float32), brain)
    pred = pp.apply_mask((maps >= threshold) & brain)  # as evaluated, in the stored slices
    inside = np.asarray(image.dataobj).reshape(meta["original_shape"]) != 0  # resampling blurs across the edge
    volume = to_original_grid(meta, indices, maps * brain) * inside
    pred_mask = (to_original_grid(meta, indices, pred.astype(np.float32)) >= 0.5) & inside
    gt = None
    if files.get("seg") and Path(files["seg"]).is_file():
        gt = np.asarray(nib.load(files["seg"]).dataobj).reshape(volume.shape) > 0
    out = Path(out_dir) / case_view_name(case_id)
    write_case_view(out, image, volume, threshold, pred_mask, gt, title)
    return out


__all__ = ["prepared_case", "subject_view", "worst_and_best"]
