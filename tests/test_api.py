"""The three-line Python API (README) on a tiny SYNTHETIC phantom."""

import numpy as np

import mmccd
from mmccd.data.phantom import write_phantom_dataset


def test_three_line_api(tmp_path):
    write_phantom_dataset(tmp_path / "cases", n_cases=5, seed=1, shape=(48, 48, 32))
    det = mmccd.Detector("tiny", method="cyclic-unet", workdir=tmp_path / "work", train={"iterations": 20})
    det.fit(tmp_path / "cases")
    case = sorted((tmp_path / "cases").iterdir())[0]
    result = det.score(case)
    assert result.anomaly_map.shape == (48, 48, 32)
    assert np.isfinite(result.anomaly_map).all() and result.anomaly_map.max() > 0

    again = mmccd.Detector.load(det.run_dir).score(case)  # reopened run, same weights -> same map
    assert np.array_equal(again.anomaly_map, result.anomaly_map)


def test_detector_score_applies_the_validation_threshold(tmp_path, caplog):
    write_phantom_dataset(tmp_path / "cases", n_cases=5, seed=2, shape=(48, 48, 32))
    det = mmccd.Detector("tiny", method="mmccd", workdir=tmp_path / "work", train={"iterations": 10})
    det.fit(tmp_path / "cases")
    case = sorted((tmp_path / "cases").iterdir())[0]
    assert det.score(case).pred_mask is None  # no evaluation yet: no threshold, and a warning says how to get one
    assert "no validation threshold" in caplog.text and "mmccd evaluate" in caplog.text
    evaluation = det.evaluate()
    caplog.clear()
    result = det.score(case)  # the same default scoring in both: the threshold fits, no warning
    assert result.threshold == evaluation.summary["threshold"] and "other settings" not in caplog.text
    assert np.array_equal(result.pred_mask, result.anomaly_map >= result.threshold)
    assert evaluation.summary["score_config"]["composite"]  # MMCCD's default: the fast scoring, in both
