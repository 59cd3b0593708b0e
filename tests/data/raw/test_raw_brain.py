"""Brain extraction: deepbet on a real BraTS T1 (already stripped) and on the same brain inside a synthetic head;
the 'none' backend and the HD-BET guard (no download)."""

import nibabel as nib
import numpy as np
import pytest
from raw_helpers import needs_data, needs_deepbet, real_case

from mmccd.data.raw import brain
from mmccd.data.raw.geometry import Grid
from mmccd.data.raw.rawlike import add_head
from mmccd.errors import MmccdError


@pytest.mark.slow
@needs_data
@needs_deepbet
def test_deepbet_finds_the_brain_of_a_real_case_and_of_its_synthetic_head():
    folder = real_case()
    img = nib.load(str(folder / f"{folder.name}_t1.nii.gz"))
    t1 = img.get_fdata(dtype=np.float32)
    truth = t1 != 0  # BraTS's own brain mask
    for volume in (t1, add_head(t1, img.header.get_zooms())):
        mask = brain.extract_brain(volume, img.affine, "deepbet")
        ml = brain.brain_volume_ml(mask, img.affine)
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        assert 900 <= ml <= 2000 and dice >= 0.95, (ml, dice)


def test_stripped_mask_keeps_the_partial_volume_edge():
    raw = np.zeros((20, 20, 10), np.float32)
    raw[5:15, 5:15, 2:8] = 100
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    grid = Grid((20, 20, 20), np.diag([1.0, 1.0, 1.0, 1.0]))
    mask = brain.stripped_mask(raw, affine, grid)
    assert mask.sum() == 10 * 10 * 13  # slices 2..7 at 2 mm span z 3..15 mm (edges at half): no wider halo
    with pytest.raises(MmccdError, match="empty"):
        brain.stripped_mask(np.zeros_like(raw), affine, grid)


def test_unknown_backend_and_hd_bet_without_weights(monkeypatch, tmp_path):
    with pytest.raises(MmccdError, match="unknown brain-extraction backend"):
        brain.extract_brain(np.zeros((4, 4, 4)), np.eye(4), "bet2")
    monkeypatch.setattr(brain, "hd_bet_weights", lambda: tmp_path / "0.model")
    with pytest.raises(MmccdError, match="HD-BET's weights are not on this machine.*does not download"):
        brain.extract_brain(np.zeros((4, 4, 4)), np.eye(4), "hd-bet")
