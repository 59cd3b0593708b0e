from __future__ import annotations

import math

import numpy as np
import pytest

from mmccd.evaluation.lesions import (
    evaluate_lesions,
    hd95,
    lesion_detection,
    stack_subject,
    subject_lesion_metrics,
    summarise_lesions,
    surface,
    volume_metrics,
)
from mmccd.evaluation.metrics import MapRecord
from mmccd.evaluation.postprocess import PostProcess

SPACING = (2.0, 1.0, 1.0)  # voxel 2 mm^3


def two_lesions_one_blob() -> tuple[np.ndarray, np.ndarray]:
    """(4, 8, 8): lesion A a 2x2x2 cube (8 voxels), lesion B one voxel; the prediction touches A at one voxel,
    misses B and adds a 2-voxel blob far from both."""
    gt = np.zeros((4, 8, 8), bool)
    gt[0:2, 1:3, 1:3] = True  # A
    gt[3, 6, 6] = True  # B
    pred = np.zeros_like(gt)
    pred[1, 2, 2] = True  # inside A
    pred[3, 1, 5:7] = True  # the false blob
    return pred, gt


def test_lesion_sensitivity_and_false_positives_by_hand():
    pred, gt = two_lesions_one_blob()
    m = lesion_detection(pred, gt, SPACING)
    assert m == {"n_lesions": 2, "n_detected": 1, "n_lesions_ignored": 0, "lesion_sensitivity": 0.5,
                 "n_pred_components": 2, "fp_components": 1}
    # B is 2 mm^3, A 16 mm^3: below 8 mm^3 B is ignored, so the one lesion left is found
    small = lesion_detection(pred, gt, SPACING, min_lesion_mm3=8.0)
    assert (small["n_lesions"], small["n_detected"], small["n_lesions_ignored"]) == (1, 1, 1)
    assert small["lesion_sensitivity"] == 1.0
    # a prediction on an ignored lesion is neither a find nor a false positive
    pred[3, 6, 6] = True
    on_small = lesion_detection(pred, gt, SPACING, min_lesion_mm3=8.0)
    assert (on_small["n_detected"], on_small["fp_components"], on_small["n_pred_components"]) == (1, 1, 3)


def test_no_lesion_gives_nan_sensitivity_and_counts_blobs():
    pred, _ = two_lesions_one_blob()
    m = lesion_detection(pred, np.zeros_like(pred), SPACING)
    assert math.isnan(m["lesion_sensitivity"]) and m["n_lesions"] == 0 and m["fp_components"] == 2


def test_connectivity():
    gt = np.zeros((2, 2, 2), bool)
    gt[0, 0, 0] = gt[1, 1, 1] = True  # touch at a corner only
    assert lesion_detection(gt, gt, SPACING)["n_lesions"] == 1  # 26-connected by default
    assert lesion_detection(gt, gt, SPACING, connectivity=18)["n_lesions"] == 2
    assert lesion_detection(gt, gt, SPACING, connectivity=6)["n_lesions"] == 2
    with pytest.raises(ValueError, match="connectivity"):
        lesion_detection(gt, gt, SPACING, connectivity=8)


def test_volumes_in_ml():
    pred, gt = two_lesions_one_blob()
    m = volume_metrics(pred, gt, SPACING)
    assert m["gt_volume_ml"] == pytest.approx(9 * 2 / 1000) and m["pred_volume_ml"] == pytest.approx(3 * 2 / 1000)


def single(shape: tuple[int, int, int], *points: tuple[int, int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for p in points:
        out[p] = True
    return out


def test_hd95_two_voxels_at_known_distances():
    shape = (4, 3, 3)
    assert hd95(single(shape, (0, 0, 0)), single(shape, (3, 0, 0)), (2.0, 1.0, 1.0)) == pytest.approx(6.0)  # 3 slices of 2 mm
    # anisotropic: 1 slice of 3 mm and 2 rows of 0.5 mm -> sqrt(3^2 + 1^2)
    d = hd95(single(shape, (0, 0, 0)), single(shape, (1, 2, 0)), (3.0, 0.5, 1.0))
    assert d == pytest.approx(math.sqrt(10.0))
    same = single(shape, (1, 1, 1))
    assert hd95(same, same, (1.0, 1.0, 1.0)) == 0.0


def test_hd95_percentile_of_each_direction_then_max():
    # gt one voxel; pred two voxels 1 and 3 mm away: pred->gt [1, 3] -> P95 = 1 + 0.95 * 2 = 2.9; gt->pred [1] -> 1
    shape = (1, 1, 5)
    assert hd95(single(shape, (0, 0, 1), (0, 0, 3)), single(shape, (0, 0, 0)), (1.0, 1.0, 1.0)) == pytest.approx(2.9)
    # a pooled percentile of [1, 3, 1] would give 2.8: we follow MONAI (max of the directed percentiles)


def test_hd95_matches_brute_force_on_surfaces():
    rng = np.random.default_rng(3)
    pred, gt = rng.random((5, 7, 6)) > 0.7, rng.random((5, 7, 6)) > 0.8
    spacing = (2.5, 0.8, 1.3)

    def directed(a, b):
        pa = np.argwhere(surface(a)) * spacing
        pb = np.argwhere(surface(b)) * spacing
        return np.percentile(np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1)).min(1), 95)

    assert hd95(pred, gt, spacing) == pytest.approx(max(directed(pred, gt), directed(gt, pred)))


def test_surface_interior_and_edge():
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    assert surface(cube).sum() == 26 and not surface(cube)[2, 2, 2]  # the centre is interior
    assert surface(np.ones((3, 3, 3), bool)).sum() == 26  # the volume edge counts as outside


def test_hd95_empty_cases():
    empty, dot = np.zeros((2, 2, 2), bool), single((2, 2, 2), (0, 0, 0))
    assert math.isnan(hd95(empty, empty, SPACING))  # nothing to measure (MONAI: NaN)
    assert hd95(dot, empty, SPACING) == math.inf and hd95(empty, dot, SPACING) == math.inf  # MONAI: inf
    with pytest.raises(ValueError, match="spacing"):
        hd95(dot, dot, (1.0, 1.0))


# ---------------------------------------------------------------- from per-slice records


def rec(z: int, gt_px=(), pred_px=(), sid: str = "S", size: int = 6) -> MapRecord:
    amap, gt = np.zeros((size, size)), np.zeros((size, size), bool)
    for p in pred_px:
        amap[p] = 1.0
    for p in gt_px:
        gt[p] = True
    return MapRecord(sid, z, amap, gt, np.ones((size, size), bool))


def test_gap_in_slice_index_breaks_connectivity():
    # GT at the same pixel on slices 11 and 13: without slice 12 they are two lesions, 2 slices apart
    gap = [rec(13, gt_px=[(2, 2)], pred_px=[(2, 2)]), rec(10), rec(11, gt_px=[(2, 2)])]  # out of order on purpose
    m = subject_lesion_metrics(gap, 0.5, (1.0, 1.0, 1.0))
    assert (m["n_slices"], m["n_runs"], m["n_lesions"], m["n_detected"]) == (3, 2, 2, 1)
    # distances stay true across the gap: gt->pred [2 mm (slice 11 to 13), 0] -> P95 1.9 (stacked by position: 0.95)
    assert m["hd95_mm"] == pytest.approx(1.9)
    # with slice 12 given (empty), 11 and 13 are still apart; with 11 and 12 both lesion, one lesion
    full = [rec(10), rec(11, gt_px=[(2, 2)]), rec(12, gt_px=[(2, 2)], pred_px=[(2, 2)])]
    f = subject_lesion_metrics(full, 0.5, (1.0, 1.0, 1.0))
    assert (f["n_runs"], f["n_lesions"], f["n_detected"], f["fp_components"]) == (1, 1, 1, 0)


def test_stack_subject_places_slices():
    vol = stack_subject([rec(7, gt_px=[(0, 0)]), rec(5)])
    assert vol.first_index == 5 and vol.anomaly_map.shape == (3, 6, 6)
    assert vol.present.tolist() == [True, False, True] and vol.gt[2, 0, 0] and not vol.brain[1].any()
    assert vol.runs() == [slice(0, 1), slice(2, 3)]
    with pytest.raises(ValueError, match="several subjects"):
        stack_subject([rec(1), rec(2, sid="T")])
    with pytest.raises(ValueError, match="twice"):
        stack_subject([rec(1), rec(1)])


def test_threshold_inside_brain_only():
    r = rec(0, gt_px=[(0, 0), (3, 3)], pred_px=[(0, 0), (3, 3), (5, 5)])
    brain = np.ones((6, 6), bool)
    brain[0, 0] = brain[5, 5] = False  # GT and prediction outside the brain never count
    r = MapRecord("S", 0, r.anomaly_map, r.gt, brain)
    m = subject_lesion_metrics([r], 0.5, SPACING)
    assert (m["n_lesions"], m["n_detected"], m["fp_components"], m["n_pred_components"]) == (1, 1, 0, 1)
    assert m["gt_volume_ml"] == pytest.approx(2 / 1000) and m["hd95_mm"] == 0.0


def test_postprocess_per_run():
    recs = [rec(0, pred_px=[(1, 1)]), rec(1, pred_px=[(1, 1)]), rec(2, gt_px=[(4, 4)], pred_px=[(4, 4)])]
    raw = subject_lesion_metrics(recs, 0.5, SPACING)
    assert raw["fp_components"] == 1 and raw["n_pred_components"] == 2
    per_slice = subject_lesion_metrics(recs, 0.5, SPACING, postprocess=PostProcess(min_component=2))
    assert per_slice["n_pred_components"] == 0  # every 2D component is 1 px
    volume = subject_lesion_metrics(recs, 0.5, SPACING, postprocess=PostProcess(min_component=2, dims=3))
    assert (volume["n_pred_components"], volume["fp_components"], volume["n_detected"]) == (1, 1, 0)


def test_evaluate_and_summarise():
    records = [rec(0, gt_px=[(1, 1)], pred_px=[(1, 1), (4, 4)], sid="A"),
               rec(0, gt_px=[(1, 1), (4, 4)], sid="B"), rec(0, sid="C")]
    spacing = {"A": (1.0, 1.0, 1.0), "B": (1.0, 2.0, 2.0), "C": (1.0, 1.0, 1.0)}
    rows = evaluate_lesions(records, 0.5, spacing)
    assert [r["subject_id"] for r in rows] == ["A", "B", "C"] and rows[1]["spacing_mm"] == [1.0, 2.0, 2.0]
    assert rows[1]["gt_volume_ml"] == pytest.approx(2 * 4 / 1000)
    s = summarise_lesions(rows)
    # A: 1/1 found, 1 FP, HD finite; B: 0/2, HD inf (nothing predicted); C: no lesion, nothing predicted, HD NaN
    assert s["subject_mean_lesion_sensitivity"] == pytest.approx(0.5) and s["subject_nan_lesion_sensitivity"] == 1
    assert s["pooled_lesion_sensitivity"] == pytest.approx(1 / 3) and s["mean_fp_components"] == pytest.approx(1 / 3)
    assert (s["n_hd95_finite"], s["n_hd95_inf"], s["n_hd95_nan"]) == (1, 1, 1)
    assert s["mean_hd95_mm"] == pytest.approx(rows[0]["hd95_mm"])
    with pytest.raises(ValueError, match="no spacing for subject C"):
        evaluate_lesions(records, 0.5, {"A": (1, 1, 1), "B": (1, 1, 1)})
