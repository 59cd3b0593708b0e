"""One deliberately broken file per check; each error names the case and the file."""

import gzip
import logging
import os

import nibabel as nib
import numpy as np
import pytest
from data_helpers import volumes, write_case, write_nifti

from mmccd.config import MODALITIES
from mmccd.data.discovery import find_cases
from mmccd.data.io import load_nifti, save_nifti_like
from mmccd.data.validation import check_cases, neighbour_correlation, validate_case
from mmccd.errors import DataError


def _validate(root, require_seg=True, read_data=True):
    (case,) = find_cases(root)
    return validate_case(case, MODALITIES, require_seg=require_seg, read_data=read_data)


def _one_error(root, match, **kw):
    result = _validate(root, **kw)
    assert len(result.errors) == 1, [str(e) for e in result.errors]
    err = result.errors[0]
    assert err.case == "C_001"
    assert match in str(err), str(err)
    return err


@pytest.fixture
def case(tmp_path):
    return write_case(tmp_path, "C_001")


def test_good_case(case):
    result = _validate(case.parent)
    assert result.ok and not result.warnings


def test_missing_modality(case):
    (case / "C_001_t2.nii.gz").unlink()
    err = _one_error(case.parent, "t2 image is missing")
    assert "C_001_t2.nii.gz" in err.expected


def test_missing_seg_only_when_required(case):
    (case / "C_001_seg.nii.gz").unlink()
    _one_error(case.parent, "segmentation is missing")
    assert _validate(case.parent, require_seg=False).ok


def test_duplicate_modality(case):
    write_nifti(case / "C_001_flair.nii", volumes()["flair"])
    _one_error(case.parent, "duplicate files for flair")


def test_shape_mismatch(case):
    write_nifti(case / "C_001_t2.nii.gz", volumes((20, 24, 16))["t2"])
    err = _one_error(case.parent, "another shape")
    assert err.found == "shape (20, 24, 16)" and err.file.name == "C_001_t2.nii.gz"


def test_seg_of_another_shape(case):
    write_nifti(case / "C_001_seg.nii.gz", np.zeros((24, 24, 15), np.uint8))
    assert "seg" in str(_one_error(case.parent, "another shape"))


def test_voxel_size_mismatch(case):
    write_nifti(case / "C_001_t1ce.nii.gz", volumes()["t1ce"], np.diag([1.0, 1.0, 2.0, 1.0]))
    _one_error(case.parent, "another voxel size")


def test_orientation_mismatch(case):
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    write_nifti(case / "C_001_t1ce.nii.gz", volumes()["t1ce"], flip)
    err = _one_error(case.parent, "another orientation")
    assert "LAS" in err.found


def test_origin_only_difference_is_a_warning(case, caplog):
    shifted = np.eye(4)
    shifted[:3, 3] = [0.0, 5.0, -3.0]
    write_nifti(case / "C_001_flair.nii.gz", volumes()["flair"], shifted)
    result = _validate(case.parent)
    assert result.ok and len(result.warnings) == 1 and "origin" in result.warnings[0]
    with caplog.at_level(logging.WARNING, logger="mmccd"):
        good, skipped = check_cases(find_cases(case.parent), MODALITIES, True)
    assert len(good) == 1 and not skipped and "origin" in caplog.text


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite(case, value):
    v = volumes()["t2"]
    v[3, 4, 5] = value
    write_nifti(case / "C_001_t2.nii.gz", v)
    assert _one_error(case.parent, "NaN or infinite").found == "1 non-finite voxel(s)"


def test_all_zero(case):
    write_nifti(case / "C_001_t1.nii.gz", np.zeros((24, 24, 16), np.float32))
    _one_error(case.parent, "empty")


def test_constant(case):
    write_nifti(case / "C_001_t1.nii.gz", np.full((24, 24, 16), 7.0, np.float32))
    _one_error(case.parent, "constant")


def test_truncated_gzip(case):
    f = case / "C_001_t2.nii.gz"
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2])
    _one_error(case.parent, "truncated or corrupt")
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_nifti(f)


def test_truncated_uncompressed(tmp_path):
    f = write_nifti(tmp_path / "x_t1.nii", volumes()["t1"])
    f.write_bytes(f.read_bytes()[:2000])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_nifti(f)


def test_not_nifti_with_nifti_name(case):
    (case / "C_001_flair.nii.gz").write_bytes(gzip.compress(b"this is a text file, not an image" * 20))
    _one_error(case.parent, "a gzip file that does not hold a NIfTI image")
    (case / "C_001_flair.nii.gz").write_text("plain text")
    _one_error(case.parent, "not a gzip-compressed NIfTI")
    (case / "C_001_flair.nii.gz").unlink()
    (case / "C_001_flair.nii").write_text("plain text, long enough to have a header-sized start " * 10)
    _one_error(case.parent, "not a NIfTI file")


def test_empty_file(case):
    (case / "C_001_t1.nii.gz").write_bytes(b"")
    _one_error(case.parent, "the file is empty")


def test_4d_and_2d(case):
    write_nifti(case / "C_001_t1.nii.gz", np.ones((24, 24, 16, 2), np.float32))
    err = _one_error(case.parent, "not a 3D volume", read_data=False)
    assert "(24, 24, 16, 2)" in err.found
    write_nifti(case / "C_001_t1.nii.gz", np.ones((24, 24), np.float32))
    _one_error(case.parent, "not a 3D volume")


def test_4d_with_singleton_is_squeezed(case):
    write_nifti(case / "C_001_t1.nii.gz", volumes()["t1"][..., None])
    assert _validate(case.parent).ok
    data, _ = load_nifti(case / "C_001_t1.nii.gz")
    assert data.shape == (24, 24, 16) and data.dtype == np.float32


@pytest.mark.parametrize("naming,bad", [("brats2021", 3), ("brats2023", 4)])
def test_bad_seg_labels(tmp_path, naming, bad):
    folder = write_case(tmp_path, "C_001", naming=naming)
    seg_file = next(folder.glob("*seg*"))
    seg = np.asarray(nib.load(seg_file).dataobj).copy()
    seg[0, 0, 0] = bad
    write_nifti(seg_file, seg)
    err = _one_error(tmp_path, "unexpected labels")
    assert err.found == f"labels [{bad}]"


def test_float_seg_with_integral_values_is_accepted(case):
    write_nifti(case / "C_001_seg.nii.gz", volumes()["seg"].astype(np.float32))
    assert _validate(case.parent).ok
    write_nifti(case / "C_001_seg.nii.gz", volumes()["seg"].astype(np.float32) * 0.5)
    _one_error(case.parent, "non-integer")


def test_unreadable_file(case):
    f = case / "C_001_t1.nii.gz"
    os.chmod(f, 0)
    try:
        if os.access(f, os.R_OK):
            pytest.skip("running as root: chmod 000 does not make the file unreadable")
        _one_error(case.parent, "permission denied")
    finally:
        os.chmod(f, 0o644)


def test_check_cases_skip_and_stop(tmp_path):
    write_case(tmp_path, "A_001")
    bad = write_case(tmp_path, "B_001")
    (bad / "B_001_t1.nii.gz").unlink()
    good, skipped = check_cases(find_cases(tmp_path), MODALITIES, require_seg=True)
    assert [c.case_id for c in good] == ["A_001"]
    assert skipped[0][0] == "B_001" and "t1 image is missing" in skipped[0][1]
    with pytest.raises(DataError, match="t1 image is missing"):
        check_cases(find_cases(tmp_path), MODALITIES, require_seg=True, on_error="stop")


def test_save_nifti_like_roundtrip(case, tmp_path):
    data, ref = load_nifti(case / "C_001_t1.nii.gz")
    out = tmp_path / "out" / "map.nii.gz"
    save_nifti_like(data * 0.5, ref, out)
    back, img = load_nifti(out)
    np.testing.assert_allclose(back, data * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(img.affine, ref.affine)
    save_nifti_like(data > 150, ref, out)
    assert nib.load(out).get_data_dtype() == np.uint8
    assert [p.name for p in out.parent.iterdir()] == ["map.nii.gz"]  # no temp files left


@pytest.mark.parametrize("damage", ["nan", "singular"])
def test_affine_must_be_finite_and_invertible(case, damage):
    f = case / "C_001_t1.nii.gz"
    img = nib.load(f)
    header = img.header.copy()
    srow = np.eye(4)[:3]
    if damage == "nan":
        srow[0, 0] = np.nan
    else:
        srow[2] = srow[1]  # two voxel axes along the same world direction
    header["srow_x"], header["srow_y"], header["srow_z"] = srow
    header["sform_code"], header["qform_code"] = 1, 0
    raw = header.binaryblock + b"\0" * 4 + np.asarray(img.dataobj).astype(header.get_data_dtype()).tobytes("F")
    f.write_bytes(gzip.compress(raw))
    err = _one_error(case.parent, "NaN or infinite" if damage == "nan" else "not invertible", read_data=False)
    assert err.found.startswith("sform [[") and "repair the header's sform" in str(err)


def test_single_axial_slice_is_accepted_a_single_sagittal_slice_is_not(tmp_path):
    def write_slices(index):
        for key, v in volumes().items():
            write_nifti(tmp_path / "C_001" / f"C_001_{key}.nii.gz", v[index])

    write_slices(np.s_[:, :, 8:9])  # 24 x 24 x 1, axial (the third axis is S)
    assert _validate(tmp_path).ok
    write_slices(np.s_[12:13])  # 1 x 24 x 16
    err = _one_error(tmp_path, "single sagittal or coronal slice", read_data=False)
    assert "1 voxel along in-plane axis 0" in err.found


def test_zero_sized_dimension_and_non_grey_voxels(case):
    write_nifti(case / "C_001_t1.nii.gz", np.zeros((24, 24, 0), np.float32))
    _one_error(case.parent, "has no voxels", read_data=False)
    write_nifti(case / "C_001_t1.nii.gz", volumes()["t1"].astype(np.complex64))
    assert "complex voxels" in _one_error(case.parent, "not grey levels", read_data=False).found


def test_pure_noise_is_an_error_anatomy_is_not(case):
    v = volumes()["flair"]
    assert neighbour_correlation(v) > 0.9
    noise = np.random.default_rng(0).uniform(1, 100, v.shape).astype(np.float32)
    assert abs(neighbour_correlation(np.where(v != 0, noise, 0))) < 0.1
    assert neighbour_correlation(v[:3, :3, :1]) is None  # too few pairs to tell
    write_nifti(case / "C_001_flair.nii.gz", np.where(v != 0, noise, 0).astype(np.float32))
    assert _one_error(case.parent, "pure noise").found.startswith("r = ")


def test_inverted_and_not_skull_stripped_images(case):
    v = volumes()["t1"]
    img = nib.Nifti1Image(np.rint(v).astype(np.int16), np.eye(4))
    img.header.set_slope_inter(-2.0, 0.0)
    nib.save(img, str(case / "C_001_t1.nii.gz"))
    err = _one_error(case.parent, "only negative intensities")
    assert "scl_slope is -2" in err.found
    data, _ = load_nifti(case / "C_001_t1.nii.gz", keep_integers=True)  # a scaled integer file is scaled
    assert data.dtype == np.float32 and data.min() < 0
    write_nifti(case / "C_001_t1.nii.gz", np.where(v != 0, v, 5.0).astype(np.float32))
    assert "0.00% of the voxels 0" in _one_error(case.parent, "has no background").found
