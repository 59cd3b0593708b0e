from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import norm, rankdata

from mmccd.evaluation.stats import compare_paired, compare_to_best, subject_values


def sign_flip_p(d: list[float]) -> float:
    """Two-sided Wilcoxon p by enumerating all 2^n sign flips of the non-zero differences (midranks)."""
    d = np.asarray([x for x in d if x != 0], dtype=float)
    ranks = rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    w = np.array([ranks[np.array(signs, bool)].sum() for signs in itertools.product([0, 1], repeat=d.size)])
    return min(1.0, 2 * min(np.mean(w <= observed), np.mean(w >= observed)))


def paired(d: list[float], base: float = 0.5) -> tuple[dict[str, float], dict[str, float]]:
    """Method a = base + d, method b = base, for subjects s0, s1, ..."""
    return {f"s{i}": base + x for i, x in enumerate(d)}, {f"s{i}": base for i in range(len(d))}


def test_six_positive_differences_by_hand():
    # all 6 differences positive, distinct: W+ = 1+...+6 = 21, the largest of 2^6 = 64 sign patterns -> p = 2/64
    a, b = paired([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    c = compare_paired(a, b, "mmccd", "cyclic")
    assert c.p_value == pytest.approx(2 / 64) and c.p_method == "exact" and c.statistic == 21
    assert (c.n, c.n_test, c.n_a_higher, c.n_b_higher, c.n_equal) == (6, 6, 6, 0, 0)
    assert c.mean_diff == pytest.approx(0.035)
    assert c.std_diff == pytest.approx(0.01 * math.sqrt(35 / 12))  # population std of 1..6 is sqrt(35/12)
    assert c.note == "" and "mmccd - cyclic" in c.describe()


@pytest.mark.parametrize("d", [
    [0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8],  # distinct: scipy's exact distribution
    [0.1, -0.2, 0.3, 0.3, 0.5, -0.5, 0.7],  # tied |d|: exact sign-flip enumeration with midranks
    [0.0, 0.05, -0.1, 0.1, 0.2, 0.2, -0.3, 0.4, 0.0],  # zeros dropped, then ties
])
def test_p_value_equals_sign_flip_enumeration(d):
    c = compare_paired(*paired(d))
    assert c.p_value == pytest.approx(sign_flip_p(d), abs=1e-12)
    assert c.n == len(d) and c.n_test == sum(x != 0 for x in d)
    if 0.0 in d:
        assert c.n_equal == 2 and "2 zero difference(s) dropped" in c.note


def test_float_noise_does_not_break_a_tie():
    # 0.8 - 0.6 and 0.5 - 0.3 differ in the last bit; rounded they tie, as they should
    a = {"x": 0.8, "y": 0.5, "z": 0.9, "w": 0.1, "v": 0.7, "u": 0.65}
    b = {"x": 0.6, "y": 0.3, "z": 0.2, "w": 0.5, "v": 0.2, "u": 0.1}
    c = compare_paired(a, b)
    assert c.p_method.startswith("exact (sign-flip")
    assert c.p_value == pytest.approx(sign_flip_p([0.2, 0.2, 0.7, -0.4, 0.5, 0.55]))


def test_large_sample_with_ties_uses_tie_corrected_normal():
    d = [0.1] * 10 + [0.2] * 6 + [-0.1] * 4  # n 20 > 16 with ties
    c = compare_paired(*paired(d))
    ranks = rankdata(np.abs(d))
    w_plus = ranks[np.array(d) > 0].sum()
    n = len(d)
    ties = [14, 6]  # |d| = 0.1 fourteen times, 0.2 six times
    var = n * (n + 1) * (2 * n + 1) / 24 - sum(t ** 3 - t for t in ties) / 48
    z = (w_plus - n * (n + 1) / 4) / math.sqrt(var)
    assert c.p_method == "asymptotic (ties)" and c.statistic == w_plus
    assert c.p_value == pytest.approx(2 * norm.sf(abs(z)))


def test_pairs_by_id_not_by_position():
    a = {"s1": 0.9, "s2": 0.2, "s3": 0.5, "s4": 0.8, "s5": 0.7, "s6": 0.6}
    b_shuffled = {"s6": 0.5, "s4": 0.7, "s1": 0.8, "s3": 0.4, "s5": 0.6, "s2": 0.1}  # a - b = 0.1 for every id
    c = compare_paired(a, b_shuffled)
    assert c.mean_diff == pytest.approx(0.1) and c.std_diff == pytest.approx(0.0, abs=1e-12)
    assert c.n_a_higher == 6


def test_different_subjects_are_an_error_unless_asked():
    a, b = {"s1": 0.5, "s2": 0.6, "s3": 0.7}, {"s1": 0.4, "s2": 0.6, "s4": 0.1}
    with pytest.raises(ValueError, match="different subjects.*s3.*s4"):
        compare_paired(a, b)
    c = compare_paired(a, b, drop_unshared=True)
    assert c.n == 2 and set(c.dropped_ids) == {"s3", "s4"} and "2 subject(s)" in c.note
    with pytest.raises(ValueError, match="no subject"):
        compare_paired({"x": 1.0}, {"y": 1.0}, drop_unshared=True)


def test_all_zero_and_tiny_n_are_reported():
    c = compare_paired(*paired([0.0, 0.0, 0.0]))
    assert c.p_value is None and c.statistic is None and c.p_method == "none"
    assert "all 3 differences are zero" in c.note
    five = compare_paired(*paired([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert five.p_value == pytest.approx(2 / 32)  # the smallest p five differences can give
    assert "0.0625" in five.note and "cannot be reached" in five.note


def test_nan_is_an_error():
    with pytest.raises(ValueError, match="NaN"):
        compare_paired({"a": float("nan"), "b": 0.1}, {"a": 0.2, "b": 0.3})


def test_compare_to_best():
    table = {
        "ae": {"s1": 0.2, "s2": 0.3, "s3": 0.1},
        "mmccd": {"s2": 0.6, "s1": 0.5, "s3": 0.55},  # order of ids does not matter
        "cyclic": {"s1": 0.45, "s2": 0.6, "s3": 0.5},
    }
    best = compare_to_best(table)
    assert best.best == "mmccd" and best.means["mmccd"] == pytest.approx(0.55)
    assert [(c.method_a, c.method_b) for c in best.comparisons] == [("ae", "mmccd"), ("cyclic", "mmccd")]
    cyc = best.comparisons[1]
    assert cyc.mean_diff == pytest.approx(-0.1 / 3) and cyc.n_equal == 1 and cyc.n_test == 2
    assert "smallest possible two-sided p is 0.5" in cyc.note
    assert best.to_dict()["n_subjects"] == 3
    table["ae"] = {"s1": 0.2, "s2": 0.3}
    with pytest.raises(ValueError, match="different subjects"):
        compare_to_best(table)
    partial = compare_to_best(table, drop_unshared=True)
    assert partial.subject_ids == ["s1", "s2"] and "1 subject(s)" in partial.note
    tie = compare_to_best({"x": {"s": 0.5}, "y": {"s": 0.5}})
    assert tie.best == "x" and "ties" in tie.note


def test_subject_values():
    rows = [{"subject_id": "A", "dice": 0.5, "auroc": 0.9}, {"subject_id": "B", "dice": 0.25}]
    assert subject_values(rows) == {"A": 0.5, "B": 0.25}
    with pytest.raises(ValueError, match="twice"):
        subject_values(rows + [{"subject_id": "A", "dice": 0.1}])
