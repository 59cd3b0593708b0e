"""Dice, AUROC and AUPRC inside the brain mask, per slice, per subject (volume) and pooled.

Conventions (one place, used by every level and by `thresholds.dice_curve`):
- a pixel is predicted anomalous when ``anomaly_map >= threshold`` and it lies in the brain mask;
- only brain pixels count: whatever lies outside the mask never changes a number;
- Dice of two empty masks is 1.0 (nothing to find, nothing found); one empty, the other not: 0.0;
- AUROC / AUPRC are NaN when the labels hold one class only (e.g. a tumour-free slice): callers
  skip NaN in means and report how many were skipped (``*_nan_*`` keys of the summary);
- AUPRC is scikit-learn's average precision (step-wise, no interpolation);
- std is the population std (ddof=0) over the finite values.

Levels, each labelled in `EvalResult.summary`:
- ``slice_*``:   one value per slice, mean ± std over slices;
- ``subject_*``: the brain pixels of all given slices of a subject concatenated, one value per subject
  (per volume when all its slices are given), mean ± std over subjects — the protocol's headline;
- ``pooled_*``:  all brain pixels of all subjects together, one value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

METRICS = ("dice", "auroc", "auprc")
MAX_POOLED_PIXELS = 20_000_000  # above this, pooled AUROC/AUPRC use a seeded random subsample

_PIXEL_KEYS = (*METRICS, "n_brain", "n_tumour")
PredFilter = Callable[[np.ndarray], np.ndarray]  # (H, W) bool -> (H, W) bool, e.g. PostProcess.apply_mask


@dataclass(frozen=True)
class MapRecord:
    """One scored slice.

    anomaly_map: (H, W) float, higher = more anomalous
    gt:          (H, W) bool, tumour
    brain:       (H, W) bool, where metrics are computed
    """

    subject_id: str
    slice_index: int
    anomaly_map: np.ndarray
    gt: np.ndarray
    brain: np.ndarray


@dataclass
class EvalResult:
    """Metrics at one threshold, at every level. `summary` holds flat, level-labelled numbers."""

    threshold: float
    per_slice: list[dict[str, Any]]
    per_subject: list[dict[str, Any]]
    pooled: dict[str, Any]
    summary: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- single metrics


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice = 2|P∩G| / (|P| + |G|) of two bool arrays of the same shape (any shape).

    Both empty -> 1.0; exactly one empty -> 0.0."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"dice: prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    denom = int(pred.sum()) + int(gt.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & gt)) / denom


def _one_class(labels: np.ndarray) -> bool:
    n_pos = int(np.count_nonzero(labels))
    return n_pos == 0 or n_pos == labels.size


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of flat `scores` (N,) against bool `labels` (N,); NaN if one class only."""
    labels = np.asarray(labels, dtype=bool).ravel()
    if _one_class(labels):
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores).ravel()))


def auprc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision of flat `scores` (N,) against bool `labels` (N,); NaN if one class only.

    With no positives precision is undefined; with no negatives AP is trivially 1 — both say nothing
    about the method, so both are NaN."""
    labels = np.asarray(labels, dtype=bool).ravel()
    if _one_class(labels):
        return float("nan")
    return float(average_precision_score(labels, np.asarray(scores).ravel()))


# ---------------------------------------------------------------- per slice


def _check_record(anomaly_map: np.ndarray, gt: np.ndarray, brain: np.ndarray, where: str) -> None:
    if anomaly_map.ndim != 2 or anomaly_map.shape != gt.shape or anomaly_map.shape != brain.shape:
        raise ValueError(f"{where}: expected anomaly_map, gt and brain of one (H, W) shape, found "
                         f"{anomaly_map.shape}, {gt.shape}, {brain.shape}")
    if not np.isfinite(anomaly_map[brain.astype(bool)]).all():
        raise ValueError(f"{where}: the anomaly map has NaN or inf inside the brain mask; fix the scorer's output")


def predict(anomaly_map: np.ndarray, brain: np.ndarray, threshold: float,
            pred_filter: PredFilter | None = None) -> np.ndarray:
    """Binary prediction (H, W) bool: ``anomaly_map >= threshold`` inside `brain`, then `pred_filter`."""
    brain = np.asarray(brain, dtype=bool)
    pred = (np.asarray(anomaly_map) >= threshold) & brain
    if pred_filter is not None:
        pred = np.asarray(pred_filter(pred), dtype=bool) & brain
    return pred


def _pixel_metrics(scores: np.ndarray, labels: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Metrics of flat brain pixels: scores (N,) float, labels (N,) bool, pred (N,) bool."""
    return {"dice": dice(pred, labels), "auroc": auroc(scores, labels), "auprc": auprc(scores, labels),
            "n_brain": int(labels.size), "n_tumour": int(np.count_nonzero(labels))}


def slice_metrics(anomaly_map: np.ndarray, gt: np.ndarray, brain: np.ndarray, threshold: float,
                  pred_filter: PredFilter | None = None) -> dict[str, Any]:
    """Dice, AUROC, AUPRC of one (H, W) slice inside `brain`, and the pixel counts n_brain, n_tumour."""
    anomaly_map, gt, brain = np.asarray(anomaly_map), np.asarray(gt, dtype=bool), np.asarray(brain, dtype=bool)
    _check_record(anomaly_map, gt, brain, "slice_metrics")
    pred = predict(anomaly_map, brain, threshold, pred_filter)
    return _pixel_metrics(anomaly_map[brain], gt[brain], pred[brain])


# ---------------------------------------------------------------- aggregation


def group_by_subject(records: Sequence[MapRecord]) -> dict[str, list[MapRecord]]:
    """Records per subject (first-seen order), slices sorted by index; rejects a repeated (subject, slice)."""
    groups: dict[str, list[MapRecord]] = {}
    seen: set[tuple[str, int]] = set()
    for r in records:
        key = (r.subject_id, int(r.slice_index))
        if key in seen:
            raise ValueError(f"subject {r.subject_id} slice {r.slice_index} is given twice: pair records by id, once each")
        seen.add(key)
        groups.setdefault(r.subject_id, []).append(r)
    return {sid: sorted(rs, key=lambda r: int(r.slice_index)) for sid, rs in groups.items()}


def _mean_std(values: Sequence[float]) -> tuple[float, float, int, int]:
    """(mean, population std, n finite, n NaN) of `values`; mean and std NaN when none is finite."""
    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return float("nan"), float("nan"), 0, int(arr.size)
    return float(finite.mean()), float(finite.std()), int(finite.size), int(arr.size - finite.size)


def _pooled(scores: np.ndarray, labels: np.ndarray, pred: np.ndarray, max_pixels: int,
            seed: int) -> tuple[dict[str, Any], list[str]]:
    n_brain = int(labels.size)
    out: dict[str, Any] = {"dice": dice(pred, labels), "n_brain": n_brain, "n_tumour": int(np.count_nonzero(labels))}
    notes = []
    if n_brain > max_pixels:  # sklearn sorts all scores: bound time and memory, reproducibly
        idx = np.sort(np.random.default_rng(seed).choice(n_brain, size=max_pixels, replace=False))
        scores, labels = scores[idx], labels[idx]
        notes.append(f"pooled AUROC/AUPRC on a random subsample of {max_pixels:,} of {n_brain:,} brain "
                     f"pixels (seed {seed}); pooled Dice on all pixels")
    out.update(auroc=auroc(scores, labels), auprc=auprc(scores, labels), subsampled=bool(notes),
               n_pixels_ranked=int(labels.size))
    return out, notes


def evaluate_maps(records: Sequence[MapRecord], threshold: float, pred_filter: PredFilter | None = None,
                  max_pooled_pixels: int = MAX_POOLED_PIXELS, seed: int = 0) -> EvalResult:
    """Metrics of all `records` at `threshold`, per slice, per subject and pooled.

    records:     MapRecords with (H, W) maps; a subject's slices are concatenated for its per-subject row
    pred_filter: optional (H, W) bool -> bool on each slice's prediction (e.g. small-component removal)
    Returns an EvalResult; its summary's headline is ``subject_mean_dice``."""
    if not records:
        raise ValueError("evaluate_maps: no records to evaluate")
    per_slice: list[dict[str, Any]] = []
    per_subject: list[dict[str, Any]] = []
    all_s, all_g, all_p = [], [], []
    for sid, recs in group_by_subject(records).items():
        sub_s, sub_g, sub_p = [], [], []
        for r in recs:
            m, g, b = np.asarray(r.anomaly_map), np.asarray(r.gt, dtype=bool), np.asarray(r.brain, dtype=bool)
            _check_record(m, g, b, f"subject {sid} slice {r.slice_index}")
            p = predict(m, b, threshold, pred_filter)
            s_b, g_b, p_b = m[b], g[b], p[b]
            per_slice.append({"subject_id": sid, "slice_index": int(r.slice_index), **_pixel_metrics(s_b, g_b, p_b)})
            sub_s.append(s_b)
            sub_g.append(g_b)
            sub_p.append(p_b)
        s_c, g_c, p_c = np.concatenate(sub_s), np.concatenate(sub_g), np.concatenate(sub_p)
        # one slice (the reference protocol): the subject's pixels are the slice's, so are its metrics
        values = {k: v for k, v in per_slice[-1].items() if k in _PIXEL_KEYS} if len(recs) == 1 \
            else _pixel_metrics(s_c, g_c, p_c)
        per_subject.append({"subject_id": sid, **values, "n_slices": len(recs)})
        all_s.append(s_c)
        all_g.append(g_c)
        all_p.append(p_c)
    pooled, notes = _pooled(np.concatenate(all_s), np.concatenate(all_g), np.concatenate(all_p),
                            max_pooled_pixels, seed)

    summary: dict[str, Any] = {"threshold": float(threshold), "headline": "subject_mean_dice",
                               "n_subjects": len(per_subject), "n_slices": len(per_slice),
                               "n_brain_pixels": pooled["n_brain"], "n_tumour_pixels": pooled["n_tumour"]}
    for level, rows in (("subject", per_subject), ("slice", per_slice)):
        for name in METRICS:
            mean, std, n, n_nan = _mean_std([row[name] for row in rows])
            summary.update({f"{level}_mean_{name}": mean, f"{level}_std_{name}": std,
                            f"{level}_n_{name}": n, f"{level}_nan_{name}": n_nan})
    for name in METRICS:
        summary[f"pooled_{name}"] = pooled[name]
    summary["pooled_subsampled"] = pooled["subsampled"]
    for level in ("subject", "slice"):
        if summary[f"{level}_nan_auroc"]:
            notes.append(f"{summary[f'{level}_nan_auroc']} {level}(s) without both tumour and healthy brain pixels: "
                         f"AUROC/AUPRC NaN there, left out of the {level} means")
    return EvalResult(float(threshold), per_slice, per_subject, pooled, summary, notes)
