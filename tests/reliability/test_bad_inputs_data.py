"""Issue 17.5, the bad-input corpus continued (the list of every kind is in test_bad_inputs.py): headers, voxels,
namings and folders that a user with real data meets, each through the CLI as in test_bad_inputs.py. One broken
input per test, built in a temporary copy of a SYNTHETIC phantom case; a kind that is accepted goes through
`mmccd prepare` and `mmccd score` end to end."""

from __future__ import annotations

import gzip
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import yaml
from reliability_helpers import (
    image,
    one_error_line,
    rewrite,
    set_header_affine,
    skipped_case,
    to_brats2023,
    voxels,
)

KEYS = ("t1", "t1ce", "t2", "flair", "seg")


def score(run_cli, runs, case, out):
    return run_cli("score", "--run", runs["cyclic-unet"], "--case", case, "--out", out)


def scored_map(result, out, case_id, like):
    """`mmccd score` wrote the map of `case_id` on the grid of the NIfTI file `like` (shape and affine)."""
    assert result.code == 0 and f"{case_id}: " in result.out, result
    amap = nib.load(out / f"{case_id}_anomaly.nii.gz")
    ref = nib.load(like)
    assert amap.shape == ref.shape[:3] and np.allclose(amap.affine, ref.affine)
    assert np.isfinite(np.asarray(amap.dataobj)).all()
    return amap


# ---------------------------------------------------------------- headers


@pytest.mark.parametrize("damage", ["non-invertible", "NaN"])
def test_affine_that_is_not_invertible_or_holds_nan(prepare, run_cli, runs, one_case, tmp_path, damage):
    data, case = one_case
    _, affine = voxels(case, "flair")
    if damage == "NaN":
        affine[1, 1] = np.nan
        fragments = ("affine (voxel-to-world matrix) holds NaN or infinite values", "found sform [[4.167, 0, 0, ")  # the phantom: 200 mm / 48 voxels
    else:
        affine[:3, 2] = 0  # the third axis has no extent: a plane, not a grid
        fragments = ("affine (voxel-to-world matrix) is not invertible", "[0, 0, 0, ")
    set_header_affine(image(case, "flair"), affine)
    skipped_case(prepare(data), "Phantom_00000_flair.nii.gz", *fragments, "expected a finite, invertible affine",
                 "repair the header's sform")
    result = score(run_cli, runs, case, tmp_path / "maps")  # the source image itself: the case is skipped
    assert result.code == 1 and "Phantom_00000_flair.nii.gz" in result.err and fragments[0] in result.err


def test_4d_file_with_a_singleton_fourth_axis_is_accepted_end_to_end(prepare, run_cli, runs, one_case, tmp_path):
    data, case = one_case
    for key in KEYS:
        values, _ = voxels(case, key)
        rewrite(case, key, values[..., None])  # (48, 48, 32, 1), as some converters write
    assert nib.load(image(case, "flair")).shape == (48, 48, 32, 1)
    result = prepare(data)
    assert result.code == 0 and "prepared 1 case(s)" in result.out, result
    scored_map(score(run_cli, runs, case, tmp_path / "maps"), tmp_path / "maps", "Phantom_00000",
               image(case, "flair"))


def test_image_with_a_zero_sized_dimension(prepare, one_case):
    data, case = one_case
    rewrite(case, "flair", np.zeros((48, 48, 0), np.float32))
    skipped_case(prepare(data), "Phantom_00000_flair.nii.gz", "the image has no voxels", "found shape (48, 48, 0)")


@pytest.mark.parametrize("kind", ["RGB", "complex"])
def test_voxels_that_are_not_grey_levels(prepare, one_case, kind):
    data, case = one_case
    values, affine = voxels(case, "flair")
    if kind == "RGB":  # e.g. a screenshot or an overlay exported from a viewer
        rgb = np.zeros(values.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        rgb["R"] = rgb["G"] = rgb["B"] = np.clip(values / values.max() * 255, 0, 255).astype(np.uint8)
        nib.save(nib.Nifti1Image(rgb, affine), str(image(case, "flair")))
        found = "found RGB(A) colour voxels"
    else:
        nib.save(nib.Nifti1Image(values.astype(np.complex64), affine), str(image(case, "flair")))
        found = "found complex voxels"
    skipped_case(prepare(data), "Phantom_00000_flair.nii.gz", "the voxels are not grey levels", found,
                 "export a grey-level image")


def test_gzip_file_that_is_not_nifti_inside(prepare, one_case):
    data, case = one_case
    image(case, "flair").write_bytes(gzip.compress(b"<html>403 Forbidden</html>\n" * 20))
    skipped_case(prepare(data), "Phantom_00000_flair.nii.gz", "a gzip file that does not hold a NIfTI image",
                 "found first bytes b'<htm' after decompression", "re-export")


@pytest.mark.parametrize("axis", ["axial", "sagittal"])
def test_volume_of_one_slice(prepare, run_cli, runs, one_case, tmp_path, axis):
    """One axial slice (48 x 48 x 1) is an image mmccd can score: accepted end to end. One sagittal slice
    (1 x 48 x 32) would make every axial slice a line: refused."""
    data, case = one_case
    for key in KEYS:
        values, _ = voxels(case, key)
        rewrite(case, key, values[:, :, 16:17] if axis == "axial" else values[24:25])
    if axis == "axial":
        result = prepare(data)
        assert result.code == 0 and "prepared 1 case(s)" in result.out, result
        amap = scored_map(score(run_cli, runs, case, tmp_path / "maps"), tmp_path / "maps", "Phantom_00000",
                          image(case, "flair"))
        assert amap.shape == (48, 48, 1) and np.asarray(amap.dataobj).max() > 0
    else:
        skipped_case(prepare(data), "Phantom_00000_t1.nii.gz", "a single sagittal or coronal slice",
                     "found shape (1, 48, 32), axes RAS: 1 voxel along in-plane axis 0", "3D volume or an axial slice")


# ---------------------------------------------------------------- voxels


def test_fractional_segmentation_labels(prepare, one_case):
    """Linear resampling of a label map makes 1.5 between 1 and 2; integral floats (2.0) stay accepted."""
    data, case = one_case
    seg, _ = voxels(case, "seg")
    rewrite(case, "seg", seg.astype(np.float32))
    result = prepare(data)
    assert result.code == 0 and "prepared 1 case(s)" in result.out, result
    fractional = seg.astype(np.float32)
    fractional[seg == 1] = 1.5
    rewrite(case, "seg", fractional)
    skipped_case(prepare(data, "--overwrite"), "Phantom_00000_seg.nii.gz", "non-integer values",
                 f"found {int((seg == 1).sum())} voxel(s) with values such as [1.5]", "nearest-neighbour")


def test_source_contrast_that_is_pure_noise(prepare, run_cli, runs, one_case, tmp_path):
    """No anatomy (neighbouring voxels uncorrelated): an error, never trained or scored silently."""
    data, case = one_case
    values, _ = voxels(case, "flair")
    noise = np.random.default_rng(0).uniform(1, 1000, values.shape).astype(np.float32)
    rewrite(case, "flair", np.where(values != 0, noise, 0).astype(np.float32))
    fragments = ("Phantom_00000_flair.nii.gz", "looks like pure noise (no anatomy)",
                 "expected neighbouring brain voxels correlated (r >= 0.3", "found r = ",
                 "wrong data type or byte order")
    skipped_case(prepare(data), *fragments)
    result = score(run_cli, runs, case, tmp_path / "maps")
    assert result.code == 1 and all(f in result.err for f in fragments), result
    assert not (tmp_path / "maps" / "Phantom_00000_anomaly.nii.gz").exists()


def test_16_bit_image_with_a_negative_scl_slope(prepare, one_case):
    """The header's scaling turns every stored intensity negative: the contrast would be inverted silently."""
    data, case = one_case
    values, affine = voxels(case, "flair")
    img = nib.Nifti1Image(np.rint(values).astype(np.int16), affine)
    img.header.set_slope_inter(-1.0, 0.0)
    nib.save(img, str(image(case, "flair")))
    skipped_case(prepare(data), "Phantom_00000_flair.nii.gz", "only negative intensities",
                 "the header's scl_slope is -1: it inverts the stored values", "positive intensity scaling")


def test_image_that_is_not_skull_stripped(prepare, one_case):
    """No zero background: the brain mask would be the whole field of view."""
    data, case = one_case
    values, _ = voxels(case, "flair")
    rewrite(case, "flair", np.where(values != 0, values, 30.0).astype(np.float32))  # a dim 'scalp' everywhere
    skipped_case(prepare(data), "Phantom_00000_flair.nii.gz", "has no background", "found 0.00% of the voxels 0",
                 "mmccd preprocess --case RAW_CASE")


# ---------------------------------------------------------------- namings


def test_brats_2021_and_2023_cases_in_one_data_folder(prepare, phantom, tmp_path):
    """Accepted: each case is read by its own naming (and its labels checked by that naming's convention)."""
    data = tmp_path / "data"
    shutil.copytree(phantom / "Phantom_00000", data / "Phantom_00000")
    to_brats2023(shutil.copytree(phantom / "Phantom_00001", data / "Phantom_00001"))
    result = prepare(data)
    assert result.code == 0 and "prepared 2 case(s), reused 0, skipped 0" in result.out, result
    cases = tmp_path / "out" / "cases"
    assert (cases / "Phantom_00001" / "meta.json").read_text().count('"naming": "brats2023"') == 1
    assert (cases / "Phantom_00000" / "meta.json").read_text().count('"naming": "brats2021"') == 1


def test_one_case_mixing_the_2021_and_2023_namings(prepare, one_case):
    """Refused: the label convention of its segmentation (enhancing 4 or 3) would be ambiguous."""
    data, case = one_case
    to_brats2023(case, keys=("t2",))
    line = skipped_case(prepare(data), "the file names mix the BraTS 2021 naming (Phantom_00000_flair.nii.gz, ",
                        "and the BraTS 2023 naming (Phantom_00000-t2w.nii.gz)", "rename them to one naming")
    assert "missing" not in line  # the t2 file is found; only the mix is the problem


def test_layout_pattern_that_matches_two_files(prepare, one_case, tmp_path):
    data, case = one_case
    shutil.copyfile(image(case, "flair"), case / "Phantom_00000_flair_old.nii.gz")
    layout = tmp_path / "layout.yaml"
    layout.write_text(yaml.safe_dump({"flair": "*flair*", "t2": "{case}_t2.nii.gz"}))
    skipped_case(prepare(data, "--layout", layout), "the layout pattern '*flair*' for flair matches 2 files",
                 "Phantom_00000_flair.nii.gz, Phantom_00000_flair_old.nii.gz", "match exactly one file per case")


def test_non_utf8_names(prepare, run_cli, runs, phantom, tmp_path):
    """Bytes that are not UTF-8 (a Latin-1 name from an old archive): no crash, the name shown with \\xNN escapes.
    A case folder so named is refused (its id goes into file names, JSON, CSV and HTML); a file so named is
    only a name to the operating system, and a message shows it escaped."""
    data = tmp_path / "data"
    good = shutil.copytree(phantom / "Phantom_00000", data / "Phantom_00000")
    dup = shutil.copytree(phantom / "Phantom_00001", data / "Phantom_00001")
    shutil.copyfile(image(dup, "flair"), dup / os.fsdecode(b"Copie de Phantom_00001_\xe9t\xe9_flair.nii.gz"))
    latin1 = data / os.fsdecode(b"Patient_M\xfcller")
    latin1.mkdir()
    for key in KEYS:
        shutil.copyfile(image(good, key), latin1 / f"{latin1.name}_{key}.nii.gz")
    (good / os.fsdecode(b"notes_\xff.nii.gz")).write_bytes(b"")  # matches no modality: ignored, as any other
    result = prepare(data)
    skipped_case(result, "duplicate files for flair", r"Copie de Phantom_00001_\xe9t\xe9_flair.nii.gz",
                 case="Phantom_00001", prepared=1, skipped=2)
    skipped_case(result, "the case folder name is not valid UTF-8", r"shown as 'Patient_M\xfcller'", "convmv",
                 case=r"Patient_M\xfcller", prepared=1, skipped=2)
    single = latin1 / f"{latin1.name}_flair.nii.gz"  # one file to score: its name would be the case id
    one_error_line(run_cli("score", "--run", runs["cyclic-unet"], "--case", single, "--out", tmp_path / "maps"),
                   "the file name is not valid UTF-8", r"found 'Patient_M\xfcller_flair.nii.gz'", "rename the file")


def test_case_id_with_spaces_is_accepted_end_to_end(prepare, run_cli, runs, phantom, tmp_path):
    data = tmp_path / "data"
    case = data / "Phantom 00000"
    case.mkdir(parents=True)
    for key in KEYS:
        shutil.copyfile(image(phantom / "Phantom_00000", key), case / f"Phantom 00000_{key}.nii.gz")
    result = prepare(data)
    assert result.code == 0 and "prepared 1 case(s)" in result.out, result
    assert (tmp_path / "out" / "cases" / "Phantom 00000" / "meta.json").exists()
    scored_map(score(run_cli, runs, case, tmp_path / "maps"), tmp_path / "maps", "Phantom 00000",
               case / "Phantom 00000_flair.nii.gz")


# ---------------------------------------------------------------- case folders


def test_case_folder_that_is_a_dangling_symbolic_link(prepare, one_case):
    data, _ = one_case
    (data / "Phantom_00009").symlink_to("../not-fetched/Phantom_00009")  # e.g. an uninstalled datalad subdataset
    skipped_case(prepare(data), "case folder is a broken symbolic link (to ../not-fetched/Phantom_00009)",
                 "datalad get", case="Phantom_00009", prepared=1)


def test_empty_case_folder_and_a_folder_without_nifti(prepare, one_case, tmp_path):
    """Beside good cases: skipped and listed, with the reason; with no good case: no cases found, and why."""
    data, _ = one_case
    (data / "Phantom_00008").mkdir()
    (data / "Phantom_00009").mkdir()
    (data / "Phantom_00009" / "IM0001.dcm").write_bytes(b"\0" * 132 + b"DICM")
    result = prepare(data)
    skipped_case(result, "no NIfTI file in the case folder (it is empty)", case="Phantom_00008", prepared=1, skipped=2)
    skipped_case(result, "(it holds 1 other entry: IM0001.dcm)", "convert with dcm2niix", case="Phantom_00009",
                 prepared=1, skipped=2)
    shutil.rmtree(data / "Phantom_00000")
    one_error_line(prepare(data), "no cases found", "2 subfolder(s) without: Phantom_00008, Phantom_00009")


def test_segmentation_without_images(prepare, one_case):
    data, case = one_case
    for key in ("t1", "t1ce", "t2", "flair"):
        image(case, key).unlink()
    skipped_case(prepare(data), "the flair image is missing", "found modalities seg", "the t2 image is missing")


def test_data_folder_that_is_one_case_folder(prepare, one_case):
    data, case = one_case
    one_error_line(prepare(case), "no cases found", "5 NIfTI file(s) directly in the folder",
                   f"this looks like one case folder: pass the folder that holds the case folders (e.g. {data})")
