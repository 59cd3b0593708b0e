"""The case view in a real headless Chromium: it loads, draws three views, reports no error, puts the planted
cube under the crosshair where the affine says, and falls back to PNG slices without WebGL2.

Skipped when no browser is installed (Debian: apt-get install chromium; or set MMCCD_BROWSER)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mmccd.evaluation.browser import check_page, find_browser, image_spread
from mmccd.evaluation.viewer import write_case_view

BROWSER = find_browser()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chrome/Chromium on PATH (apt-get install chromium, "
                                                        "or set MMCCD_BROWSER)")
NO_NETWORK = ("--host-resolver-rules=MAP * ~NOTFOUND",)  # any request to a host would fail and be logged

# voxel axes: 0 = inferior->superior, 1 = right->left, 2 = posterior->anterior; an offset; anisotropic
AFFINE = np.array([[0.0, -1.2, 0.0, 30.0], [0.0, 0.0, 0.9, -60.0], [2.0, 0.0, 0.0, -20.0], [0.0, 0.0, 0.0, 1.0]])
SHAPE = (30, 40, 36)
CUBE = (slice(18, 24), slice(6, 12), slice(20, 26))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    rng = np.random.default_rng(0)
    idx = np.indices(SHAPE).astype(float)
    centre = (np.array(SHAPE) - 1)[:, None, None, None] / 2
    head = (((idx - centre) / (np.array(SHAPE)[:, None, None, None] * 0.45)) ** 2).sum(0) < 1
    image = np.where(head, 300 + 40 * rng.standard_normal(SHAPE), 0).astype(np.int16)
    amap = np.where(head, rng.random(SHAPE) * 0.2, 0).astype(np.float32)
    amap[CUBE] = 0.9
    gt = np.zeros(SHAPE, bool)
    gt[17:25, 5:13, 19:27] = True
    path = tmp_path_factory.mktemp("view") / "S1_view.html"
    t2 = np.where(head, 900 - image, 0).astype(np.int16)
    return write_case_view(path, nib.Nifti1Image(image, AFFINE), amap, 0.5, amap >= 0.5, gt, "browser test",
                           {"T2": nib.Nifti1Image(t2, AFFINE)}, input_label="FLAIR", fallback_slices=6)


def test_viewer_loads_draws_and_reads_the_planted_cube(page, tmp_path):
    vox = (20, 8, 22)  # inside the cube
    check = check_page(page, tmp_path / "view.png", fragment="vox={},{},{}".format(*vox), browser=BROWSER,
                       flags=NO_NETWORK, budget_ms=15000, timeout_s=120)
    assert check.state == "loaded", (check.status_text, check.errors)
    assert check.errors == [], check.errors
    assert len(check.drawn) == 3 and min(check.drawn) > 1000, check.drawn  # three canvases, each drew the head
    assert check.readout["vox"] == "20,8,22"
    assert np.allclose([float(x) for x in check.readout["mm"].split(",")],
                       nib.affines.apply_affine(AFFINE, vox), atol=0.01)
    assert float(check.readout["score"]) == pytest.approx(0.9, abs=1e-4)
    assert float(check.readout["score-niivue"]) == pytest.approx(0.9, abs=1e-4)  # NiiVue's own voxel lookup agrees
    assert check.readout["pred"] == "1" and check.readout["gt"] == "1"
    colours, spread = image_spread(check.screenshot)
    assert colours > 30 and spread > 5, (colours, spread)  # not a blank page


def test_readout_outside_the_cube_on_the_second_background(page):
    check = check_page(page, fragment="vox=15,30,5&bg=1", browser=BROWSER, flags=NO_NETWORK, timeout_s=120)
    assert check.state == "loaded" and not check.errors, check.errors
    assert min(check.drawn) > 1000 and check.readout["background"] == "T2"
    assert float(check.readout["score"]) < 0.5 and check.readout["pred"] == "0" and check.readout["gt"] == "0"


def test_without_webgl2_the_page_says_so_and_shows_png_slices(page, tmp_path):
    check = check_page(page, tmp_path / "fallback.png", browser=BROWSER, flags=("--disable-webgl2", *NO_NETWORK),
                       budget_ms=5000, timeout_s=120)
    assert check.state == "webgl-missing" and "WebGL2 is not available" in check.status_text
    assert check.errors == [] and check.drawn == []
    assert image_spread(check.screenshot)[0] > 30  # the slice image is shown
