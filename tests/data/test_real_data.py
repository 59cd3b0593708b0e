"""On the real BraTS cases when present (../shared/data/brats or $MMCCD_REAL_DATA); skipped otherwise."""

import numpy as np
import pytest

from mmccd.config import MODALITIES, PrepareConfig
from mmccd.data.discovery import find_cases
from mmccd.data.prepare import prepare_case
from mmccd.data.validation import check_cases
from mmccd.paths import real_data_dir

DATA = real_data_dir()
pytestmark = [pytest.mark.real_data, pytest.mark.skipif(DATA is None, reason="real BraTS data not present")]


def test_real_headers_validate():
    cases = find_cases(DATA)
    good, skipped = check_cases(cases, MODALITIES, require_seg=True, read_data=False)
    assert not skipped and len(good) == len(cases) > 0
    assert all(c.naming == "brats2021" for c in cases)


def test_real_case_prepares():
    case = find_cases(DATA)[0]
    pc = prepare_case(case, PrepareConfig(size=64))
    m = pc.meta
    assert m["original_shape"] == [240, 240, 155] and m["axial_axis"] == 2
    assert m["max_tumour_slice"] is not None and len(m["train_slices"]) > 10
    assert pc.images.shape[1:] == (4, 64, 64) and np.abs(pc.images).max() <= 1 + 1e-6
