"""The per-case pipeline: layout, record, resume, atomic writes; with SimpleITK and real data, co-registration
accuracy on a raw-like case and maps written back onto the raw grid."""

import json

import nibabel as nib
import numpy as np
import pytest
from raw_helpers import (
    load_brats,
    needs_data,
    needs_dicom,
    needs_sitk,
    real_case,
    write_dicom_series,
    write_rawlike,
)
from scipy import ndimage

from mmccd.data.discovery import discover_case
from mmccd.data.raw.geometry import fov_corners, resample, transform_error
from mmccd.data.raw.pipeline import PreprocessConfig, preprocess_case
from mmccd.data.raw.rawlike import grid_for, make_rawlike
from mmccd.data.raw.reading import read_contrast
from mmccd.data.raw.record import RECORD, PreprocessedCase
from mmccd.errors import DataError, OutputExistsError

NONE = PreprocessConfig(brain="none", qc=False)


def _oblique_t1(folder):
    """A raw-like single-contrast case: an ellipsoid 'brain' on an oblique 0.9 x 0.9 x 3 mm RAS grid."""
    shape, affine = grid_for(fov_corners((60, 70, 60), np.eye(4)) - 30, "RAS", (0.9, 0.9, 3.0))
    ijk = np.indices(shape).reshape(3, -1).T
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    r = ((world / np.array([25.0, 30.0, 24.0])) ** 2).sum(axis=1).reshape(shape)
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(((r < 1) * (500 + 100 * np.cos(world[:, 0].reshape(shape) / 5))).astype(np.int16),
                             affine), str(folder / "T1w.nii.gz"))
    return folder


def test_single_contrast_case_layout_record_and_resume(tmp_path):
    raw = _oblique_t1(tmp_path / "raw" / "p01")
    out = tmp_path / "cases" / "p01"
    case = preprocess_case(raw, out, NONE, required=("t1",))
    assert sorted(p.name for p in out.iterdir()) == ["p01_brainmask.nii.gz", "p01_t1.nii.gz", RECORD]
    found = discover_case(out)
    assert found.naming == "brats2021" and set(found.images) == {"t1"}
    img = nib.load(str(out / "p01_t1.nii.gz"))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S") and np.allclose(img.header.get_zooms(), 1.0)
    rec = json.loads((out / RECORD).read_text())
    assert rec["fixed"] == "t1" and rec["contrasts"]["t1"]["fixed_to_raw"] == np.eye(4).tolist()
    assert rec["contrasts"]["t1"]["source"].endswith("T1w.nii.gz") and rec["contrasts"]["t1"]["raw_grid"]["axcodes"] == "RAS"
    assert 15 < rec["brain"]["volume_ml"] < 100 and not rec["brain"]["plausible"]  # a small phantom
    assert "numpy" in rec["versions"] and rec["settings"]["brain"] == "none"
    # back on the raw grid: the mask covers the raw brain
    raw_img = nib.load(str(raw / "T1w.nii.gz"))
    back = case.to_raw(nib.load(str(out / "p01_brainmask.nii.gz")).get_fdata() > 0, "t1")
    truth = np.asarray(raw_img.dataobj) > 0
    assert 2 * (back & truth).sum() / (back.sum() + truth.sum()) > 0.95
    # resume: reused as it is; other settings refused; --overwrite redoes
    stamp = (out / RECORD).stat().st_mtime_ns
    assert preprocess_case(raw, out, NONE, required=("t1",)).record == case.record
    assert (out / RECORD).stat().st_mtime_ns == stamp
    with pytest.raises(OutputExistsError, match="other settings.*spacing"):
        preprocess_case(raw, out, PreprocessConfig(brain="none", qc=False, spacing=2.0), required=("t1",))
    again = preprocess_case(raw, out, PreprocessConfig(brain="none", qc=False, spacing=2.0), required=("t1",),
                            overwrite=True)
    assert again.grid.spacing == pytest.approx([2.0, 2.0, 2.0])
    assert [p.name for p in out.parent.iterdir()] == ["p01"]  # no temporary or old folder left


def test_missing_contrast_writes_nothing(tmp_path):
    raw = _oblique_t1(tmp_path / "raw" / "p02")
    with pytest.raises(DataError, match=r"p02.*the flair image is missing"):
        preprocess_case(raw, tmp_path / "cases" / "p02", NONE, required=("t1", "flair"))
    assert not (tmp_path / "cases").exists() or not any((tmp_path / "cases").iterdir())


# ---------------------------------------------------------------- real data + SimpleITK


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """A raw-like case made from a real BraTS case (every contrast moved and resampled), preprocessed."""
    folder = real_case()
    vols, affine = load_brats(folder)
    rl = make_rawlike({c: vols[c] for c in ("t1", "t1ce", "t2", "flair")}, affine)
    root = tmp_path_factory.mktemp("rawlike")
    raw = write_rawlike(root / "raw" / "case01", rl)
    case = preprocess_case(raw, root / "cases" / "case01", PreprocessConfig(brain="none", threads=2))
    return case, rl, vols, affine




@pytest.mark.slow
@needs_data
@needs_sitk
def test_coregistration_recovers_the_known_transforms(processed):
    case, rl, vols, affine = processed
    for c in ("t1ce", "t2", "flair"):
        vox = np.argwhere((vols["t1"] > 0) & (vols[c] > 0))[::200]  # brain voxels both scans cover
        pts = (vox @ affine[:3, :3].T + affine[:3, 3]) @ rl.motions["t1"][:3, :3].T + rl.motions["t1"][:3, 3]
        mm, deg = transform_error(case.fixed_to_raw(c), rl.true_transform(c, "t1"), pts)
        assert mm <= 1.0 and deg <= 1.0, f"{c}: {mm:.2f} mm, {deg:.2f} deg"
        assert case.record["contrasts"][c]["similarity_nmi"] > 1.15


@pytest.mark.slow
@needs_data
@needs_sitk
def test_outputs_are_a_brats_case_with_qc(processed):
    case = processed[0]
    found = discover_case(case.root)
    assert found.naming == "brats2021" and set(found.images) == {"t1", "t1ce", "t2", "flair"} and not found.problems
    assert (case.root / case.record["qc"]).read_bytes()[:4] == b"\x89PNG"
    for c in ("t1ce", "t2", "flair"):
        m = np.asarray(case.fixed_to_raw(c))
        assert np.allclose(m[:3, :3].T @ m[:3, :3], np.eye(3), atol=1e-6) and np.allclose(m[3], [0, 0, 0, 1])


@pytest.mark.slow
@needs_data
@needs_sitk
def test_maps_written_back_land_on_the_raw_voxels(processed):
    """The tumour, put on the output grid by the TRUE transform, mapped back with the ESTIMATED one onto the
    FLAIR raw grid, must overlap the tumour resampled straight onto that grid (both via the truth)."""
    case, rl, vols, affine = processed
    grid = case.grid
    seg = (vols["seg"] > 0).astype(np.uint8)
    # output world = T1 raw world; BraTS world = inv(motion_t1) @ output world
    on_grid = resample(seg, affine, grid.shape, grid.affine, np.linalg.inv(rl.motions["t1"]), order=0)
    back = case.to_raw(on_grid.astype(bool), "flair")
    flair = rl.images["flair"]
    truth = resample(seg, affine, flair.shape, flair.affine, np.linalg.inv(rl.motions["flair"]), order=0) > 0
    assert back.shape == flair.shape and truth.sum() > 1000
    dice = 2 * (back & truth).sum() / (back.sum() + truth.sum())
    world = lambda m: (np.argwhere(m) @ flair.affine[:3, :3].T + flair.affine[:3, 3]).mean(axis=0)  # noqa: E731
    assert dice > 0.85 and np.linalg.norm(world(back) - world(truth)) < 1.0, (dice, world(back) - world(truth))
    # and the preprocessed FLAIR itself comes back onto its raw scan
    out_flair = nib.load(str(case.image_path("flair"))).get_fdata(dtype=np.float32)
    again = case.to_raw(out_flair, "flair")
    raw = np.asarray(flair.dataobj, dtype=np.float32)
    inside = (again > 0) & (raw > 0)
    assert np.corrcoef(again[inside], raw[inside])[0, 1] > 0.95


@pytest.mark.slow
@needs_data
@needs_sitk
def test_poor_registration_stops_naming_both_files_and_writes_nothing(tmp_path):
    folder = real_case()
    vols, affine = load_brats(folder, ("t1", "t2"))
    rl = make_rawlike(vols, affine)
    t2 = rl.images["t2"]
    # the T2 file holds something else (smooth random blobs) on the same grid: nothing to align with T1
    blobs = ndimage.gaussian_filter(np.random.default_rng(0).random(t2.shape, dtype=np.float32), 4) * 4000
    rl.images["t2"] = nib.Nifti1Image(blobs.astype(np.int16), t2.affine)
    raw = write_rawlike(tmp_path / "raw" / "bad", rl)
    out = tmp_path / "cases" / "bad"
    with pytest.raises(DataError, match=r"T2_tse.nii.gz registered to .*T1w.nii.gz: co-registration failed"):
        preprocess_case(raw, out, PreprocessConfig(brain="none", threads=2), required=("t1", "t2"))
    assert not out.exists() and not list((tmp_path / "cases").glob(".tmp-*"))


def test_preprocessed_case_load_refuses_other_folders(tmp_path):
    with pytest.raises(DataError, match="not a preprocessed case folder.*mmccd preprocess"):
        PreprocessedCase.load(tmp_path)


@needs_dicom
def test_dicom_case_is_recorded_and_maps_go_back_to_its_grid(tmp_path):
    x, y, z = np.meshgrid(np.arange(48) - 24, np.arange(40) - 20, np.arange(12) - 6, indexing="ij")
    vol = 800.0 * ((x / 20) ** 2 + (y / 16) ** 2 + (z / 5) ** 2 < 1)
    raw = tmp_path / "raw" / "d01"
    write_dicom_series(raw / "T1_MPRAGE", vol, spacing=(1.0, 1.0, 3.0))
    case = preprocess_case(raw, tmp_path / "cases" / "d01", NONE, required=("t1",))
    entry = case.record["contrasts"]["t1"]
    assert entry["kind"] == "dicom" and len(entry["files"]) == 12 and entry["series_uid"]
    assert entry["raw_grid"]["shape"] == [48, 40, 12]
    mask = nib.load(str(case.root / case.record["brain"]["mask"])).get_fdata() > 0
    back = case.to_raw(mask, "t1")
    truth = read_contrast(raw / "T1_MPRAGE", "t1").data > 0
    assert 2 * (back & truth).sum() / (back.sum() + truth.sum()) > 0.97


def test_dataset_runs_in_parallel_reports_failures_and_resumes(tmp_path):
    from mmccd.data.raw.batch import preprocess_dataset

    for name in ("p01", "p02"):
        _oblique_t1(tmp_path / "raw" / name)
    (tmp_path / "raw" / "p03").mkdir()
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(tmp_path / "raw" / "p03" / "FLAIR.nii.gz"))
    first = preprocess_dataset(tmp_path / "raw", tmp_path / "cases", NONE, required=("t1",), workers=2)
    assert first.done == ["p01", "p02"] and [c for c, _ in first.failed] == ["p03"]
    assert "t1 image is missing" in first.failed[0][1]
    again = preprocess_dataset(tmp_path / "raw", tmp_path / "cases", NONE, required=("t1",), workers=1)
    assert again.reused == ["p01", "p02"] and not again.done and [c for c, _ in again.failed] == ["p03"]
    assert sorted(p.name for p in (tmp_path / "cases").iterdir()) == ["p01", "p02"]
