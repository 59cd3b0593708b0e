"""The case view page: embedded volumes sit on the input's affine, outlines per plane, no network, size."""

from __future__ import annotations

import base64
import gzip
import json
import re

import nibabel as nib
import numpy as np
import pytest

from mmccd.evaluation.viewer import (
    NIIVUE_VERSION,
    case_view_name,
    in_plane_outline,
    plane_normals,
    quantise,
    write_case_view,
)

# voxel axis 0 runs inferior->superior, 1 right->left, 2 posterior->anterior (a sagittal-style acquisition),
# anisotropic voxels, an offset: nothing a wrong axis order or a dropped flip could survive
AFFINE = np.array([[0.0, -1.2, 0.0, 30.0],
                   [0.0, 0.0, 0.9, -60.0],
                   [2.0, 0.0, 0.0, -20.0],
                   [0.0, 0.0, 0.0, 1.0]])
SHAPE = (30, 40, 36)
CUBE = (slice(18, 24), slice(6, 12), slice(20, 26))  # planted, off-centre on every axis


def _case(rng: np.random.Generator):
    """A noisy head-like image, a map with a bright cube at CUBE, the cube as prediction, a larger box as GT."""
    idx = np.indices(SHAPE).astype(float)
    centre = (np.array(SHAPE) - 1)[:, None, None, None] / 2
    head = (((idx - centre) / (np.array(SHAPE)[:, None, None, None] * 0.45)) ** 2).sum(0) < 1
    image = np.where(head, 300 + 40 * rng.standard_normal(SHAPE), 0).astype(np.int16)
    amap = np.where(head, rng.random(SHAPE) * 0.2, 0).astype(np.float32)
    amap[CUBE] = 0.9
    amap[0, 0, 0] = np.nan  # NaN is allowed and stored as the minimum
    gt = np.zeros(SHAPE, bool)
    gt[17:25, 5:13, 19:27] = True
    return nib.Nifti1Image(image, AFFINE), amap, amap >= 0.5, gt


def _embedded(page: str) -> tuple[dict, dict[str, nib.Nifti1Image]]:
    """The page's JSON state and its volumes decoded with nibabel (independently of the writer)."""
    found = re.search(r'<script type="application/json" id="mmccd-data">(.*?)</script>', page, re.S)
    assert found, "no embedded state"
    state = json.loads(found.group(1))
    volumes = {k: nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(v))) for k, v in state["volumes"].items()}
    return state, volumes


@pytest.fixture
def page(tmp_path):
    image, amap, pred, gt = _case(np.random.default_rng(0))
    path = write_case_view(tmp_path / case_view_name("S1"), image, amap, 0.5, pred, gt, "S1 <b>x</b>",
                           {"T2": nib.Nifti1Image(np.asanyarray(image.dataobj)[::-1].copy(), AFFINE)},
                           input_label="FLAIR", fallback_slices=8)
    return path, image, amap, pred, gt


def test_embedded_volumes_carry_the_input_affine_and_the_cube_lands_on_its_voxels(page):
    path, image, amap, pred, gt = page
    assert path.name == "S1_view.html"
    state, vol = _embedded(path.read_text())
    assert np.allclose(state["affine"], AFFINE)
    for name, img in vol.items():
        assert img.shape == SHAPE, name
        assert np.allclose(img.affine, AFFINE, atol=1e-5), name  # sform
        assert np.allclose(img.get_qform(), AFFINE, atol=1e-4), name  # qform too, for other readers
    decoded = vol["map"].get_fdata()
    lo, hi = state["map_range"]
    assert np.nanmax(np.abs(decoded - np.nan_to_num(amap, nan=lo))) <= (hi - lo) / 65535 / 2 + 1e-6
    # the planted cube, found back in the embedded map, is at the same world place as in the input
    found = np.argwhere(decoded > 0.5)
    planted = np.argwhere(np.pad(np.ones([s.stop - s.start for s in CUBE], bool),
                                 [(s.start, n - s.stop) for s, n in zip(CUBE, SHAPE, strict=True)]))
    assert np.array_equal(found, planted)
    world = nib.affines.apply_affine(vol["map"].affine, found.mean(0))
    assert np.allclose(world, nib.affines.apply_affine(image.affine, planted.mean(0)))
    assert np.allclose(world, [30 - 1.2 * 8.5, -60 + 0.9 * 22.5, -20 + 2 * 20.5])
    # masks: bit 1 prediction, bit 2 ground truth, voxel for voxel
    bits = np.asanyarray(vol["masks"].dataobj)
    assert np.array_equal(bits & 1 > 0, pred) and np.array_equal(bits & 2 > 0, gt)
    # the crosshair starts in the cube
    assert all(s.start <= v < s.stop for v, s in zip(state["start_vox"], CUBE, strict=True))
    assert state["threshold"] == 0.5 and state["backgrounds"][1]["label"] == "T2"
    assert state["niivue_version"] == NIIVUE_VERSION


def test_outlines_are_the_cube_boundary_within_each_plane_in_world_coordinates(page):
    path, *_ = page
    state, vol = _embedded(path.read_text())
    assert plane_normals(AFFINE) == {"axial": 0, "sagittal": 1, "coronal": 2}
    cube_world = nib.affines.apply_affine(AFFINE, np.argwhere(np.asanyarray(vol["masks"].dataobj) & 1))
    lo, hi = cube_world.min(0), cube_world.max(0)
    in_plane = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}  # world axes (x, y, z) seen in each view
    for plane, axes in in_plane.items():
        outline = np.asanyarray(vol[f"outline_{plane}"].dataobj)
        world = nib.affines.apply_affine(AFFINE, np.argwhere(outline & 1))
        assert len(world) and np.all((world >= lo - 1e-6) & (world <= hi + 1e-6))  # inside the cube's box
        on_edge = np.zeros(len(world), bool)
        for a in axes:
            on_edge |= np.isclose(world[:, a], lo[a]) | np.isclose(world[:, a], hi[a])
        assert on_edge.all(), f"{plane}: an outline voxel is not on the cube's in-plane edge"
        normal = 3 - sum(axes)  # every slice across the cube has its ring, the caps are rings too, not filled
        for z in np.unique(world[:, normal]):
            ring = world[np.isclose(world[:, normal], z)]
            sides = [len(np.unique(np.round(ring[:, a], 4))) for a in axes]
            assert len(ring) == 2 * (sides[0] + sides[1]) - 4, plane
        assert np.any(outline & 2), f"{plane}: no ground-truth outline"


def test_in_plane_outline_and_quantise_by_hand():
    mask = np.zeros((4, 5, 2), bool)
    mask[0:3, 1:4, :] = True  # a 3 x 3 square in every slice along axis 2
    ring = in_plane_outline(mask, normal_axis=2)
    assert ring[..., 0].sum() == 8 and not ring[1, 2, 0] and ring[0, 1, 0]
    assert np.array_equal(ring[..., 0], ring[..., 1])  # the slices' neighbours do not count
    assert in_plane_outline(mask, normal_axis=0)[1].sum() == 6  # a 3 x 2 block seen across axis 0: all edge
    q, slope, inter = quantise(np.array([0.0, 0.5, 1.0, np.nan, 2.0]), np.uint8, 0.0, 1.0)
    assert q.tolist() == [0, 128, 255, 0, 255] and slope == pytest.approx(1 / 255) and inter == 0.0


def test_page_needs_no_network_and_escapes_the_title(page):
    text = page[0].read_text()
    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert not re.search(r"""(fetch|import|url)\(\s*["'`]?\s*(https?:)?//""", text, re.I)
    assert not re.search(r"<(link|iframe|object|embed|base)\b|<script[^>]*\bsrc\s*=|@import", text, re.I)
    # the only URLs at all are comments inside the pinned NiiVue bundle (shader notes), never used
    bundle = re.search(r"<script>(\(function\(sA,qA\).*?)</script>", text, re.S)
    assert bundle, "NiiVue bundle not inlined"
    rest = text.replace(bundle.group(1), "")
    assert not re.search(r"https?://", rest)
    assert "<title>S1 &lt;b&gt;x&lt;/b&gt;</title>" in text and "<b>x</b>" not in rest.split("mmccd-data")[0]


def test_wrong_inputs_name_what_was_expected(tmp_path):
    image, amap, pred, gt = _case(np.random.default_rng(1))
    with pytest.raises(ValueError, match=r"anomaly map has shape \(30, 40\).*\(30, 40, 36\)"):
        write_case_view(tmp_path / "a.html", image, amap[..., 0], 0.5)
    with pytest.raises(ValueError, match="gt_mask has shape"):
        write_case_view(tmp_path / "a.html", image, amap, 0.5, gt_mask=gt[:-1])
    with pytest.raises(ValueError, match=r"should be an \.html file"):
        write_case_view(tmp_path / "views", image, amap, 0.5)
    with pytest.raises(ValueError, match="another affine"):
        write_case_view(tmp_path / "a.html", image, amap, 0.5, extra_images={"T2": nib.Nifti1Image(amap, np.eye(4))})
    path = write_case_view(tmp_path / "b.html", image, amap, None)  # no threshold, no masks: still a page
    state, vol = _embedded(path.read_text())
    assert state["threshold"] is None and state["shown_threshold"] > 0 and "masks" not in vol


def test_full_size_case_stays_under_15_mb(tmp_path):
    """240 x 240 x 155, noisy like a real scan and a real map (worse for compression than BraTS FLAIR)."""
    rng = np.random.default_rng(2)
    shape = (240, 240, 155)
    idx = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, np.float32) - 1)[:, None, None, None] / 2
    radii = np.array([75, 95, 65], np.float32)[:, None, None, None]
    head = (((idx - centre) / radii) ** 2).sum(0) < 1
    del idx
    image = np.where(head, 400 + 60 * np.sin(np.arange(shape[0]) / 7)[:, None, None]
                     + 25 * rng.standard_normal(shape, dtype=np.float32), 0).astype(np.int16)
    amap = np.where(head, rng.gamma(1.5, 0.02, shape).astype(np.float32), 0).astype(np.float32)
    amap[100:130, 110:140, 60:90] += 0.5
    gt = np.zeros(shape, bool)
    gt[98:132, 108:142, 58:92] = True
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = 239
    path = write_case_view(tmp_path / "big_view.html", nib.Nifti1Image(image, affine), amap, 0.3, amap >= 0.3, gt,
                           "full size")
    size = path.stat().st_size
    assert size <= 15e6, f"{size / 1e6:.1f} MB"
    assert size >= 3e6  # NiiVue alone is 2.3 MB: the volumes must be in there
