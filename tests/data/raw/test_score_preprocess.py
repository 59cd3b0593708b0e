"""`mmccd score --preprocess`: a raw scan (moved, resampled, inside a head) is preprocessed, scored, and its maps
are written on the raw scan's own grid. Needs the `preprocess` extra and the real BraTS cases."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from raw_helpers import first_case, needs_data, needs_deepbet, needs_sitk

from mmccd.cli import main
from mmccd.config import load_config
from mmccd.data.phantom import write_phantom_dataset
from mmccd.data.prepare import prepare_dataset
from mmccd.data.raw.rawlike import add_head, make_rawlike
from mmccd.data.raw.record import PreprocessedCase
from mmccd.pipeline.runs import train_run

pytestmark = [needs_data, needs_sitk, needs_deepbet, pytest.mark.slow]
PRESET = """\
prepare: {size: 32, min_brain_fraction: 0.15, workers: 1}
network: {base_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_resolutions: [],
          num_head_channels: 8, dropout: 0.0}
train: {iterations: 4, batch_size: 4, checkpoint_every: 4, log_every: 4}
device: cpu
"""


def test_a_raw_scan_is_preprocessed_scored_and_mapped_back_onto_its_own_grid(tmp_path):
    torch.set_num_threads(1)
    write_phantom_dataset(tmp_path / "phantom", n_cases=4, seed=0, shape=(48, 48, 32))
    (tmp_path / "preset.yaml").write_text(PRESET)
    prepare_dataset(tmp_path / "phantom", tmp_path / "prepared", load_config(tmp_path / "preset.yaml").prepare)
    run = tmp_path / "run"
    train_run(tmp_path / "prepared", run, load_config(tmp_path / "preset.yaml", {"method": "cyclic-unet"}))

    case = first_case()
    ref = nib.load(case / f"{case.name}_t1.nii.gz")
    zooms = ref.header.get_zooms()[:3]
    volumes = {c: add_head(np.asarray(nib.load(case / f"{case.name}_{c}.nii.gz").dataobj, dtype=np.float32), zooms)
               for c in ("t1", "flair")}
    raw = make_rawlike(volumes, ref.affine)
    folder = tmp_path / "raw" / "patient-01"
    folder.mkdir(parents=True)
    for c, img in raw.images.items():
        nib.save(img, folder / f"{c.upper()}.nii.gz")

    out = tmp_path / "maps"
    assert main(["score", "--run", str(run), "--case", str(folder), "--out", str(out), "--preprocess",
                 "--threshold", "0.1", "--no-view"]) == 0
    raw_flair = nib.load(folder / "FLAIR.nii.gz")
    amap = nib.load(out / "patient-01_anomaly.nii.gz")
    mask = nib.load(out / "patient-01_pred_mask.nii.gz")
    for img in (amap, mask):  # the raw scan's own grid, not the 1 mm preprocessed one
        assert img.shape == raw_flair.shape and np.allclose(img.affine, raw_flair.affine)
    data = np.asarray(amap.dataobj)
    pre = PreprocessedCase.load(out / "preprocessed" / "patient-01")
    brain = nib.load(next(pre.root.glob("*brainmask.nii.gz")))
    raw_brain = pre.to_raw(np.asarray(brain.dataobj) > 0, "flair")  # the extracted brain on the raw grid
    assert data.max() > 0 and raw_brain.any()
    inside = float((raw_brain[data > 0]).mean())
    assert inside > 0.95, inside  # the map lies on the raw scan's brain, not on its skull or neck
