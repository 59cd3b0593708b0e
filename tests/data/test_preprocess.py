import numpy as np
import pytest

from mmccd.data.preprocess import (
    axial_axis,
    brain_mask,
    crop_resize,
    percentile_normalise,
    square_box,
    to_slices,
    uncrop,
)
from mmccd.errors import DataError


def _ramp():
    """Brain = the 101 voxels with values 0..100 (percentiles known exactly); background 0 elsewhere."""
    vol = np.zeros((11, 11, 3), np.float32)
    brain = np.zeros_like(vol, dtype=bool)
    brain.flat[:101] = True
    vol.flat[:101] = np.arange(101) + 10.0  # brain intensities 10..110
    return vol, brain


def test_brain_mask():
    a, b = np.zeros((2, 2, 2)), np.zeros((2, 2, 2))
    a[0, 0, 0], b[1, 1, 1] = 3, -1
    assert brain_mask([a, b]).sum() == 2


def test_percentile_mode():
    vol, brain = _ramp()
    y, (lo, hi) = percentile_normalise(vol, brain, 10, 90)
    assert (lo, hi) == (20.0, 100.0)
    assert y.dtype == np.float32
    assert y[brain].min() == -1 and y[brain].max() == 1
    assert y.flat[50] == pytest.approx(0.0)  # x = 60 is the midpoint of [20, 100]
    assert y.flat[30] == pytest.approx(-0.5)  # x = 40
    assert np.all(y[~brain] == -1)


def test_reference_mode():
    vol, brain = _ramp()
    y, (lo, hi) = percentile_normalise(vol, brain, 10, 90, mode="reference")
    half = (hi - lo) / 2  # 40: the authors centre on half the range, not on the midpoint 60
    assert y.flat[30] == pytest.approx((40 - half) / half)  # x = 40 -> 0
    assert y.flat[60] == pytest.approx((70 - half) / half)  # x = 70 -> 0.75
    assert y[brain].min() >= -1 and y[brain].max() == 1
    assert np.all(y[~brain] == -1)


def test_constant_brain_raises():
    vol = np.zeros((4, 4, 4), np.float32)
    vol[1:3, 1:3, 1:3] = 5
    with pytest.raises(DataError, match="no contrast"):
        percentile_normalise(vol, vol > 0, case="X")


def test_axial_axis_from_permuted_affine():
    assert axial_axis(np.eye(4)) == 2
    perm = np.zeros((4, 4))
    perm[0, 2], perm[1, 0], perm[2, 1], perm[3, 3] = 1, -1, 1, 1  # voxel axis 1 -> world z (S)
    assert axial_axis(perm) == 1
    perm2 = np.diag([1.0, 1.0, 1.0, 1.0])[[2, 1, 0, 3]]  # voxel axis 0 -> z
    perm2[2, 0] = -1.0  # pointing inferior
    assert axial_axis(perm2) == 0


def test_square_box_and_padding():
    brain = np.zeros((3, 20, 30), bool)
    brain[1, 5:10, 2:28] = True  # 5 x 26 bounding box
    r0, c0, side = square_box(brain, margin=2)
    assert side == 30 and c0 == 0 and r0 == 5 - (30 - 5) // 2
    crop = crop_resize(brain.astype(np.float32), (r0, c0, side), 30, "nearest", fill=0)
    assert crop.shape == (3, 30, 30) and crop.sum() == brain.sum()


def test_crop_resize_uncrop_roundtrip():
    h, w = 60, 50
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    smooth = np.stack([np.sin(r / 9.0) + np.cos(c / 7.0) + k for k in range(3)]).astype(np.float32)
    box = (8, 3, 40)
    small = crop_resize(smooth, box, 32, "bilinear")
    assert small.shape == (3, 32, 32)
    back = uncrop(small, box, (h, w))
    assert back.shape == (3, h, w)
    inside = back[:, 10:46, 5:41]  # inside the box, away from its border
    assert np.abs(inside - smooth[:, 10:46, 5:41]).max() < 0.05
    assert np.all(back[:, :8] == 0) and np.all(back[:, :, 43:] == 0)  # zero outside the box


def test_uncrop_box_beyond_the_grid():
    maps = np.ones((2, 16, 16), np.float32)
    back = uncrop(maps, (-4, -4, 32), (20, 20))
    assert back.shape == (2, 20, 20) and np.allclose(back, 1)


def test_to_slices_is_original_order():
    vol = np.arange(24).reshape(2, 3, 4)
    s = to_slices(vol, 1)
    assert s.shape == (3, 2, 4) and np.array_equal(s[1], vol[:, 1, :])


def test_integer_shortcuts_equal_the_float_computation():
    """prepare's speed paths for integer images (histogram percentiles, look-up-table normalisation, the
    bitwise-OR brain mask, percentiles gathered from the brain's box) give bit-identical results."""
    from mmccd.data.preprocess import (
        _integer_percentiles,
        bounding_box,
        brain_mask,
        normalise,
        percentile_range,
    )

    rng = np.random.default_rng(3)
    for trial in range(300):
        n = int(rng.integers(1, 2000))
        v = rng.integers(0, int(rng.integers(1, 4000)), size=n).astype(np.int16)
        ps = [float(rng.choice([0, 1, 2.5, 50, 99, 100])), float(rng.uniform(0, 100))]
        assert _integer_percentiles(v, ps) == [float(x) for x in np.percentile(v.astype(np.float32), ps)], trial
    vols = [rng.integers(0, 3000, size=(30, 40, 60)).astype(np.int16) for _ in range(3)]
    for v in vols:
        v[:5], v[:, :4] = 0, 0
    brain = brain_mask(vols)
    assert np.array_equal(brain, brain_mask([v.astype(np.float32) for v in vols]))
    box = bounding_box(brain)
    assert box[0] == slice(5, 30) and box[1] == slice(4, 40) and brain[box].sum() == brain.sum()
    lo, hi = percentile_range(vols[0][box], np.ascontiguousarray(brain[box]), 1, 99)
    assert (lo, hi) == tuple(float(x) for x in np.percentile(vols[0][brain].astype(np.float32), [1, 99]))
    for mode in ("percentile", "reference"):
        by_table = normalise(vols[0], brain, lo, hi, mode)  # > 2**16 voxels: the table path
        assert vols[0].size > 2**16 and by_table.dtype == np.float32
        assert np.array_equal(by_table, normalise(vols[0].astype(np.float32), brain, lo, hi, mode))
