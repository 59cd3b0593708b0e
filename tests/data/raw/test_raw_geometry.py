"""Grids, resampling and the way back to the raw grid (numpy / scipy only: runs in the lean install)."""

import json

import nibabel as nib
import numpy as np
import pytest

from mmccd.data.raw.geometry import (
    fov_corners,
    is_rigid,
    output_grid,
    ras_to_lps,
    resample,
    rigid_matrix,
    rotation_angle_deg,
    transform_error,
)
from mmccd.data.raw.rawlike import grid_for
from mmccd.data.raw.record import FORMAT, RECORD, PreprocessedCase, raw_reference


def test_output_grid_is_lps_1mm_and_covers_the_field_of_view():
    shape, affine = grid_for(fov_corners((10, 10, 10), np.eye(4)) * 20, "ASR", (0.9, 0.9, 3.0))
    grid = output_grid(shape, affine)
    assert nib.aff2axcodes(grid.affine) == ("L", "P", "S")
    assert np.allclose(grid.spacing, 1.0)
    corners = fov_corners(shape, affine)
    inv = np.linalg.inv(grid.affine)
    vox = corners @ inv[:3, :3].T + inv[:3, 3]
    assert vox.min() >= -0.5 - 1e-6 and np.all(vox.max(axis=0) <= np.asarray(grid.shape) - 0.5 + 1e-6)


def test_rigid_helpers():
    m = rigid_matrix((3.0, -4.0, 5.0), (1.0, 2.0, 3.0), center=np.array([10.0, 0.0, -5.0]))
    assert is_rigid(m) and not is_rigid(np.diag([1.0, 1.0, -1.0, 1.0]))
    assert rotation_angle_deg(rigid_matrix((0, 0, 7.0), (0, 0, 0))) == pytest.approx(7.0)
    pts = np.random.default_rng(0).normal(size=(50, 3)) * 50
    assert transform_error(m, m, pts) == pytest.approx((0.0, 0.0), abs=1e-6)
    mm, deg = transform_error(m @ rigid_matrix((0, 0, 0), (0.5, 0, 0)), m, pts)
    assert mm == pytest.approx(0.5) and deg == pytest.approx(0.0, abs=1e-6)
    assert np.allclose(ras_to_lps(ras_to_lps(m)), m)


def test_resample_identity_and_nearest_keeps_labels():
    rng = np.random.default_rng(1)
    vol = rng.random((12, 10, 8)).astype(np.float32)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    assert np.allclose(resample(vol, aff, vol.shape, aff), vol, atol=1e-6)
    labels = rng.integers(0, 5, (12, 10, 8)).astype(np.int16)
    shifted = aff.copy()
    shifted[:3, 3] = (2.0, 0.0, 0.0)  # one voxel along i
    out = resample(labels, aff, labels.shape, shifted, order=0)
    assert out.dtype == np.int16 and np.array_equal(out[:-1], labels[1:]) and np.all(out[-1] == 0)


def _record(tmp_path, grid_shape, grid_affine, raw_shape, raw_affine, w):
    rec = {"format": FORMAT, "case_id": tmp_path.name, "fixed": "t1",
           "grid": {"shape": list(grid_shape), "affine": grid_affine.tolist()},
           "contrasts": {"flair": {"source": "raw/FLAIR.nii.gz", "raw_grid": {"shape": list(raw_shape),
                                                                            "affine": raw_affine.tolist()},
                                   "fixed_to_raw": w.tolist(), "output": "x_flair.nii.gz"}}}
    (tmp_path / RECORD).write_text(json.dumps(rec))
    return PreprocessedCase.load(tmp_path)


def test_to_raw_lands_on_the_raw_voxels(tmp_path):
    """A blob put at a world point of the output grid comes back, on an oblique 0.9 x 0.9 x 3 mm raw grid,
    at the raw voxels of W(point): the known transform, not the registration, is tested here."""
    grid = output_grid((80, 80, 60), np.diag([1.0, 1.0, 1.0, 1.0]) @ _centred((80, 80, 60)))
    w = rigid_matrix((8.0, -5.0, 12.0), (6.0, -4.0, 9.0))  # output world -> raw world
    raw_shape, raw_affine = grid_for(fov_corners(grid.shape, grid.affine) @ w[:3, :3].T + w[:3, 3], "PRS",
                                     (0.9, 0.9, 3.0))
    case = _record(tmp_path, grid.shape, grid.affine, raw_shape, raw_affine, w)
    point = np.array([12.0, -7.0, 5.0])  # output world, mm
    ijk = np.indices(grid.shape).reshape(3, -1).T
    world = ijk @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    blob = (np.linalg.norm(world - point, axis=1) <= 6.0).reshape(grid.shape)
    back = case.to_raw(blob, "flair")
    assert back.dtype == bool and back.shape == raw_shape
    raw_world = np.argwhere(back) @ raw_affine[:3, :3].T + raw_affine[:3, 3]
    expected = w[:3, :3] @ point + w[:3, 3]
    assert np.linalg.norm(raw_world.mean(axis=0) - expected) < 0.5  # mm, centroid of a 6 mm ball
    assert np.linalg.norm(raw_world - expected, axis=1).max() <= 6.0 + 1.6  # no voxel far off (half a 3 mm slice)
    smooth = case.to_raw(blob.astype(np.float32), "flair")
    assert smooth.dtype == np.float32 and 0.9 * blob.sum() < smooth.sum() * 0.9 * 0.9 * 3.0 < 1.1 * blob.sum()


def _centred(shape):
    a = np.eye(4)
    a[:3, 3] = -(np.asarray(shape) - 1) / 2
    return a


def test_save_raw_writes_the_raw_grid(tmp_path):
    grid = output_grid((20, 20, 20), _centred((20, 20, 20)))
    raw_affine = np.diag([0.9, -0.9, 3.0, 1.0])
    raw_affine[:3, 3] = (-9.0, 9.0, -9.0)
    case = _record(tmp_path, grid.shape, grid.affine, (22, 22, 7), raw_affine, np.eye(4))
    out = case.save_raw(np.ones(grid.shape, np.float32), "flair", tmp_path / "map.nii.gz")
    img = nib.load(str(out))
    assert img.shape == (22, 22, 7) and np.allclose(img.affine, raw_affine)
    assert np.allclose(img.get_qform(), raw_affine) and img.get_data_dtype() == np.float32
    assert raw_reference({"shape": [2, 3, 4], "affine": np.eye(4).tolist()}).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="not the preprocessed grid"):
        case.to_raw(np.ones((3, 3, 3)), "flair")
    from mmccd.errors import DataError

    with pytest.raises(DataError, match="has no t2 image"):
        case.to_raw(np.ones(grid.shape), "t2")
