"""Issue 7.4: the same seed and inputs give the same anomaly maps bit for bit (CPU), and every output folder
records the resolved config, the code version and the package versions."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

import mmccd
from mmccd.config import from_dict, load_config, to_dict
from mmccd.data.prepare import prepare_dataset
from mmccd.pipeline.runs import read_run_config


def _provenance(record: dict) -> None:
    assert record["code_version"].startswith(mmccd.__version__) and "packages" in record
    for name in ("torch", "numpy", "nibabel"):
        assert record["packages"][name][0].isdigit(), record["packages"]


@pytest.mark.parametrize("method", ["cyclic-unet", "mmccd"])
def test_score_twice_gives_identical_maps(run_cli, runs, phantom, tmp_path, method):
    case = phantom / "Phantom_00002"
    for out in ("a", "b"):
        result = run_cli("score", "--run", runs[method], "--case", case, "--out", tmp_path / out, "--threshold", "0.1")
        assert result.code == 0, result
    for suffix in ("anomaly", "pred_mask"):
        a, b = (nib.load(tmp_path / out / f"Phantom_00002_{suffix}.nii.gz") for out in ("a", "b"))
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), suffix
        assert np.array_equal(a.affine, b.affine)
    amap = np.asarray(nib.load(tmp_path / "a" / "Phantom_00002_anomaly.nii.gz").dataobj)
    assert amap.shape == (48, 48, 32) and amap.max() > 0  # a real map, not trivially equal zeros

    info = json.loads((tmp_path / "a" / "score_info.json").read_text())
    _provenance(info)
    assert info["run"] == str(runs[method].resolve()) and info["threshold"] == 0.1
    used, trained = info["config"], to_dict(read_run_config(runs[method]))
    assert {k: v for k, v in used.items() if k != "score"} == {k: v for k, v in trained.items() if k != "score"}
    assert used["score"]["seed"] == trained["score"]["seed"]  # the scoring settings used (the run's or a preset's)
    assert info["cases"]["Phantom_00002"]["files"] == [
        "Phantom_00002_anomaly.nii.gz", "Phantom_00002_pred_mask.nii.gz", "Phantom_00002_montage.png",
        "Phantom_00002_view.html"]


def test_run_folder_records_config_code_and_packages(runs, prepared):
    for run in runs.values():
        cfg = read_run_config(run)  # the resolved config, loadable as is
        assert cfg == from_dict(yaml.safe_load((run / "config.yaml").read_text()))
        info = json.loads((run / "run_info.json").read_text())
        _provenance(info)
        assert info["prepared"] == str(prepared.resolve())
        # the processor and torch's kernel set: the same code and seed can train other weights on another CPU
        assert info["cpu"] and info["cpu"] != "unknown"
        assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_prepared_store_records_config_code_and_packages_and_is_reproducible(prepared, phantom, small_preset, tmp_path):
    record = json.loads((prepared / "prepare.json").read_text())
    _provenance(record)
    cfg = load_config(small_preset).prepare
    assert record["config"]["size"] == cfg.size
    # preparing the same inputs again gives the same arrays, byte for byte
    prepare_dataset(phantom, tmp_path / "again", cfg)
    for name in ("images.npy", "brain.npy", "seg.npy"):
        a = (prepared / "cases" / "Phantom_00001" / name).read_bytes()
        assert a == (tmp_path / "again" / "cases" / "Phantom_00001" / name).read_bytes(), name
    assert (prepared / "splits.json").read_text() == (tmp_path / "again" / "splits.json").read_text()
