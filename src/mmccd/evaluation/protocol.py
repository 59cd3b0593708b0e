"""The threshold protocol: `threshold_protocol` is the one place a threshold is chosen for a reported
number — on VALIDATION records only; the test records give the metrics at that threshold and a labelled
oracle. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from mmccd.evaluation.metrics import EvalResult, MapRecord, PredFilter, evaluate_maps
from mmccd.evaluation.postprocess import PostProcess
from mmccd.evaluation.thresholds import ThresholdChoice, choose_threshold, dice_curve, oracle_threshold


def records_from_arrays(subject_ids: Sequence[str], slice_indices: Sequence[int], maps: np.ndarray, gt: np.ndarray,
                        brain: np.ndarray) -> list[MapRecord]:
    """One MapRecord per slice from N ids and indices and (N, H, W) maps, ground truth and brain masks."""
    return [MapRecord(str(s), int(k), m, g.astype(bool), b.astype(bool))
            for s, k, m, g, b in zip(subject_ids, slice_indices, maps, gt, brain, strict=True)]



def postprocess_records(records: list[MapRecord], pp: PostProcess) -> list[MapRecord]:
    out = []
    for r in records:
        amap, brain = pp.apply_map(r.anomaly_map, r.brain)
        out.append(replace(r, anomaly_map=amap, brain=brain))
    return out


@dataclass(frozen=True)
class ProtocolResult:
    """Threshold chosen on validation, applied once to test; the test-optimal oracle kept apart.

    choice:     the validation choice (its candidates, its curve)
    oracle:     the same search on test records: for a column labelled "oracle" only
    result:     test metrics at choice.threshold
    test_curve: (K,) mean subject Dice of the test records at choice.thresholds, for plots only
    """

    choice: ThresholdChoice
    oracle: ThresholdChoice
    result: EvalResult
    test_curve: np.ndarray


def threshold_protocol(val_records: list[MapRecord], test_records: list[MapRecord], n: int = 200,
                       pred_filter: PredFilter | None = None) -> ProtocolResult:
    """Choose the threshold on `val_records` (best mean subject Dice), evaluate `test_records` at it."""
    choice = choose_threshold(val_records, n=n, pred_filter=pred_filter)
    oracle = oracle_threshold(test_records, n=n, pred_filter=pred_filter)
    result = evaluate_maps(test_records, choice.threshold, pred_filter=pred_filter)
    return ProtocolResult(choice, oracle, result, dice_curve(test_records, choice.thresholds, pred_filter=pred_filter))
