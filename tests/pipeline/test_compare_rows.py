"""`mmccd compare`: two rows of a results.json, paired by subject, on a hand-made file."""

from __future__ import annotations

import json

import pytest
from scipy import stats

from mmccd.cli import main
from mmccd.errors import MmccdError
from mmccd.pipeline.benchmark.compare import compare_rows

A = {"s1": 0.9, "s2": 0.8, "s3": 0.7, "s4": 0.6, "s5": 0.5, "s6": 0.45, "s7": 0.4}
B = {"s1": 0.5, "s2": 0.6, "s3": 0.65, "s4": 0.3, "s5": 0.55, "s6": 0.2, "s7": 0.1, "s8": 0.3}  # s8: B only


def row(method, pair, dice, pp="none"):
    return {"method": method, "pair": pair, "test_set": "held-out test split", "postprocess": pp,
            "per_subject_dice": {"max_tumour": dice, "all": {k: v / 2 for k, v in dice.items()}}}


@pytest.fixture
def results(tmp_path):
    rows = [row("mmccd", "flair:t2", A), row("threshold", "flair:t2", B), row("threshold", "t2:flair", A),
            row("mmccd", "flair:t2", B, pp="field@64px (2D per slice): erode 2"),
            row("threshold", "flair:t2", B, pp="field@64px (2D per slice): erode 2")]
    (tmp_path / "results.json").write_text(json.dumps({"results": rows}))
    return tmp_path


def test_two_rows_paired_on_their_shared_subjects(results):
    c = compare_rows(results, "mmccd", "threshold", pair="flair:t2")
    shared = sorted(A)
    d = [A[s] - B[s] for s in shared]
    assert c["max_tumour"].n == 7 and list(c["max_tumour"].dropped_ids) == ["s8"]
    assert c["max_tumour"].mean_diff == pytest.approx(sum(d) / 7)
    # tied |d| (0.05, 0.3 twice): the exact conditional null over all 2^7 sign flips
    assert c["max_tumour"].p_value == pytest.approx(stats.wilcoxon(d, method=stats.PermutationMethod()).pvalue)
    assert (c["max_tumour"].n_a_higher, c["max_tumour"].n_b_higher) == (6, 1)
    assert c["all"].mean_diff == pytest.approx(sum(d) / 14)
    # another pair's row by METHOD/PAIR; a post-processing profile by its name
    other = compare_rows(results / "results.json", "threshold/t2:flair", "mmccd/flair:t2")
    assert other["max_tumour"].mean_diff == 0 and other["max_tumour"].p_value is None  # identical values: no test
    field = compare_rows(results, "mmccd", "threshold", pair="flair:t2", postprocess="field")
    assert field["max_tumour"].mean_diff == 0 and field["max_tumour"].n == 8  # both field rows hold B's values


def test_ambiguous_missing_and_foreign_inputs_are_clear_errors(results, tmp_path, capsys):
    with pytest.raises(MmccdError, match="several pairs .*flair:t2, t2:flair.*--pair"):
        compare_rows(results, "threshold", "mmccd")
    with pytest.raises(MmccdError, match="no row for method 'dae'.*the rows are: mmccd \\(flair:t2\\)"):
        compare_rows(results, "dae", "mmccd", pair="flair:t2")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{\"rows\": []}")
    with pytest.raises(MmccdError, match="bad/results.json: expected a benchmark's results.json with a 'results'"):
        compare_rows(tmp_path / "bad", "a", "b")
    assert main(["compare", str(tmp_path / "nowhere"), "a", "b"]) == 2
    assert "expected a benchmark's results.json" in capsys.readouterr().err
    assert main(["compare", str(results), "mmccd", "threshold", "--pair", "flair:t2"]) == 0
    out = capsys.readouterr().out
    assert "Dice, max-tumour slice: mmccd 0.621 vs threshold 0.414" in out and "n=7 subjects" in out
