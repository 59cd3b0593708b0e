import numpy as np
import pytest
from scipy import ndimage

from mmccd.data.discovery import find_cases
from mmccd.data.phantom import make_phantom, write_phantom_dataset

SHAPE = (48, 48, 32)
CONTRASTS = ("t1", "t1ce", "t2", "flair")


def test_deterministic():
    a, b, c = make_phantom(3, SHAPE), make_phantom(3, SHAPE), make_phantom(4, SHAPE)
    for k in (*CONTRASTS, "seg"):
        np.testing.assert_array_equal(a[k], b[k])
        assert not np.array_equal(a[k], c[k])
    assert a["t1"].dtype == np.float32 and a["seg"].dtype == np.uint8
    assert set(np.unique(a["seg"])) == {0, 1, 2, 4}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tumour_differs_from_healthy_tissue_in_every_contrast(seed):
    ph = make_phantom(seed, (96, 96, 64))
    tumour = ph["seg"] > 0
    brain = ph["t1"] > 0
    around = ndimage.binary_dilation(tumour, iterations=4) & ~tumour & brain
    for k in CONTRASTS:
        diff = abs(ph[k][tumour].mean() - ph[k][around].mean())
        assert diff > 60, (k, diff)  # > 6 % of the intensity scale (noise std ~ 25)


def test_background_is_exactly_zero_and_tumour_free_slices_remain():
    ph = make_phantom(5, SHAPE)
    brain = ph["flair"] > 0
    assert all(np.array_equal(brain, ph[k] > 0) for k in CONTRASTS)
    assert not brain[0].any() and not brain[:, :, 0].any()
    with_brain = brain.any(axis=(0, 1))
    with_tumour = (ph["seg"] > 0).any(axis=(0, 1))
    assert with_tumour.sum() >= 4 and (with_brain & ~with_tumour).sum() >= 8
    assert not make_phantom(5, SHAPE, tumour=False)["seg"].any()


@pytest.mark.parametrize("naming", ["brats2021", "brats2023"])
def test_write_dataset(tmp_path, naming):
    folders = write_phantom_dataset(tmp_path, n_cases=2, seed=0, shape=SHAPE, naming=naming, healthy_fraction=0.5)
    assert "SYNTHETIC" in (tmp_path / "README.txt").read_text()
    cases = find_cases(tmp_path)
    assert [c.root for c in cases] == folders
    assert all(c.naming == naming and len(c.images) == 4 and c.seg is not None for c in cases)
