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
