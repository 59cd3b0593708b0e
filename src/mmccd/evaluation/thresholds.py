"""Segmentation threshold: maximise mean subject Dice on VALIDATION subjects, apply it once to test.

The test-set optimum (`oracle_threshold`) exists only for a labelled "oracle" column, to compare with
papers that tuned on test; it must never be the number a method is ranked by.

Dice here follows `metrics`: prediction = score >= threshold inside the brain; a subject's brain pixels
over all its given slices are concatenated; both-empty Dice = 1.0. So ``choose_threshold(v).val_dice``
equals ``evaluate_maps(v, choice.threshold).summary["subject_mean_dice"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmccd.evaluation.metrics import MapRecord, PredFilter, group_by_subject, predict

QUANTILE_RANGE = (0.5, 0.9999)  # of brain scores: below the median nothing sensible is a tumour


@dataclass(frozen=True)
class ThresholdChoice:
    """The best threshold on the records it was chosen on, and the curve it was read from.

    thresholds, val_curve: (K,) candidate thresholds (ascending) and mean subject Dice at each
    search_range:          (lowest, highest) candidate threshold
    quantile_range:        the brain-score quantiles the candidates span
    chosen_on:             "validation" or "test (oracle)"
    """

    threshold: float
    val_dice: float
    thresholds: np.ndarray
    val_curve: np.ndarray
    search_range: tuple[float, float]
    quantile_range: tuple[float, float] = QUANTILE_RANGE
    chosen_on: str = "validation"
    n_subjects: int = 0

    @property
    def at_edge(self) -> bool:
        """True when the best candidate is the lowest or highest: the optimum may lie outside the range."""
        i = int(np.argmax(self.val_curve))
        return i == 0 or i == len(self.val_curve) - 1

    def to_dict(self) -> dict[str, Any]:
        """The choice without its curve, for metrics.json."""
        return {"threshold": self.threshold, "dice": self.val_dice, "chosen_on": self.chosen_on,
                "n_subjects": self.n_subjects, "n_candidates": len(self.thresholds),
                "search_range": list(self.search_range), "quantile_range": list(self.quantile_range),
                "at_edge": self.at_edge}

    def describe(self) -> str:
        lo, hi = self.quantile_range
        text = (f"threshold {self.threshold:.6g} (mean subject Dice {self.val_dice:.4f} on {self.n_subjects} "
                f"{self.chosen_on} subjects; {len(self.thresholds)} candidates from the {100 * lo:g}th to the "
                f"{100 * hi:g}th percentile of brain scores = [{self.search_range[0]:.6g}, {self.search_range[1]:.6g}])")
        return text + (" — at the edge of the search range" if self.at_edge else "")


def _brain_scores(records: Sequence[MapRecord]) -> np.ndarray:
    """All brain-pixel scores of `records`, flat (N,)."""
    if not records:
        raise ValueError("no records to choose a threshold from")
    return np.concatenate([np.asarray(r.anomaly_map)[np.asarray(r.brain, dtype=bool)].ravel() for r in records])


def candidate_thresholds(records: Sequence[MapRecord], n: int = 200,
                         quantile_range: tuple[float, float] = QUANTILE_RANGE) -> np.ndarray:
    """(K,) ascending unique thresholds, K <= n: quantiles q of the brain scores of `records`.

    1 - q is log-spaced from 1 - quantile_range[0] to 1 - quantile_range[1], so the high tail (where
    tumours usually sit: a few % of the brain) is searched finely."""
    lo, hi = quantile_range
    if not 0.0 <= lo < hi < 1.0 or n < 2:
        raise ValueError(f"candidate_thresholds: need 0 <= {lo} < {hi} < 1 and n >= 2, found n={n}")
    q = 1.0 - np.geomspace(1.0 - lo, 1.0 - hi, n)
    return np.unique(np.quantile(_brain_scores(records), q))


def _subject_pixels(records: Sequence[MapRecord]) -> list[tuple[list[MapRecord], np.ndarray, np.ndarray]]:
    """Per subject: its records, and its concatenated brain scores (N,) and labels (N,) bool."""
    out = []
    for recs in group_by_subject(records).values():
        brains = [np.asarray(r.brain, dtype=bool) for r in recs]
        scores = np.concatenate([np.asarray(r.anomaly_map)[b] for r, b in zip(recs, brains, strict=True)])
        labels = np.concatenate([np.asarray(r.gt, dtype=bool)[b] for r, b in zip(recs, brains, strict=True)])
        out.append((recs, scores, labels))
    return out


def _dice_from_counts(tp: np.ndarray, n_pred: np.ndarray, n_gt: int) -> np.ndarray:
    denom = n_pred + n_gt
    return np.where(denom == 0, 1.0, 2.0 * tp / np.maximum(denom, 1))


def dice_curve(records: Sequence[MapRecord], thresholds: np.ndarray,
               pred_filter: PredFilter | None = None) -> np.ndarray:
    """(K,) mean subject Dice of `records` at each of the (K,) `thresholds`.

    Without `pred_filter`, each subject's scores are sorted once and counted with searchsorted:
    TP(t) = #tumour pixels with score >= t, P(t) = #pixels with score >= t, Dice = 2 TP / (P + G).
    A `pred_filter` (e.g. small-component removal) changes the mask shape, so then every threshold is
    thresholded and filtered slice by slice (slower, exact)."""
    thresholds = np.asarray(thresholds, dtype=float).ravel()
    total = np.zeros(thresholds.size)
    subjects = _subject_pixels(records)
    for recs, scores, labels in subjects:
        n_gt = int(np.count_nonzero(labels))
        if pred_filter is None:
            all_sorted, pos_sorted = np.sort(scores), np.sort(scores[labels])
            n_pred = scores.size - np.searchsorted(all_sorted, thresholds, side="left")
            tp = n_gt - np.searchsorted(pos_sorted, thresholds, side="left")
        else:
            tp, n_pred = np.zeros(thresholds.size, int), np.zeros(thresholds.size, int)
            for r in recs:
                b, g = np.asarray(r.brain, dtype=bool), np.asarray(r.gt, dtype=bool)
                for k, t in enumerate(thresholds):
                    p = predict(r.anomaly_map, b, float(t), pred_filter)
                    tp[k] += np.count_nonzero(p & g & b)
                    n_pred[k] += np.count_nonzero(p)
        total += _dice_from_counts(tp, n_pred, n_gt)
    return total / len(subjects)


def _choose(records: Sequence[MapRecord], n: int, thresholds: np.ndarray | None, pred_filter: PredFilter | None,
            quantile_range: tuple[float, float], chosen_on: str) -> ThresholdChoice:
    cand = candidate_thresholds(records, n, quantile_range) if thresholds is None else np.unique(thresholds)
    curve = dice_curve(records, cand, pred_filter)
    best = int(np.argmax(curve))  # ties: the lowest threshold
    return ThresholdChoice(threshold=float(cand[best]), val_dice=float(curve[best]), thresholds=cand,
                           val_curve=curve, search_range=(float(cand[0]), float(cand[-1])),
                           quantile_range=quantile_range, chosen_on=chosen_on,
                           n_subjects=len(group_by_subject(records)))


def choose_threshold(val_records: Sequence[MapRecord], n: int = 200, thresholds: np.ndarray | None = None,
                     pred_filter: PredFilter | None = None,
                     quantile_range: tuple[float, float] = QUANTILE_RANGE) -> ThresholdChoice:
    """Threshold maximising mean subject Dice on the VALIDATION records; candidates from them unless given."""
    return _choose(val_records, n, thresholds, pred_filter, quantile_range, "validation")


def oracle_threshold(test_records: Sequence[MapRecord], n: int = 200, thresholds: np.ndarray | None = None,
                     pred_filter: PredFilter | None = None,
                     quantile_range: tuple[float, float] = QUANTILE_RANGE) -> ThresholdChoice:
    """The same search on TEST records: only for a column labelled "oracle", never to rank methods."""
    return _choose(test_records, n, thresholds, pred_filter, quantile_range, "test (oracle)")
