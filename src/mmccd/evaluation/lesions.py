"""Lesion-wise detection, 95th-percentile Hausdorff distance and volumes, on a subject's volume.

Volumes are (N, H, W) bool, axis 0 across slices; spacing is (slice, row, column) in mm.

- Lesions are 3D connected components (scipy.ndimage.label) of the ground truth, predicted components
  those of the prediction; connectivity 26 by default (faces, edges and corners touch; also the
  cDDPM / pDDPM component filter's), or 18 / 6.
- A GT lesion is detected when at least one predicted voxel lies in it. A predicted component is a
  false positive when it overlaps no GT voxel at all. GT lesions under `min_lesion_mm3` are ignored:
  neither counted as missed nor as found, and a prediction on one is not a false positive either.
- Sensitivity = detected / lesions, NaN when the volume has no (counted) lesion.
- HD95 as MONAI's ``compute_hausdorff_distance(percentile=95)``: surface voxels = mask XOR its
  erosion (6-neighbour cross, the volume edge counts as outside); for each surface voxel of one mask
  the Euclidean distance in mm to the nearest surface voxel of the other (scipy's
  ``distance_transform_edt(sampling=spacing)``); the 95th percentile (linear interpolation) of each
  direction; the larger of the two. Both masks empty: NaN (nothing to measure, MONAI's value; left out
  of means and counted); exactly one empty: inf (MONAI's value; the BraTS challenge instead writes
  373.13 mm, the diagonal of its volume, which we do not, as it depends on the image size).
- Volumes in ml = voxel count * prod(spacing) / 1000.

Per-slice records (`metrics.MapRecord`) become a volume by placing each slice at its slice_index: a
missing index leaves an empty slice (no brain), so lesions and components never join across a gap,
and distances across it stay true to the mm. Only brain voxels count, as in `metrics`: the prediction
is ``anomaly_map >= threshold`` inside the brain, and ground truth outside the brain is ignored (the eroded
brain, when a `postprocess` erodes it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from mmccd.evaluation.metrics import MapRecord, _check_record, _mean_std, group_by_subject
from mmccd.evaluation.postprocess import PostProcess

Spacing = tuple[float, float, float]  # mm: between slices, between rows, between columns
CONNECTIVITY = {6: 1, 18: 2, 26: 3}  # neighbourhood size -> rank of ndimage.generate_binary_structure(3, rank)
HD_PERCENTILE = 95.0


def _check_pair(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], where: str) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.ndim != 3 or pred.shape != gt.shape:
        raise ValueError(f"{where}: expected prediction and ground truth of one (N, H, W) shape, found {pred.shape} "
                         f"and {gt.shape}")
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"{where}: expected spacing as 3 positive mm values (slice, row, column), found {spacing}")
    return pred, gt


def label_components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """(labels (N, H, W) int, n) of the 3D connected components of bool `mask` (N, H, W); 0 = background."""
    if connectivity not in CONNECTIVITY:
        raise ValueError(f"connectivity={connectivity}: expected one of {sorted(CONNECTIVITY)} (3D neighbours)")
    structure = ndimage.generate_binary_structure(3, CONNECTIVITY[connectivity])
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=structure)
    return labels, int(n)


def lesion_detection(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], connectivity: int = 26,
                     min_lesion_mm3: float = 0.0) -> dict[str, Any]:
    """Lesion-wise detection of bool volumes pred, gt (N, H, W) with `spacing` (mm, 3 values).

    Returns n_lesions, n_detected, n_lesions_ignored (under `min_lesion_mm3`), lesion_sensitivity
    (NaN without lesions), n_pred_components, fp_components (predicted components touching no GT voxel)."""
    pred, gt = _check_pair(pred, gt, spacing, "lesion_detection")
    voxel_mm3 = float(np.prod(spacing))
    gt_labels, n_gt = label_components(gt, connectivity)
    pred_labels, n_pred = label_components(pred, connectivity)
    sizes = np.bincount(gt_labels.ravel(), minlength=n_gt + 1)[1:]
    counted = sizes * voxel_mm3 >= min_lesion_mm3  # (n_gt,)
    hit = np.zeros(n_gt + 1, dtype=bool)
    hit[np.unique(gt_labels[pred])] = True  # GT labels under any predicted voxel
    detected = hit[1:] & counted
    on_gt = np.zeros(n_pred + 1, dtype=bool)
    on_gt[np.unique(pred_labels[gt])] = True  # predicted labels over any GT voxel (ignored lesions too)
    n_lesions = int(counted.sum())
    return {"n_lesions": n_lesions, "n_detected": int(detected.sum()), "n_lesions_ignored": int(n_gt - n_lesions),
            "lesion_sensitivity": float(detected.sum() / n_lesions) if n_lesions else float("nan"),
            "n_pred_components": n_pred, "fp_components": int(n_pred - on_gt[1:].sum())}


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels (N, H, W) bool of `mask`: in it, with a 6-neighbour outside it or beyond the volume edge."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                          border_value=0)


def _directed(from_surface: np.ndarray, to_surface: np.ndarray, spacing: Sequence[float], percentile: float) -> float:
    # distance of every voxel to the nearest `to` surface voxel (the EDT of its complement), read on `from`
    dist = ndimage.distance_transform_edt(~to_surface, sampling=tuple(float(s) for s in spacing))
    return float(np.percentile(dist[from_surface], percentile))


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], percentile: float = HD_PERCENTILE) -> float:
    """Symmetric `percentile` Hausdorff distance in mm of bool volumes pred, gt (N, H, W), as MONAI's.

    max(P95 of pred-surface -> gt-surface distances, P95 of gt -> pred); both empty: NaN; one empty: inf."""
    pred, gt = _check_pair(pred, gt, spacing, "hd95")
    if not 0 <= percentile <= 100:
        raise ValueError(f"hd95: percentile={percentile}, expected 0..100")
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return float("nan")
    if not has_pred or not has_gt:
        return float("inf")
    s_pred, s_gt = surface(pred), surface(gt)
    # every nearest surface voxel lies in the box of both surfaces: the transform needs no more (same numbers)
    box = ndimage.find_objects((s_pred | s_gt).astype(np.int8))[0]
    s_pred, s_gt = s_pred[box], s_gt[box]
    return max(_directed(s_pred, s_gt, spacing, percentile), _directed(s_gt, s_pred, spacing, percentile))


def volume_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], connectivity: int = 26,
                   min_lesion_mm3: float = 0.0) -> dict[str, Any]:
    """Lesion detection, hd95_mm, pred_volume_ml and gt_volume_ml of bool volumes pred, gt (N, H, W)."""
    pred, gt = _check_pair(pred, gt, spacing, "volume_metrics")
    ml = float(np.prod(spacing)) / 1000.0
    return {**lesion_detection(pred, gt, spacing, connectivity, min_lesion_mm3), "hd95_mm": hd95(pred, gt, spacing),
            "pred_volume_ml": int(np.count_nonzero(pred)) * ml, "gt_volume_ml": int(np.count_nonzero(gt)) * ml}


# ---------------------------------------------------------------- from per-slice records


@dataclass(frozen=True)
class SubjectVolume:
    """A subject's slices placed at their slice_index: row z holds slice first_index + z.

    anomaly_map: (N, H, W) float, 0 on missing slices
    gt, brain:   (N, H, W) bool, False on missing slices
    present:     (N,) bool, which rows hold a given slice
    """

    subject_id: str
    first_index: int
    anomaly_map: np.ndarray
    gt: np.ndarray
    brain: np.ndarray
    present: np.ndarray

    def runs(self) -> list[slice]:
        """Row ranges of consecutive given slices (a gap ends a run)."""
        edges = np.diff(np.concatenate([[0], self.present.astype(np.int8), [0]]))
        return [slice(int(a), int(b)) for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1),
                                                        strict=True)]


def stack_subject(records: Sequence[MapRecord]) -> SubjectVolume:
    """One subject's records -> SubjectVolume; every record must have this subject's id and one (H, W) shape."""
    if not records:
        raise ValueError("stack_subject: no records")
    sid = records[0].subject_id
    groups = group_by_subject(records)  # sorts by slice_index, rejects a repeated slice
    if len(groups) != 1:
        raise ValueError(f"stack_subject: records of several subjects {list(groups)[:5]}; give one subject's")
    recs = groups[sid]
    shape = np.asarray(recs[0].anomaly_map).shape
    for r in recs:
        _check_record(np.asarray(r.anomaly_map), np.asarray(r.gt, dtype=bool), np.asarray(r.brain, dtype=bool),
                      f"subject {sid} slice {r.slice_index}")
        if np.asarray(r.anomaly_map).shape != shape:
            raise ValueError(f"subject {sid}: slice {r.slice_index} has shape {np.asarray(r.anomaly_map).shape}, "
                             f"slice {recs[0].slice_index} has {shape}; a volume needs one slice shape")
    first = int(recs[0].slice_index)
    n = int(recs[-1].slice_index) - first + 1
    amap = np.zeros((n, *shape), dtype=np.result_type(*[np.asarray(r.anomaly_map).dtype for r in recs]))
    gt, brain, present = np.zeros((n, *shape), bool), np.zeros((n, *shape), bool), np.zeros(n, bool)
    for r in recs:
        z = int(r.slice_index) - first
        amap[z], gt[z], brain[z], present[z] = r.anomaly_map, r.gt, r.brain, True
    return SubjectVolume(sid, first, amap, gt, brain, present)


def subject_lesion_metrics(records: Sequence[MapRecord], threshold: float, spacing: Sequence[float],
                           postprocess: PostProcess | None = None, connectivity: int = 26,
                           min_lesion_mm3: float = 0.0) -> dict[str, Any]:
    """Lesion-wise numbers of one subject from its per-slice records, at `threshold`.

    records:     one subject's MapRecords (any order); slices are stacked by slice_index, gaps kept empty
    threshold:   the validation-chosen threshold; prediction = anomaly_map >= threshold inside the brain
    spacing:     (slice, row, column) mm of the stored slices, from the caller (e.g. 1 mm between BraTS
                 slices, crop box side / image size in-plane)
    postprocess: applied here, to each run of consecutive slices: map and brain (`apply_map`), then the
                 thresholded prediction (`apply_mask`); pass raw records with it, or post-processed records
                 without it, never both. A dims=3 PostProcess works here (each run is a volume).
    Returns subject_id, n_slices, n_runs, lesion_sensitivity, n_lesions, n_detected, n_lesions_ignored,
    fp_components, n_pred_components, hd95_mm, pred_volume_ml, gt_volume_ml, spacing_mm."""
    vol = stack_subject(records)
    pred, brain = np.zeros_like(vol.brain), vol.brain.copy()
    runs = vol.runs()
    for run in runs:
        amap, b = vol.anomaly_map[run], vol.brain[run]
        if postprocess is not None:
            amap, b = postprocess.apply_map(amap, b)
        p = (amap >= threshold) & b
        if postprocess is not None:
            p = postprocess.apply_mask(p) & b
        pred[run], brain[run] = p, b
    return {"subject_id": vol.subject_id, "n_slices": int(vol.present.sum()), "n_runs": len(runs),
            **volume_metrics(pred, vol.gt & brain, spacing, connectivity, min_lesion_mm3),
            "spacing_mm": [float(s) for s in spacing]}


def evaluate_lesions(records: Sequence[MapRecord], threshold: float,
                     spacing: Sequence[float] | Mapping[str, Sequence[float]], postprocess: PostProcess | None = None,
                     connectivity: int = 26, min_lesion_mm3: float = 0.0) -> list[dict[str, Any]]:
    """`subject_lesion_metrics` of every subject in `records` (first-seen order).

    spacing: one (slice, row, column) mm for all, or {subject_id: spacing} (our in-plane spacing differs per
    subject: crop box side / image size)."""
    rows = []
    for sid, recs in group_by_subject(records).items():
        if isinstance(spacing, Mapping):
            if sid not in spacing:
                raise ValueError(f"evaluate_lesions: no spacing for subject {sid}; give one per subject, or one for all")
            sp = spacing[sid]
        else:
            sp = spacing
        rows.append(subject_lesion_metrics(recs, threshold, sp, postprocess, connectivity, min_lesion_mm3))
    return rows


def summarise_lesions(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means over subjects of `evaluate_lesions` rows, and the pooled sensitivity.

    subject_mean_lesion_sensitivity: over subjects with lesions (NaN rows left out, counted in *_nan_*);
    pooled_lesion_sensitivity:       all detected / all lesions; mean_fp_components: per volume;
    hd95_mm: mean over finite values; how many were inf (one mask empty) and NaN (both empty) is counted."""
    if not rows:
        raise ValueError("summarise_lesions: no rows")
    sens_mean, sens_std, n_sens, n_sens_nan = _mean_std([r["lesion_sensitivity"] for r in rows])
    hd = np.array([r["hd95_mm"] for r in rows], dtype=float)
    hd_mean, hd_std, n_hd, _ = _mean_std(hd[np.isfinite(hd)].tolist())
    fp_mean, fp_std, _, _ = _mean_std([r["fp_components"] for r in rows])
    n_lesions = int(sum(r["n_lesions"] for r in rows))
    n_detected = int(sum(r["n_detected"] for r in rows))
    return {"n_subjects": len(rows), "subject_mean_lesion_sensitivity": sens_mean,
            "subject_std_lesion_sensitivity": sens_std, "subject_n_lesion_sensitivity": n_sens,
            "subject_nan_lesion_sensitivity": n_sens_nan, "n_lesions": n_lesions, "n_detected": n_detected,
            "pooled_lesion_sensitivity": n_detected / n_lesions if n_lesions else float("nan"),
            "mean_fp_components": fp_mean, "std_fp_components": fp_std,
            "total_fp_components": int(sum(r["fp_components"] for r in rows)),
            "mean_hd95_mm": hd_mean, "std_hd95_mm": hd_std, "n_hd95_finite": n_hd,
            "n_hd95_inf": int(np.isinf(hd).sum()), "n_hd95_nan": int(np.isnan(hd).sum()),
            "mean_pred_volume_ml": float(np.mean([r["pred_volume_ml"] for r in rows])),
            "mean_gt_volume_ml": float(np.mean([r["gt_volume_ml"] for r in rows]))}
