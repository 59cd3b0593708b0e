"""End to end on a tiny SYNTHETIC phantom: prepare -> train -> evaluate -> score, Cyclic UNet and MMCCD."""

import json

import nibabel as nib
import numpy as np
import pytest

from mmccd.config import load_config
from mmccd.data.phantom import write_phantom_dataset
from mmccd.data.prepare import prepare_dataset
from mmccd.pipeline.evaluate import evaluate_run
from mmccd.pipeline.runs import train_run
from mmccd.pipeline.score import score_cases


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    write_phantom_dataset(root / "cases", n_cases=8, seed=3, shape=(48, 48, 32))
    cfg = load_config("tiny").prepare
    prepare_dataset(root / "cases", root / "prepared", cfg)
    return root


@pytest.mark.parametrize("method", ["cyclic-unet", "mmccd"])
def test_train_evaluate_score(prepared, method):
    root = prepared
    cfg = load_config("tiny", {"method": method, "train": {"iterations": 150}})
    run = root / f"run-{method}"
    train_run(root / "prepared", run, cfg)
    summary = evaluate_run(run).summary
    # better than chance on synthetic tumours (the threshold comes from validation subjects)
    assert summary["pooled_auroc"] > 0.7
    assert 0.0 <= summary["subject_mean_dice"] <= 1.0
    for name in ("config.yaml", "metrics.json", "per_slice.csv", "report.html", "figures/examples.png",
                 "figures/dice_vs_threshold.png", "checkpoints/source_to_target.pt", "checkpoints/target_to_source.pt"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["threshold"] == pytest.approx(summary["threshold"])

    case = sorted((root / "cases").iterdir())[0]
    out = root / f"maps-{method}"
    result = score_cases(run, [case], out)
    assert not result.skipped
    ref = nib.load(case / f"{case.name}_flair.nii.gz")
    amap = nib.load(out / f"{case.name}_anomaly.nii.gz")
    assert amap.shape == ref.shape
    assert np.allclose(amap.affine, ref.affine)
    assert (out / f"{case.name}_pred_mask.nii.gz").exists() and (out / f"{case.name}_montage.png").exists()
    assert (out / f"{case.name}_view.html").stat().st_size > 1e6  # the page with its viewer inside
    views = sorted((run / "views").glob("*_view.html"))  # the evaluation's worst and best test subject
    assert views and all(v.name.split("_view")[0] in (run / "report.html").read_text() for v in views)
    # nothing written is silently overwritten
    again = score_cases(run, [case], out)
    assert again.skipped and "exists" in again.skipped[0][1]
