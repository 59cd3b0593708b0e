"""benchmarks/learning_curve.py's outputs from made-up points: the steps table, and the image-size table whose
difference and paired p-value are those of mmccd.evaluation.stats on the same per-subject values."""

from __future__ import annotations

import pytest

from benchmark_scripts import load_script


@pytest.fixture(scope="module")
def lc():
    return load_script("learning_curve")


def _point(tag: str, steps: int, size: int, method: str, dice: list[float], val: float) -> dict:
    per_subject = {f"s{i}": d for i, d in enumerate(dice)}
    score = {"dice": sum(dice) / len(dice), "dice_std": 0.1, "val_dice": val, "n_val": 4, "auroc": 0.8,
             "auprc": 0.5, "n": len(dice), "oracle_dice": 0.9, "per_subject": per_subject}
    return {"tag": tag, "steps": steps, "size": size, "method": method, "scores": {"run/max_tumour": score,
            "run/all": score}, "translation": {"run": {"translation_mae": 0.2, "translation_ssim": 0.5,
                                                       "stripe_mae": None, "cyclic_error": 0.1}}}


def test_size_table_pairs_each_method_at_both_sizes(lc, tmp_path):
    small = [0.5, 0.6, 0.7, 0.4, 0.55, 0.65]
    big = [0.6, 0.65, 0.75, 0.5, 0.6, 0.7]  # every subject higher at 128 px
    results = {"command": "learning_curve.py --size 128", "points": [
        _point("steps-1200", 1200, 64, "dae", small, 0.6), _point("steps-2400", 2400, 64, "dae", small, 0.6),
        _point("steps-1200-size-128", 1200, 128, "dae", big, 0.7)]}
    lc.write_outputs(tmp_path, results)
    text = (tmp_path / "learning_curve.md").read_text()
    assert "64 px vs 128 px" in text
    rows = [r for r in text.splitlines() if r.startswith("| dae | run |")]
    assert len(rows) == 2  # max-tumour and volume, only the 1,200-step point is paired
    # mean of the differences by hand: (0.1 + 0.05 + 0.05 + 0.1 + 0.05 + 0.05) / 6 = 0.0667; all 6 positive,
    # tied magnitudes -> sign-flip enumeration: p = 2 / 2^6 = 0.03125
    assert "+0.067 (p 0.031, n 6)" in rows[0]
    assert "| 0.600 | 0.700 |" in rows[0]  # validation Dice at both sizes
    assert (tmp_path / "learning_curve_size.png").stat().st_size > 5000
    assert (tmp_path / "learning_curve.png").exists()


def test_no_size_point_no_size_table(lc, tmp_path):
    results = {"command": "learning_curve.py", "points": [_point("steps-1200", 1200, 64, "dae", [0.5, 0.6], 0.6)]}
    lc.write_outputs(tmp_path, results)
    assert "px vs" not in (tmp_path / "learning_curve.md").read_text()
    assert not (tmp_path / "learning_curve_size.png").exists()


def test_merge_keeps_every_point_once(lc):
    base = {"bench": "b", "fold": 0, "pair": "flair:t2"}
    a = {**base, "command": "A", "points": [_point("steps-1200", 1200, 64, "cyclic-unet", [0.5], 0.5),
                                             _point("steps-1200-size-128", 1200, 128, "cyclic-unet", [0.6], 0.5)]}
    b = {**base, "command": "B", "points": [_point("steps-1200", 1200, 64, "dae", [0.7], 0.5),
                                             _point("steps-1200", 1200, 64, "cyclic-unet", [0.9], 0.5)]}
    merged = lc.merge_results([a, b])
    assert [(p["tag"], p["method"]) for p in merged["points"]] == [
        ("steps-1200", "cyclic-unet"), ("steps-1200", "dae"), ("steps-1200-size-128", "cyclic-unet")]
    assert merged["points"][0]["scores"]["run/all"]["dice"] == 0.9  # the later file's point on a repeat
    assert merged["commands"] == ["A", "B"]
    with pytest.raises(SystemExit, match="different"):
        lc.merge_results([a, {**b, "fold": 1}])


def test_a_scoring_without_a_translation_measure_gets_dashes_not_another_scorings(lc, tmp_path):
    pt = _point("steps-1200", 1200, 64, "mmccd", [0.5, 0.6], 0.6)
    score = pt["scores"]["run/max_tumour"]
    pt["scores"] = {"fast/max_tumour": score, "run/max_tumour": score, "reference/max_tumour": score}
    pt["translation"] = {"fast": {"translation_mae": 0.276, "stripe_mae": 0.281, "cyclic_error": 0.1},
                         "run": {"translation_mae": 0.300, "stripe_mae": 0.307, "cyclic_error": 0.1}}
    lc.write_outputs(tmp_path, {"command": "c", "points": [pt]})
    rows = {r.split(" | ")[2]: r for r in (tmp_path / "learning_curve.md").read_text().splitlines()
            if r.startswith("| steps-1200 | mmccd |")}
    assert "| 0.276 | 0.281 |" in rows["fast"] and "| 0.300 | 0.307 |" in rows["run"]
    assert rows["reference"].endswith("| – | – | – |")  # measured under fast and run only


def test_the_reference_scoring_only_at_the_points_asked_for(lc):
    assert lc.scorings_at(1200, False, None) == ["fast", "run"]
    assert lc.scorings_at(1200, True, None) == ["fast", "run", "reference"]  # every point by default
    assert lc.scorings_at(1200, True, [2400, 3600]) == ["fast", "run"]
    assert lc.scorings_at(3600, True, [2400, 3600]) == ["fast", "run", "reference"]
    assert lc.scorings_at(3600, False, [3600]) == ["fast", "run"]  # --reference-steps alone asks for nothing
    assert lc.scorings_at(1200, True, [1200], 64, [128]) == ["fast", "run"]  # --reference-sizes: the 128 px point
    assert lc.scorings_at(1200, True, [1200], 128, [128]) == ["fast", "run", "reference"]
    assert lc.scorings_at(2400, True, [1200], 128, [128]) == ["fast", "run"]


def test_mmccd_copies_cyclic_unets_backward_only_when_cyclic_unet_is_in_the_study(lc):
    assert lc.backward_is_cyclic_unets("mmccd", ["cyclic-unet", "mmccd"])
    assert not lc.backward_is_cyclic_unets("mmccd", ["mmccd", "dae"])  # resumes its own backward net
    assert not lc.backward_is_cyclic_unets("cyclic-unet", ["cyclic-unet", "mmccd"])


@pytest.mark.parametrize("argv, message", [
    (["--steps"], "nothing to do"),
    (["--steps", "--size", "128"], "--size needs --data"),
])
def test_a_run_with_nothing_to_do_or_no_data_for_its_size_point_is_refused(lc, tmp_path, monkeypatch, capsys,
                                                                           argv, message):
    monkeypatch.setattr("sys.argv", ["learning_curve.py", "--bench", str(tmp_path / "bench"),
                                     "--out", str(tmp_path / "out"), *argv])
    with pytest.raises(SystemExit):
        lc.main()
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written
