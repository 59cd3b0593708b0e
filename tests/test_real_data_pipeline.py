"""The whole pipeline on a few REAL BraTS cases (../shared/data/brats or $MMCCD_REAL_DATA); skipped if absent.

Small on purpose (32 px, a tiny Cyclic UNet, few steps): it proves the real files flow through
prepare -> train -> evaluate -> score, including a BraTS 2023-named unlabelled case, not accuracy.
"""

import shutil

import nibabel as nib
import numpy as np
import pytest

from mmccd.config import load_config
from mmccd.data.prepare import prepare_dataset
from mmccd.paths import real_data_dir, unlabeled_data_dir
from mmccd.pipeline.evaluate import evaluate_run
from mmccd.pipeline.runs import train_run
from mmccd.pipeline.score import score_cases

DATA = real_data_dir()
pytestmark = [pytest.mark.real_data, pytest.mark.slow,
              pytest.mark.skipif(DATA is None, reason="real BraTS data not present (../shared/data/brats or $MMCCD_REAL_DATA)")]


def test_prepare_train_evaluate_score_on_real_cases(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    for case in sorted(DATA.iterdir())[:6]:  # a few cases keep this test in the tens of seconds
        if case.is_dir():
            (cases / case.name).symlink_to(case.resolve())
    cfg = load_config("tiny", {"method": "cyclic-unet", "train": {"iterations": 60}})
    summary = prepare_dataset(cases, tmp_path / "prepared", cfg.prepare)
    assert len(summary.prepared) == 6 and not summary.skipped
    run = tmp_path / "run"
    train_run(tmp_path / "prepared", run, cfg)
    result = evaluate_run(run).summary
    assert result["n_test_subjects"] >= 1 and 0.0 <= result["subject_mean_dice"] <= 1.0
    assert np.isfinite(result["pooled_auroc"])
    assert (run / "report.html").exists()

    # score a real case: the map lands on the input's voxel grid
    case = sorted(cases.iterdir())[0]
    out = score_cases(run, [case], tmp_path / "maps")
    assert not out.skipped
    ref = nib.load(case / f"{case.name}_flair.nii.gz")
    amap = nib.load(tmp_path / "maps" / f"{case.name}_anomaly.nii.gz")
    assert amap.shape == ref.shape == (240, 240, 155)
    assert np.allclose(amap.affine, ref.affine)
    data = np.asarray(amap.dataobj)
    assert data.max() > 0 and np.all(data[np.asarray(ref.dataobj) == 0] == 0)  # zero outside the brain

    unlabeled = unlabeled_data_dir()
    if unlabeled is not None:  # BraTS 2023 naming (t2f = FLAIR), no segmentation
        case23 = sorted(p for p in unlabeled.iterdir() if p.is_dir())[0]
        out23 = score_cases(run, [case23], tmp_path / "maps23")
        assert not out23.skipped
        ref23 = nib.load(next(case23.glob("*-t2f.nii*")))
        assert nib.load(tmp_path / "maps23" / f"{case23.name}_anomaly.nii.gz").shape == ref23.shape
    shutil.rmtree(tmp_path / "prepared")
