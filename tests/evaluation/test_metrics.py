from __future__ import annotations

import math

import numpy as np
import pytest

from mmccd.evaluation.metrics import MapRecord, auprc, auroc, dice, evaluate_maps, slice_metrics


def test_dice_by_hand_and_empty_conventions():
    # P = {0, 1}, G = {0, 2}: |P∩G| = 1 -> 2 * 1 / (2 + 2) = 0.5
    assert dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == 0.5
    empty = np.zeros(4, bool)
    assert dice(empty, empty) == 1.0  # nothing to find, nothing found
    assert dice(empty, np.array([0, 1, 0, 0], bool)) == 0.0  # empty prediction
    assert dice(np.array([0, 1, 0, 0], bool), empty) == 0.0  # empty ground truth
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros(3, bool), empty)


def test_auroc_auprc_by_hand():
    scores, labels = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)
    # positive/negative pairs ranked right: .35>.1, .8>.1, .8>.4 (not .35>.4) -> 3/4
    assert auroc(scores, labels) == pytest.approx(0.75)
    # ranked .8(P) .4(N) .35(P) .1(N): recall .5 at precision 1, recall 1 at precision 2/3 -> .5 + .5 * 2/3
    assert auprc(scores, labels) == pytest.approx(5 / 6)
    assert auroc(np.array([0.5, 0.5]), np.array([0, 1], bool)) == pytest.approx(0.5)  # a tie counts half


def test_one_class_labels_give_nan():
    s = np.array([0.1, 0.9, 0.3])
    for labels in (np.zeros(3, bool), np.ones(3, bool)):
        assert math.isnan(auroc(s, labels))
        assert math.isnan(auprc(s, labels))


BRAIN = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
MAP = np.array([[0.9, 0.2, 0.85, 0.1], [0.8, 0.3, 5.0, 5.0]])
GT = np.array([[1, 0, 0, 0], [1, 0, 1, 1]], bool)


def test_slice_metrics_inside_brain_by_hand():
    # brain pixels: scores .9 .2 .85 .1 .8 .3, tumour at .9 and .8 (the 2 outside-brain tumour px don't count)
    # threshold .5: pred {.9, .85, .8}: TP 2, P 3, G 2 -> Dice 4/5
    # AUROC: .9 beats all 4 negatives, .8 beats 3 (not .85) -> 7/8
    # AP: ranked .9(P) .85(N) .8(P) ...: .5 * 1 + .5 * 2/3 = 5/6
    m = slice_metrics(MAP, GT, BRAIN, 0.5)
    assert m == pytest.approx({"dice": 0.8, "auroc": 7 / 8, "auprc": 5 / 6, "n_brain": 6, "n_tumour": 2})


def test_pixels_outside_brain_do_not_matter():
    ref = slice_metrics(MAP, GT, BRAIN, 0.5)
    m2, g2 = MAP.copy(), GT.copy()
    m2[~BRAIN] = [-7.0, np.nan]  # even NaN outside the brain is fine
    g2[~BRAIN] = [False, True]
    assert slice_metrics(m2, g2, BRAIN, 0.5) == pytest.approx(ref, nan_ok=True)


def test_empty_ground_truth_and_empty_prediction():
    no_tumour = np.zeros_like(GT)
    m = slice_metrics(MAP, no_tumour, BRAIN, 0.5)  # something predicted, nothing there
    assert m["dice"] == 0.0 and math.isnan(m["auroc"]) and math.isnan(m["auprc"]) and m["n_tumour"] == 0
    assert slice_metrics(MAP, no_tumour, BRAIN, 10.0)["dice"] == 1.0  # nothing predicted, nothing there
    m = slice_metrics(MAP, GT, BRAIN, 10.0)  # empty prediction, tumour present
    assert m["dice"] == 0.0 and m["auroc"] == pytest.approx(7 / 8)


def test_nan_inside_brain_is_an_error():
    bad = MAP.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        slice_metrics(bad, GT, BRAIN, 0.5)


def test_levels_differ_on_hand_made_example(two_subjects):
    r = evaluate_maps(two_subjects, 0.5)
    # per slice (sorted by subject, then slice): A/0 Dice 1, A/1 .5, B/0 0 (see conftest)
    assert [(s["subject_id"], s["slice_index"]) for s in r.per_slice] == [("A", 0), ("A", 1), ("B", 0)]
    assert [s["dice"] for s in r.per_slice] == pytest.approx([1.0, 0.5, 0.0])
    # A/0 AUROC 1; A/1: pos {.7,.2} neg {.6,.1} -> 3/4; B: pos .3 below all of {.8,.4,.6} -> 0
    assert [s["auroc"] for s in r.per_slice] == pytest.approx([1.0, 0.75, 0.0])
    # per subject: A concatenated: TP 1+1, P 1+2, G 1+2 -> 4/6; B: 0
    a, b = r.per_subject
    assert (a["subject_id"], a["n_slices"], b["n_slices"]) == ("A", 2, 1)
    assert a["dice"] == pytest.approx(2 / 3) and b["dice"] == 0.0
    # A AUROC: pos {.9,.7,.2} x neg {.1,.1,.1,.6,.1}: 5 + 5 + 4 right of 15
    assert a["auroc"] == pytest.approx(14 / 15)
    # A AP: ranked .9P .7P .6N .2P: 1/3 * (1 + 1 + 3/4)
    assert a["auprc"] == pytest.approx(11 / 12)
    # pooled: TP 2, P 5, G 4 -> 4/9
    assert r.pooled["dice"] == pytest.approx(4 / 9)
    # pooled AUROC: pos {.9,.7,.2,.3} x 8 neg {.1 x4, .6, .8, .4, .6}: 8 + 7 + 4 + 4 of 32
    assert r.pooled["auroc"] == pytest.approx(23 / 32)
    # pooled AP: ranked .9P .8N .7P .6N .6N .4N .3P .2P ...: 1/4 * (1 + 2/3 + 3/7 + 4/8)
    assert r.pooled["auprc"] == pytest.approx(109 / 168)
    s = r.summary
    assert s["headline"] == "subject_mean_dice"
    assert s["subject_mean_dice"] == pytest.approx(1 / 3) and s["subject_std_dice"] == pytest.approx(1 / 3)
    assert s["slice_mean_dice"] == pytest.approx(0.5)
    assert s["pooled_dice"] == pytest.approx(4 / 9)
    assert s["subject_mean_auroc"] == pytest.approx(7 / 15) and s["slice_mean_auroc"] == pytest.approx(7 / 12)
    assert (s["n_subjects"], s["n_slices"], s["n_brain_pixels"], s["n_tumour_pixels"]) == (2, 3, 12, 4)
    assert s["subject_nan_auroc"] == 0 and not s["pooled_subsampled"]


def test_one_slice_per_subject_makes_subject_equal_slice(two_subjects):
    r = evaluate_maps([x for x in two_subjects if x.slice_index == 0], 0.5)
    for m in ("dice", "auroc", "auprc"):
        assert r.summary[f"subject_mean_{m}"] == pytest.approx(r.summary[f"slice_mean_{m}"])


def test_nan_metrics_are_skipped_and_counted(two_subjects):
    full = np.ones((1, 4), bool)
    healthy = MapRecord("C", 0, np.array([[0.1, 0.2, 0.3, 0.4]]), np.zeros((1, 4), bool), full)
    r = evaluate_maps([*two_subjects, healthy], 0.5)
    s = r.summary
    assert s["subject_nan_auroc"] == 1 and s["subject_n_auroc"] == 2
    assert s["subject_mean_auroc"] == pytest.approx(7 / 15)  # C left out of the AUROC mean
    assert s["subject_mean_dice"] == pytest.approx((2 / 3 + 0 + 1) / 3)  # C: nothing predicted -> Dice 1
    assert any("AUROC/AUPRC NaN" in n for n in r.notes)


def test_pooled_subsample_is_deterministic_and_reported(two_subjects):
    r1 = evaluate_maps(two_subjects, 0.5, max_pooled_pixels=8)
    r2 = evaluate_maps(two_subjects, 0.5, max_pooled_pixels=8)
    assert r1.pooled["subsampled"] and r1.pooled["n_pixels_ranked"] == 8
    assert r1.pooled["auroc"] == r2.pooled["auroc"]
    assert r1.pooled["dice"] == pytest.approx(4 / 9)  # Dice still on every pixel
    assert any("subsample" in n for n in r1.notes)


def test_repeated_slice_and_bad_shapes_are_rejected(two_subjects):
    with pytest.raises(ValueError, match="twice"):
        evaluate_maps([*two_subjects, two_subjects[0]], 0.5)
    bad = MapRecord("X", 0, np.zeros((2, 2)), np.zeros((2, 3), bool), np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="shape"):
        evaluate_maps([bad], 0.5)
    with pytest.raises(ValueError, match="no records"):
        evaluate_maps([], 0.5)


def test_pred_filter_is_applied_inside_brain(two_subjects):
    # a filter that removes everything: every Dice with tumour becomes 0, AUROC unchanged
    r = evaluate_maps(two_subjects, 0.5, pred_filter=np.zeros_like)
    ref = evaluate_maps(two_subjects, 0.5)
    assert r.summary["pooled_dice"] == 0.0
    assert r.summary["pooled_auroc"] == ref.summary["pooled_auroc"]
