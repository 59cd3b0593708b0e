from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mmccd.evaluation.metrics import dice, evaluate_maps, predict
from mmccd.evaluation.postprocess import PostProcess
from mmccd.evaluation.thresholds import candidate_thresholds, choose_threshold, dice_curve, oracle_threshold


def brute_force_curve(records, thresholds, pred_filter=None):
    """Mean subject Dice, one threshold and one subject at a time, from `metrics.dice`."""
    curve = []
    for t in thresholds:
        per_subject = []
        for sid in dict.fromkeys(r.subject_id for r in records):
            preds, gts = [], []
            for r in (r for r in records if r.subject_id == sid):
                preds.append(predict(r.anomaly_map, r.brain, t, pred_filter)[r.brain])
                gts.append(r.gt[r.brain])
            per_subject.append(dice(np.concatenate(preds), np.concatenate(gts)))
        curve.append(np.mean(per_subject))
    return np.array(curve)


def test_candidates_are_brain_quantiles(make_records):
    records = make_records(np.random.default_rng(0), 3)
    cand = candidate_thresholds(records, n=50)
    scores = np.concatenate([r.anomaly_map[r.brain] for r in records])
    assert np.all(np.diff(cand) > 0) and cand.size <= 50
    assert cand[0] == pytest.approx(np.quantile(scores, 0.5))
    assert cand[-1] == pytest.approx(np.quantile(scores, 0.9999))
    assert cand[-1] < 50  # the huge outside-brain values are not candidates
    # log-spaced in 1 - q: more candidates in the top 10% of scores than in the 50th-90th percentile
    assert np.sum(cand >= np.quantile(scores, 0.9)) > np.sum(cand < np.quantile(scores, 0.9))


def test_dice_curve_equals_brute_force(make_records, two_subjects):
    records = make_records(np.random.default_rng(1), 4, slices=3)
    cand = candidate_thresholds(records, n=40)
    np.testing.assert_allclose(dice_curve(records, cand), brute_force_curve(records, cand))
    # thresholds exactly at scores (ties: score >= threshold is predicted)
    t = np.array([0.1, 0.3, 0.5, 0.6, 0.7, 0.9, 1.0])
    np.testing.assert_allclose(dice_curve(two_subjects, t), brute_force_curve(two_subjects, t))
    at_half = evaluate_maps(two_subjects, 0.5).summary["subject_mean_dice"]  # the same convention as metrics
    assert dice_curve(two_subjects, np.array([0.5]))[0] == pytest.approx(at_half)


def test_dice_curve_with_pred_filter_equals_brute_force(make_records):
    records = make_records(np.random.default_rng(2), 3)
    cand = candidate_thresholds(records, n=15)
    f = PostProcess(min_component=3).apply_mask
    curve = dice_curve(records, cand, pred_filter=f)
    np.testing.assert_allclose(curve, brute_force_curve(records, cand, f))
    assert not np.allclose(curve, dice_curve(records, cand))  # the filter does change something here


def test_choose_threshold_uses_only_validation(make_records):
    # validation: tumours score ~0.3-0.5 above noise in [0, 0.2); test: tumours higher, noise up to 0.6
    val = make_records(np.random.default_rng(3), 6, tumour_level=0.5, noise=0.2)
    test = make_records(np.random.default_rng(4), 6, tumour_level=1.5, noise=0.6)
    choice = choose_threshold(val, n=100)
    oracle = oracle_threshold(test, n=100)
    val_best = choice.thresholds[np.argmax(brute_force_curve(val, choice.thresholds))]
    assert choice.threshold == val_best
    assert choice.threshold < 0.5 < oracle.threshold  # two different optima
    assert choice.chosen_on == "validation" and oracle.chosen_on == "test (oracle)"
    # the chosen threshold is worse on test than the test optimum: that gap is why the protocol matters
    test_at_choice = evaluate_maps(test, choice.threshold).summary["subject_mean_dice"]
    assert test_at_choice < oracle.val_dice
    # the choice depends on validation records only
    shuffled_test = [dataclasses.replace(r, anomaly_map=r.anomaly_map[::-1]) for r in test]
    assert choose_threshold(val, n=100).threshold == choice.threshold
    assert oracle_threshold(shuffled_test, n=100).threshold != choice.threshold


def test_choice_reports_its_dice_and_range(make_records):
    val = make_records(np.random.default_rng(5), 4)
    choice = choose_threshold(val)
    assert choice.val_dice == pytest.approx(evaluate_maps(val, choice.threshold).summary["subject_mean_dice"])
    assert choice.search_range == (choice.thresholds[0], choice.thresholds[-1])
    assert choice.n_subjects == 4 and choice.val_curve.shape == choice.thresholds.shape
    text = choice.describe()
    assert "50th" in text and "99.99th" in text and "validation" in text
    assert choice.to_dict()["threshold"] == choice.threshold and choice.to_dict()["n_candidates"] == len(choice.thresholds)
    # given thresholds are used as they are
    fixed = choose_threshold(val, thresholds=np.array([0.2, 0.1, 0.3]))
    assert list(fixed.thresholds) == [0.1, 0.2, 0.3]


def test_invalid_search_is_rejected(make_records):
    val = make_records(np.random.default_rng(6), 2)
    with pytest.raises(ValueError):
        candidate_thresholds(val, quantile_range=(0.9, 0.5))
    with pytest.raises(ValueError, match="no records"):
        choose_threshold([])
