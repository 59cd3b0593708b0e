"""The skull-stripping guard rail: fires on a (synthetic) head, never on a real BraTS case."""

import nibabel as nib
import numpy as np
import pytest
from raw_helpers import DATA, UNLABELED, needs_data, real_case

from mmccd.data.raw.rawlike import add_head
from mmccd.data.raw.skull import looks_skull_stripped, ring_measure


def _ellipsoid_brain(shape=(160, 190, 150)) -> np.ndarray:
    """A 1 mm 'brain': an ellipsoid of about 1.3 l with a smooth tissue pattern and darker ventricles."""
    x, y, z = np.meshgrid(*(np.arange(s) - s / 2 for s in shape), indexing="ij")
    r = (x / 62) ** 2 + (y / 78) ** 2 + (z / 62) ** 2
    vol = (600 + 200 * np.sin(x / 7) * np.cos(y / 9)).astype(np.float32) * (r < 1)
    vol[(x / 12) ** 2 + (y / 30) ** 2 + (z / 15) ** 2 < 1] = 150
    return vol


def test_fires_on_a_synthetic_head_not_on_its_brain():
    brain = _ellipsoid_brain()
    assert looks_skull_stripped(brain, np.eye(4), "brain.nii.gz") is None
    for noise in (0.0, 0.02):  # zero background: the ring sign; noisy background: the volume sign
        warning = looks_skull_stripped(add_head(brain, (1, 1, 1), noise=noise), np.eye(4), "head.nii.gz")
        assert warning is not None and "head.nii.gz" in warning and "mmccd preprocess" in warning


def test_fires_on_a_partial_volume_and_respects_voxel_size():
    brain = _ellipsoid_brain()
    assert "only" in looks_skull_stripped(brain[:, :, 60:75], np.eye(4), "slab.nii.gz")
    assert looks_skull_stripped(brain[::2, ::2, ::2], np.diag([2.0, 2.0, 2.0, 1.0]), "b.nii.gz") is None


def test_ring_measure_is_the_same_whatever_zero_margin_surrounds_the_head():
    """It works on the non-zero box (plus a margin): a head in a larger or a tight field gives the same (pads of
    even width: the 2 mm working copy keeps every 2nd voxel, an odd pad would sample other voxels)."""
    head = add_head(_ellipsoid_brain(), (1, 1, 1), noise=0.0)
    nz = [np.nonzero(head.any(axis=tuple(a for a in range(3) if a != k)))[0] for k in range(3)]
    tight = head[tuple(slice(ix[0], ix[-1] + 1) for ix in nz)]
    ring = ring_measure(head, np.eye(4))
    assert ring[0] > 60 and ring == ring_measure(np.pad(head, ((30, 2), (0, 40), (8, 6))), np.eye(4))
    assert ring_measure(tight, np.eye(4)) == ring_measure(np.pad(tight, 2), np.eye(4))
    assert ring_measure(np.zeros((40, 40, 40), np.float32), np.eye(4)) == (0.0, 0.0)


@needs_data
def test_real_case_passes_and_its_head_fires():
    folder = real_case()
    for c in ("t1", "flair"):
        img = nib.load(str(folder / f"{folder.name}_{c}.nii.gz"))
        data = img.get_fdata(dtype=np.float32)
        assert looks_skull_stripped(data, img.affine, folder.name) is None
        assert looks_skull_stripped(add_head(data, img.header.get_zooms()), img.affine, "head") is not None


def _all_real_files():
    files = []
    for root in (DATA, UNLABELED):
        if root is not None:
            files += sorted(p for p in root.glob("*/*.nii.gz") if "seg" not in p.name)
    return files


@pytest.mark.slow
@needs_data
def test_no_warning_on_any_real_brats_volume():
    """Every contrast of the 26 BraTS cases (and the 2 unlabeled ones when $MMCCD_UNLABELED_DATA is set)."""
    files = _all_real_files()
    assert len(files) >= 4 * 26
    fired = []
    for f in files:
        img = nib.load(str(f))
        w = looks_skull_stripped(img.get_fdata(dtype=np.float32), img.affine, f)
        if w:
            fired.append(w)
    assert not fired


def test_prepare_warns_when_a_case_is_not_skull_stripped_and_not_when_it_is(tmp_path, caplog):
    """Through `prepare_case`, as `mmccd prepare` and `mmccd score` read every case."""
    import logging

    from mmccd.config import PrepareConfig
    from mmccd.data.discovery import case_from_path
    from mmccd.data.phantom import write_phantom_dataset
    from mmccd.data.prepare import prepare_case
    from mmccd.data.raw.rawlike import add_head

    write_phantom_dataset(tmp_path / "cases", n_cases=2, seed=0, shape=(96, 96, 64))
    clean, head = sorted(p for p in (tmp_path / "cases").iterdir() if p.is_dir())
    caplog.set_level(logging.WARNING, logger="mmccd")
    prepare_case(case_from_path(clean), PrepareConfig(size=32))
    assert "skull-stripped" not in caplog.text
    for contrast in ("t1", "t1ce", "t2", "flair"):  # every contrast inside a head, on a zero background
        path = head / f"{head.name}_{contrast}.nii.gz"
        img = nib.load(path)
        with_head = add_head(np.asarray(img.dataobj, np.float32), img.header.get_zooms(), noise=0.0)
        nib.save(nib.Nifti1Image(with_head, img.affine), path)
    prepare_case(case_from_path(head), PrepareConfig(size=32))
    assert "does not look skull-stripped" in caplog.text and f"{head.name}_t1.nii.gz" in caplog.text
    assert "mmccd preprocess" in caplog.text
