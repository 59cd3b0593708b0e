"""benchmarks/folds_so_far.py: the paired table over a stopped benchmark's finished folds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark_scripts import load_script

fss = load_script("folds_so_far")


def _write(bench: Path, fold: int, row: str, slices: str, dice: dict[str, float], postprocess: str = "none") -> None:
    d = fss.eval_dir(bench, fold, row, "flair", "t2", slices, postprocess)
    d.mkdir(parents=True)
    rows = [{"subject_id": s, "dice": v} for s, v in dice.items()]
    (d / "metrics.json").write_text(json.dumps({"per_subject": rows}))


def _bench(tmp_path: Path) -> Path:
    for slices in ("max_tumour", "all"):
        _write(tmp_path, 0, "dae", slices, {"s1": 0.8, "s2": 0.6})
        _write(tmp_path, 0, "mmccd@fast-bright", slices, {"s1": 0.5, "s2": 0.4})
        _write(tmp_path, 1, "dae", slices, {"s3": 0.7, "s4": 0.9})
        _write(tmp_path, 1, "mmccd@fast-bright", slices, {"s3": 0.6, "s4": 0.5})
    _write(tmp_path, 2, "dae", "max_tumour", {"s5": 0.1})  # fold 2 unfinished: no variant, no volume eval
    return tmp_path


def test_eval_dir_names_follow_the_benchmark(tmp_path: Path) -> None:
    d = fss.eval_dir(tmp_path, 0, "mmccd@fast-bright", "flair", "t2", "max_tumour", "field")
    assert d == tmp_path / "runs" / "fold-0" / "mmccd_flair-t2" / "eval-max_tumour-field@fast-bright"
    assert fss.eval_dir(tmp_path, 1, "dae", "flair", "t2", "all", "none").name == "eval-all"


def test_only_folds_every_row_finished_are_pooled(tmp_path: Path) -> None:
    bench = _bench(tmp_path)
    rows = ["dae", "mmccd@fast-bright"]
    folds = fss.finished_folds(bench, rows, "flair", "t2", "none")
    assert folds == [0, 1]
    result = fss.tables(fss.collect(bench, rows, "flair", "t2", "none", folds), folds)
    dae = result["summary"][0]["max_tumour"]
    assert dae["n"] == 4 and dae["mean"] == pytest.approx(0.75)
    assert dae["per_fold"] == {0: pytest.approx(0.7), 1: pytest.approx(0.8)}
    pair = result["pairs"][0]["max_tumour"]
    assert pair["diff"] == pytest.approx((0.3 + 0.2 + 0.1 + 0.4) / 4)
    assert pair["a_higher"] == 4 and pair["b_higher"] == 0
    assert pair["p"] == pytest.approx(0.125)  # exact two-sided Wilcoxon, n = 4, all one sign: 2 / 2^4
    text = fss.markdown(result, "flair:t2", "none", bench)
    assert "| dae − mmccd@fast-bright | +0.250 (p 0.12; 4 / 0)" in text


def test_a_subject_in_two_folds_is_an_error(tmp_path: Path) -> None:
    for slices in ("max_tumour", "all"):
        for fold in (0, 1):
            _write(tmp_path, fold, "dae", slices, {"s1": 0.5})
            _write(tmp_path, fold, "threshold", slices, {"s1": 0.4})
    data = fss.collect(tmp_path, ["dae", "threshold"], "flair", "t2", "none", [0, 1])
    with pytest.raises(ValueError, match="s1 is tested by two folds"):
        fss.tables(data, [0, 1])


def test_no_finished_fold_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "runs" / "fold-0").mkdir(parents=True)
    assert fss.main(["--bench", str(tmp_path), "--rows", "dae", "mmccd"]) == 1
    assert "no fold has finished evaluations" in capsys.readouterr().err
