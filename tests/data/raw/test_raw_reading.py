"""Finding and reading raw contrasts: names, bad inputs, DICOM series; the missing-extra error."""

import importlib

import nibabel as nib
import numpy as np
import pytest
from raw_helpers import needs_dicom, write_dicom_series

from mmccd.data.raw import extra
from mmccd.data.raw.reading import contrast_of, find_contrasts, read_case, read_contrast
from mmccd.errors import DataError


def _nii(path, shape=(12, 10, 8), affine=None):
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.mark.parametrize("name, contrast", [
    ("T1w.nii.gz", "t1"), ("sub-01_T1w.nii", "t1"), ("MPRAGE", "t1"), ("t1_GD.nii.gz", "t1ce"),
    ("T1_post-contrast", "t1ce"), ("case_t1ce.nii.gz", "t1ce"), ("T2_tse.nii.gz", "t2"), ("x-t2w.nii.gz", "t2"),
    ("AX_FLAIR", "flair"), ("t2_flair.nii.gz", "flair"), ("BraTS-GLI-1-t2f.nii.gz", "flair"),
    ("case_seg.nii.gz", None), ("localizer", None), ("DWI_b1000", None),
])
def test_contrast_of_names(name, contrast):
    assert contrast_of(name) == contrast


def test_find_contrasts_and_the_errors(tmp_path):
    case = tmp_path / "p01"
    case.mkdir()
    for n in ("T1w.nii.gz", "FLAIR.nii.gz", "notes.txt", "seg.nii.gz"):
        _nii(case / n) if n.endswith(".gz") else (case / n).write_text("x")
    assert find_contrasts(case) == {"t1": case / "T1w.nii.gz", "flair": case / "FLAIR.nii.gz"}
    with pytest.raises(DataError, match=r"the t1ce, t2 image is missing.*T1w.nii.gz \(t1\)"):
        read_case(case)
    assert set(read_case(case, required=("t1", "flair"))) == {"t1", "flair"}
    _nii(case / "t1_mprage.nii.gz")
    with pytest.raises(DataError, match="several entries for the t1 contrast.*T1w.nii.gz, t1_mprage.nii.gz"):
        find_contrasts(case)
    assert find_contrasts(case, {"t1": "t1_mp*", "flair": "FLAIR*"})["t1"].name == "t1_mprage.nii.gz"
    with pytest.raises(DataError, match="does not exist"):
        find_contrasts(tmp_path / "nope")


def test_two_dimensional_and_single_slice_files_are_refused(tmp_path):
    flat = tmp_path / "T1.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10), np.float32), np.eye(4)), str(flat))
    with pytest.raises(DataError, match=f"{flat}.*not a 3D volume"):
        read_contrast(flat, "t1")
    one = _nii(tmp_path / "T2.nii.gz", shape=(10, 10, 2))
    assert read_contrast(one, "t2").data.shape == (10, 10, 2)
    nan = tmp_path / "FLAIR.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), np.nan, np.float32), np.eye(4)), str(nan))
    with pytest.raises(DataError, match=f"{nan}.*NaN"):
        read_contrast(nan, "flair")


def test_missing_extra_names_it(monkeypatch):
    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "SimpleITK":
            raise ImportError("No module named 'SimpleITK'")
        return real(name, *a, **k)

    monkeypatch.setattr(extra.importlib, "import_module", fake)
    with pytest.raises(extra.MissingExtraError, match=r"co-registration needs .*simpleitk.*mmccd\[preprocess\]"):
        extra.require("SimpleITK", "co-registration")


@needs_dicom
def test_dicom_series_lands_on_the_right_world_points(tmp_path):
    vol = np.full((16, 12, 6), 50.0)
    vol[3, 2, 1], vol[10, 8, 4] = 1000, 2000  # (column, row, slice)
    write_dicom_series(tmp_path / "T1", vol, spacing=(1.0, 1.5, 2.0))
    raw = read_contrast(tmp_path / "T1", "t1")
    assert raw.kind == "dicom" and raw.data.shape == (16, 12, 6) and len(raw.files) == 6
    for value, lps in ((1000, (3.0, 3.0, 2.0)), (2000, (10.0, 12.0, 8.0))):  # patient LPS mm of those voxels
        ijk = np.argwhere(raw.data == value)[0]
        world = raw.affine[:3, :3] @ ijk + raw.affine[:3, 3]
        assert np.allclose(world, (-lps[0], -lps[1], lps[2]))  # RAS


@needs_dicom
def test_dicom_folder_with_two_series_is_refused(tmp_path):
    vol = np.full((8, 8, 3), 100.0)
    write_dicom_series(tmp_path / "FLAIR", vol, series_number=4, description="FLAIR ax")
    write_dicom_series(tmp_path / "FLAIR", vol, series_number=5, description="FLAIR cor")
    with pytest.raises(DataError, match=r"FLAIR: the DICOM folder holds several series.*series 4 'FLAIR ax' "
                                        r"\(3 files\); series 5 'FLAIR cor' \(3 files\)"):
        read_contrast(tmp_path / "FLAIR", "flair")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("not dicom")
    with pytest.raises(DataError, match="empty: no DICOM image"):
        read_contrast(tmp_path / "empty", "t2")
