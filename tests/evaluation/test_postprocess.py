from __future__ import annotations

import numpy as np
import pytest

from mmccd.errors import ConfigError
from mmccd.evaluation.postprocess import (
    PostProcess,
    erode_brain,
    median_filter,
    median_filter_3d,
    nearest_odd,
    remove_small_components,
    remove_small_components_3d,
)


def test_erode_brain_per_slice():
    brain = np.ones((5, 5), bool)
    inner = np.zeros((5, 5), bool)
    inner[1:4, 1:4] = True  # the image border counts as outside: one px ring removed
    np.testing.assert_array_equal(erode_brain(brain, 1), inner)
    assert erode_brain(brain, 2).sum() == 1  # only the centre is 2 px from the border
    np.testing.assert_array_equal(erode_brain(brain, 0), brain)
    # a stack of 2 is eroded slice by slice: a 3D erosion would empty it
    stack = erode_brain(np.ones((2, 5, 5), bool), 1)
    np.testing.assert_array_equal(stack, np.stack([inner, inner]))


def test_median_filter_per_slice():
    spike = np.zeros((3, 3))
    spike[1, 1] = 9.0
    np.testing.assert_array_equal(median_filter(spike, 3), np.zeros((3, 3)))
    np.testing.assert_array_equal(median_filter(spike, 0), spike)
    stack = np.stack([np.ones((4, 4)), np.zeros((4, 4))])
    np.testing.assert_array_equal(median_filter(stack, 3), stack)  # no mixing across slices


def test_remove_small_components():
    b = np.zeros((5, 5), bool)
    b[0, 0] = True  # 1 px
    b[0, 3] = b[1, 4] = True  # 2 px, diagonal: one component with 8-connectivity
    b[3:5, 0:2] = True  # 4 px
    two = remove_small_components(b, 2)
    assert two.sum() == 6 and not two[0, 0]
    three = remove_small_components(b, 3)
    assert three.sum() == 4 and three[3:5, 0:2].all()
    np.testing.assert_array_equal(remove_small_components(b, 0), b)
    # components never join across slices
    stack = np.zeros((2, 3, 3), bool)
    stack[:, 1, 1] = True
    assert remove_small_components(stack, 2).sum() == 0


def test_postprocess_object():
    assert PostProcess().describe() == "none" and not PostProcess().active
    pp = PostProcess(erode=1, median=3, min_component=2)
    assert pp.describe() == "erode=1, median=3, min_component=2" and pp.active
    assert PostProcess(median=5, erode=3).describe() == "erode=3, median=5"
    amap = np.zeros((5, 5))
    amap[2, 2] = 1.0
    m, brain = pp.apply_map(amap, np.ones((5, 5), bool))
    assert m.sum() == 0 and brain.sum() == 9
    pred = np.zeros((4, 4), bool)
    pred[0, 0] = True
    assert pp.apply_mask(pred).sum() == 0
    # the default changes nothing
    out, same = PostProcess().apply_map(amap, np.ones((5, 5), bool))
    np.testing.assert_array_equal(out, amap)
    assert same.all()


@pytest.mark.parametrize("kwargs", [{"erode": -1}, {"median": 4}, {"min_component": -2}])
def test_postprocess_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        PostProcess(**kwargs)


@pytest.mark.parametrize("size, expected", [
    (32, (1, 0, 0)),  # f = 1/3: median 5/3 -> 1 (off), 8/9 px -> off
    (64, (2, 3, 4)),  # f = 2/3: 64 // 25 = 2, 10/3 -> 3, 32/9 = 3.6 -> 4
    (96, (3, 5, 8)),  # their own size: their values
    (128, (5, 7, 14)),  # f = 4/3: 128 // 25 = 5, 20/3 -> 7, 128/9 = 14.2 -> 14
])
def test_field_profile_2d_values(size, expected):
    pp = PostProcess.profile("field", image_size=size)
    assert (pp.erode, pp.median, pp.min_component) == expected and pp.dims == 2
    text = pp.describe()
    assert text.startswith(f"field@{size}px (2D per slice): erode {expected[0]}")
    assert "96 px" in text and "3D median 5" in text


def test_field_profile_3d_values():
    own = PostProcess.profile("field", image_size=96, dims=3, slice_mm=2.0)  # their size and voxel: theirs exactly
    assert (own.erode, own.median, own.median_depth, own.min_component, own.dims) == (3, 5, 5, 8, 3)
    ours = PostProcess.profile("field", image_size=64, dims=3, slice_mm=1.0)
    # depth: 5 voxels of 2 mm = 10 slices of 1 mm -> 11 (odd); components: 8 * (2/3)^2 * 2 = 7.1 -> 7 voxels
    assert (ours.erode, ours.median, ours.median_depth, ours.min_component) == (2, 3, 11, 7)
    assert ours.describe().startswith("field@64px (3D volume, 1 mm slices): erode 2, median 11 x 3 x 3, "
                                      "min_component 7 voxels (26-connected)")
    assert PostProcess.profile("field", image_size=32, dims=3).median_depth == 0  # no in-plane median: no depth
    assert PostProcess.profile("none", image_size=64) == PostProcess()


def test_nearest_odd():
    assert [nearest_odd(x) for x in (0.5, 1.67, 3.33, 4.9, 5.9, 6.67, 10.0)] == [1, 1, 3, 5, 5, 7, 11]


def test_field_profile_on_a_tiny_map():
    pp = PostProcess.profile("field", image_size=48)  # f = 1/2: erode 1, median 3, min_component 2
    assert (pp.erode, pp.median, pp.min_component) == (1, 3, 2)
    amap = np.zeros((10, 10))
    amap[2, 2] = 1.0  # an isolated spike: the median removes it
    amap[5:8, 5:8] = 1.0  # a 3x3 block: the 3x3 median keeps its plus (centre 9/9, edges 6/9, corners 4/9)
    m, brain = pp.apply_map(amap, np.ones((10, 10), bool))
    plus = np.zeros((10, 10), bool)
    plus[6, 5:8] = plus[5:8, 6] = True
    np.testing.assert_array_equal(m >= 0.5, plus)
    assert brain.sum() == 64 and not brain[0].any()  # one px of rim eroded
    pred = np.zeros((10, 10), bool)
    pred[1, 1] = True  # 1 px: removed
    pred[4, 4:6] = True  # 2 px: kept
    np.testing.assert_array_equal(pp.apply_mask(pred), pred & (np.arange(10)[:, None] == 4))


def test_3d_post_processing_differs_from_per_slice():
    vol = np.zeros((3, 5, 5))
    vol[1] = 1.0  # one bright slice: a 3x3x3 median sees 9 of 27 bright voxels -> 0; per slice it stays
    assert median_filter_3d(vol, 3, 3).max() == 0.0
    np.testing.assert_array_equal(median_filter(vol, 3), vol)
    column = np.zeros((3, 5, 5), bool)
    column[0:2, 2, 2] = True  # 2 voxels across slices: one 3D component, two 1-px 2D ones
    assert remove_small_components_3d(column, 2).sum() == 2
    assert remove_small_components(column, 2).sum() == 0
    corner = np.zeros((2, 2, 2), bool)
    corner[0, 0, 0] = corner[1, 1, 1] = True  # touching at a corner: 26-connected
    assert remove_small_components_3d(corner, 2).sum() == 2
    pp = PostProcess(median=3, min_component=2, dims=3)
    assert pp.describe() == "median=3, min_component=2, 3D"
    assert pp.apply_mask(column).sum() == 2 and pp.apply_map(vol, np.ones((3, 5, 5), bool))[0].max() == 0.0
    with pytest.raises(ValueError, match="volume"):  # per-slice input cannot silently get the 3D variant
        pp.apply_mask(np.zeros((5, 5), bool))


@pytest.mark.parametrize("kwargs", [{"dims": 4}, {"median_depth": 4, "dims": 3}, {"median_depth": 3}])
def test_postprocess_rejects_bad_3d_values(kwargs):
    with pytest.raises(ConfigError):
        PostProcess(**kwargs)


def test_unknown_profile():
    with pytest.raises(ConfigError, match="profile"):
        PostProcess.profile("baur", image_size=64)
    with pytest.raises(ConfigError, match="image_size"):
        PostProcess.profile("field", image_size=0)
