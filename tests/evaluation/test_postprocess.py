from __future__ import annotations

import numpy as np
import pytest

from mmccd.errors import ConfigError
from mmccd.evaluation.postprocess import PostProcess, erode_brain, median_filter, remove_small_components


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
