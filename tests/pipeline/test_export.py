"""`mmccd export` and `mmccd score --model`: one file that scores like its run, and clear errors for bad files."""

from __future__ import annotations

import gzip
import io
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mmccd.cli import main
from mmccd.config import load_config
from mmccd.data.phantom import write_phantom_dataset
from mmccd.data.prepare import prepare_dataset
from mmccd.errors import CheckpointError
from mmccd.pipeline.export import MODEL_FORMAT, builtin_path, export_run, load_model
from mmccd.pipeline.runs import train_run
from mmccd.pipeline.score import score_cases

PRESET = """\
name: export-test
prepare: {size: 32, min_brain_fraction: 0.15, workers: 1}
network: {base_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_resolutions: [],
          num_head_channels: 8, dropout: 0.0}
diffusion: {stripe_width: 32}
train: {iterations: 6, batch_size: 4, lr: 0.001, checkpoint_every: 3, log_every: 3}
score: {num_masks: 8, ddim_steps: 2, mask_batch: 8}
device: cpu
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    write_phantom_dataset(root / "cases", n_cases=5, seed=4, shape=(48, 48, 32))
    (root / "preset.yaml").write_text(PRESET)
    prepare_dataset(root / "cases", root / "prepared", load_config(root / "preset.yaml").prepare)
    train_run(root / "prepared", root / "run", load_config(root / "preset.yaml", {"method": "mmccd"}))
    yield root
    torch.set_num_threads(threads)


def _map(folder, case):
    return np.asarray(nib.load(folder / f"{case.name}_anomaly.nii.gz").dataobj)


@pytest.mark.parametrize("scoring", ["run", "fast-cal"])
def test_export_load_score_is_bit_identical_to_the_run(trained, scoring):
    root = trained
    model = export_run(root / "run", root / f"model-{scoring}.mmccd", scoring)
    case = sorted((root / "cases").iterdir())[0]
    loaded = load_model(model, "cpu")
    assert loaded.threshold is not None and loaded.info["format"] == MODEL_FORMAT
    assert loaded.info["training_data"]["terms"].startswith("Trained on BraTS cases")
    assert (loaded.settings.calibration == "intensity") == (scoring == "fast-cal")
    by_run = score_cases(root / "run", [case], root / f"by-run-{scoring}", scoring=scoring, view=False,
                         threshold=loaded.threshold)
    by_model = score_cases(None, [case], root / f"by-model-{scoring}", model=model, view=False)
    assert not by_run.skipped and not by_model.skipped
    assert np.array_equal(_map(root / f"by-run-{scoring}", case), _map(root / f"by-model-{scoring}", case))
    masks = [np.asarray(nib.load(root / d / f"{case.name}_pred_mask.nii.gz").dataobj)
             for d in (f"by-run-{scoring}", f"by-model-{scoring}")]
    assert np.array_equal(*masks)
    info = json.loads((root / f"by-model-{scoring}" / "score_info.json").read_text())
    assert info["threshold"] == loaded.threshold and str(model.name) in info["threshold_from"]


def test_the_cli_exports_and_scores_with_a_model(trained, tmp_path, capsys):
    root = trained
    assert main(["export", "--run", str(root / "run"), "--out", str(tmp_path / "m.mmccd"), "--half"]) == 0
    assert "score with: mmccd score --model" in capsys.readouterr().out
    half = tmp_path / "m.mmccd"
    full = export_run(root / "run", tmp_path / "full.mmccd")
    assert half.stat().st_size < 0.7 * full.stat().st_size  # float16 weights
    case = sorted((root / "cases").iterdir())[1]
    assert main(["score", "--model", str(half), "--case", str(case), "--out", str(tmp_path / "maps"), "--no-view"]) == 0
    assert (tmp_path / "maps" / f"{case.name}_pred_mask.nii.gz").exists()
    assert main(["export", "--run", str(root / "run"), "--out", str(half)]) == 2  # nothing replaced silently


def _payload(path):
    return torch.load(io.BytesIO(gzip.decompress(path.read_bytes())), weights_only=True)


def _write(path, payload):
    buf = io.BytesIO()
    torch.save(payload, buf)
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


def test_broken_or_foreign_model_files_get_clear_errors(trained, tmp_path):
    good = export_run(trained / "run", tmp_path / "good.mmccd")
    truncated = tmp_path / "truncated.mmccd"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or not an mmccd model"):
        load_model(truncated)
    checkpoint = trained / "run" / "checkpoints" / "source_to_target.pt"  # a checkpoint is not a model file
    with pytest.raises(CheckpointError, match="truncated or not an mmccd model"):
        load_model(checkpoint)
    payload = _payload(good)
    with pytest.raises(CheckpointError, match="written by a newer mmccd.*upgrade"):
        load_model(_write(tmp_path / "newer.mmccd", {**payload, "format": "mmccd-model-v7"}))
    with pytest.raises(CheckpointError, match="not an mmccd model file"):
        load_model(_write(tmp_path / "other.mmccd", {**payload, "format": "somebody-else-v1"}))
    wider = {**payload, "config": {**payload["config"], "network": {**payload["config"]["network"], "base_channels": 16}}}
    with pytest.raises(CheckpointError, match="another architecture"):
        load_model(_write(tmp_path / "wider.mmccd", wider))
    with pytest.raises(CheckpointError, match="does not exist.*mmccd export"):
        load_model(tmp_path / "missing.mmccd")


def test_a_multi_target_model_bundles_its_targets_and_scores_like_its_runs(trained, tmp_path):
    root = trained
    runs = tmp_path / "runs"
    import shutil

    shutil.copytree(root / "run", runs / "mmccd_flair-t2")
    train_run(root / "prepared", runs / "mmccd_flair-t1",
              load_config(root / "preset.yaml", {"method": "mmccd", "target": "t1"}))
    model = export_run(runs / "mmccd_flair-t2", tmp_path / "multi.mmccd", "fast-cal-multi")
    loaded = load_model(model, "cpu")
    assert set(loaded.method.members) == {"t2", "t1"} and loaded.settings.extra_targets == ("t1",)
    case = sorted((root / "cases").iterdir())[2]
    score_cases(runs / "mmccd_flair-t2", [case], tmp_path / "by-run", scoring="fast-cal-multi", view=False,
                threshold=loaded.threshold)
    score_cases(None, [case], tmp_path / "by-model", model=model, view=False)
    assert np.array_equal(_map(tmp_path / "by-run", case), _map(tmp_path / "by-model", case))
def test_the_builtin_model_loads_and_scores_a_synthetic_slice():
    path = builtin_path("flair-t2")
    assert path.stat().st_size <= 12e6
    model = load_model("builtin:flair-t2", "cpu")
    info = model.info
    assert (info["source"], info["target"], info["method"]) == ("flair", "t2", "mmccd")
    assert "BraTS terms apply" in info["training_data"]["terms"] and model.threshold is not None
    size = model.method.cfg.prepare.size
    from mmccd.data.batch import SliceBatch

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    brain = (yy**2 / 0.8 + xx**2 / 0.6) < 1
    source = torch.where(brain, 0.1 * torch.cos(6 * xx), torch.tensor(-1.0))[None, None]
    batch = SliceBatch(source=source, target=-source, brain_mask=brain[None, None], subject_id=["synthetic"],
                       slice_index=torch.zeros(1, dtype=torch.long))
    out = model.method.score(batch, model.settings, torch.Generator().manual_seed(0)).anomaly_map
    assert out.shape == source.shape and torch.isfinite(out).all() and (out[~brain[None, None]] == 0).all()
    with pytest.raises(Exception, match="unknown built-in model 'nope'"):
        load_model("builtin:nope")
