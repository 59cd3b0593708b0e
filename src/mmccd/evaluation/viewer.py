"""A browsable case view: one self-contained HTML page per case, drawn by NiiVue in the browser.

    write_case_view(out / case_view_name(case_id), image, anomaly_map, threshold, pred_mask, gt_mask, title)

The page shows axial, coronal and sagittal views of the input at its own resolution, linked by one
crosshair, with the anomaly map as a colour overlay (opacity and threshold set by the user, the validation
threshold marked on the slider), the predicted mask and the ground truth as outlines, and the values under
the cursor. Everything is inside the one file, so it opens from disk (file://) with no server and no network:

- NiiVue (BSD-2, ``assets/niivue/``, version and sha256 in its README), inlined;
- each volume as base64 NIfTI-1 (gzip) with the input's affine as sform and qform, so NiiVue lays the
  overlays on the scan exactly where nibabel does:
    input, extra images   uint8, linear over [min, 99.9th percentile of the voxels above min] (display only);
    anomaly map           uint16, linear over [min, max] of its finite values through scl_slope/scl_inter
                          (error <= (max - min) / 131070); NaN and inf stored as min;
    masks                 uint8 bits: 1 prediction, 2 ground truth (for the read-out under the cursor);
    outlines              uint8, one volume per plane (axial, coronal, sagittal), same bits: the boundary of
                          each mask within that plane, so every view shows a 2D outline, not a cut 3D shell;
- the page state as JSON (``<script id="mmccd-data">``: affine, shape, threshold, ranges, volumes);
- pre-rendered axial PNG slices with the overlay, shown with a slider when the browser has no WebGL2.

Size for a 240 x 240 x 155 BraTS case: 7-9 MB (NiiVue 2.3 MB, the map 2-4 MB, the input ~2 MB, outlines and
PNGs <1 MB), ~11 MB for a noisy map; each extra image adds ~2 MB. numpy + nibabel (+ matplotlib for the PNGs).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import json
import math
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.spatialimages import SpatialImage

from mmccd.atomic import atomic_write_text
from mmccd.evaluation.view_slices import axial_slices

NIIVUE_VERSION = "0.69.0"
NIIVUE_SHA256 = "47b896b77ec4a5be3ef1949c33ad393b6f45629921f326c279000bcf51bdb4af"
VIEW_SUFFIX = "_view.html"
PLANES = ("axial", "coronal", "sagittal")
PRED_BIT, GT_BIT = 1, 2
# outline colours follow the montage (cyan mask over the map) and the figures (green ground truth)
COLORS = {"prediction": (0, 229, 255), "ground truth": (0, 230, 118), "both": (255, 255, 255)}
_ASSETS = resources.files("mmccd.evaluation") / "assets"


def case_view_name(case_id: str) -> str:
    """File name of a case's view: ``<case>_view.html``."""
    return f"{case_id}{VIEW_SUFFIX}"


def niivue_source() -> str:
    """The bundled NiiVue browser build, checked against its pinned sha256 (a changed file is an error)."""
    text = (_ASSETS / "niivue" / "niivue.umd.js").read_bytes()
    digest = hashlib.sha256(text).hexdigest()
    if digest != NIIVUE_SHA256:
        raise RuntimeError(f"{_ASSETS / 'niivue' / 'niivue.umd.js'}: sha256 {digest}, expected {NIIVUE_SHA256} "
                           f"(NiiVue {NIIVUE_VERSION}); reinstall mmccd or see assets/niivue/README.md")
    source = text.decode("utf-8")
    if "</script" in source.lower():
        raise RuntimeError("the NiiVue bundle contains '</script' and cannot be inlined into a page")
    return source


# ---------------------------------------------------------------- volumes


def plane_normals(affine: np.ndarray) -> dict[str, int]:
    """The voxel axis normal to each viewing plane (the closest one for oblique affines).

    axial ⟂ inferior-superior, coronal ⟂ posterior-anterior, sagittal ⟂ left-right."""
    world_axis = nib.orientations.io_orientation(affine)[:, 0].astype(int)  # per voxel axis: its world axis
    return {plane: int(np.flatnonzero(world_axis == w)[0]) for plane, w in (("sagittal", 0), ("coronal", 1),
                                                                              ("axial", 2))}


def _shift(mask: np.ndarray, axis: int, step: int) -> np.ndarray:
    """mask moved by `step` voxels along `axis`; what enters from the edge is False (outside)."""
    out = np.zeros_like(mask)
    src = [slice(None)] * mask.ndim
    dst = [slice(None)] * mask.ndim
    src[axis], dst[axis] = (slice(None, -step), slice(step, None)) if step > 0 else (slice(-step, None),
                                                                                   slice(None, step))
    out[tuple(dst)] = mask[tuple(src)]
    return out


def in_plane_outline(mask: np.ndarray, normal_axis: int) -> np.ndarray:
    """Boundary of `mask` (X, Y, Z) bool within each slice perpendicular to `normal_axis`.

    A voxel is on the outline when it is in the mask and one of its 4 in-plane neighbours is not
    (the volume's edge counts as outside)."""
    inner = mask.copy()
    for axis in range(3):
        if axis != normal_axis:
            inner &= _shift(mask, axis, 1) & _shift(mask, axis, -1)
    return mask & ~inner


def quantise(values: np.ndarray, dtype: type[np.unsignedinteger], lo: float, hi: float
             ) -> tuple[np.ndarray, float, float]:
    """values ≈ q * slope + inter with q of `dtype` over [lo, hi] (clipped; NaN/inf -> lo). Returns (q, slope, inter)."""
    levels = int(np.iinfo(dtype).max)
    slope = (hi - lo) / levels if hi > lo else 1.0
    v = np.where(np.isfinite(values), values, lo)
    q = np.clip(np.rint((v - lo) / slope), 0, levels).astype(dtype)
    return q, float(slope), float(lo)


def nifti_gz(data: np.ndarray, affine: np.ndarray, slope: float = 1.0, inter: float = 0.0,
             cal: tuple[float, float] | None = None) -> bytes:
    """A gzip NIfTI-1 file of `data` (X, Y, Z) with `affine` as sform and qform, scl_slope/scl_inter as given.

    Written by hand (header + raw bytes) because nibabel resets the scaling of integer arrays on save."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(data.dtype)
    hdr.set_data_shape(data.shape)
    hdr.set_zooms(tuple(float(z) for z in nib.affines.voxel_sizes(affine)))
    hdr.set_sform(affine, code=1)
    hdr.set_qform(affine, code=1)
    hdr.set_xyzt_units("mm")
    hdr.set_slope_inter(slope, inter)
    if cal is not None:
        hdr["cal_min"], hdr["cal_max"] = cal
    hdr["vox_offset"] = 352
    raw = np.asarray(data, dtype=data.dtype.newbyteorder(hdr.endianness)).tobytes(order="F")  # NIfTI: x fastest
    return gzip.compress(hdr.binaryblock + b"\0" * 4 + raw, compresslevel=6, mtime=0)


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


def _image_data(img: SpatialImage, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """(X, Y, Z) float32 data of `img`; a trailing length-1 4th axis is dropped."""
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"write_case_view: {name} must be a 3D volume; found shape {data.shape}")
    if shape is not None and data.shape != shape:
        raise ValueError(f"write_case_view: {name} has shape {data.shape}, expected the input's grid {shape}")
    return data.astype(np.float32)


def _grey(data: np.ndarray, affine: np.ndarray) -> tuple[str, list[float]]:
    """A grey image as base64 NIfTI-gz (uint8) and its display range in its own units."""
    finite = data[np.isfinite(data)]
    lo = float(finite.min()) if finite.size else 0.0
    above = finite[finite > lo]
    hi = float(np.percentile(above, 99.9)) if above.size else lo + 1.0  # a few hot voxels must not grey the rest
    q, slope, inter = quantise(data, np.uint8, lo, hi)
    return _b64(nifti_gz(q, affine, slope, inter, cal=(lo, hi))), [lo, hi]


def _mask(mask: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"write_case_view: {name} has shape {mask.shape}, expected the input's grid {shape}")
    return mask.astype(bool)


def _start_voxel(amap: np.ndarray, pred: np.ndarray | None, block: int = 16) -> list[int]:
    """Where the crosshair starts: the top score inside the prediction, within its most anomalous block.

    Blocks of `block`³ voxels are ranked by the sum of their scores over prediction voxels (all voxels when
    the prediction is empty or absent), so a few hot voxels at the scan's edge do not win over a lesion."""
    scores = np.where(np.isfinite(amap), amap, np.nan).astype(np.float64)
    inside = pred if pred is not None and pred.any() else np.isfinite(scores)
    if not inside.any():
        return [s // 2 for s in amap.shape]
    pad = [(0, -s % block) for s in amap.shape]
    vals = np.pad(np.where(inside, np.nan_to_num(scores - np.nanmin(scores), nan=0.0), 0.0), pad)  # >= 0
    split = [x for s in vals.shape for x in (s // block, block)]
    sums = vals.reshape(split).sum(axis=(1, 3, 5))
    best = np.unravel_index(int(np.argmax(sums)), sums.shape)
    box = tuple(slice(b * block, (b + 1) * block) for b in best)
    local = np.where(inside[box], np.nan_to_num(scores[box], nan=-np.inf), -np.inf)
    offset = np.unravel_index(int(np.argmax(local)), local.shape)
    return [int(b * block + o) for b, o in zip(best, offset, strict=True)]


# ---------------------------------------------------------------- page


def case_view_data(image: SpatialImage, anomaly_map: np.ndarray, threshold: float | None,
                   pred_mask: np.ndarray | None = None, gt_mask: np.ndarray | None = None, title: str = "",
                   extra_images: Mapping[str, SpatialImage] | None = None, *, input_label: str = "input",
                   fallback_slices: int = 32) -> dict[str, Any]:
    """The page state that `write_case_view` embeds as JSON (same arguments); volumes as base64 NIfTI-gz."""
    affine = np.asarray(image.affine, dtype=float)
    data = _image_data(image, "the input image")
    shape = data.shape
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.shape != shape:
        raise ValueError(f"write_case_view: the anomaly map has shape {amap.shape}, expected the input's grid "
                         f"{shape} (map it back to the input's voxels first, e.g. with scoring.volume)")
    pred, gt = _mask(pred_mask, shape, "pred_mask"), _mask(gt_mask, shape, "gt_mask")
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"write_case_view: threshold must be a finite number or None; found {threshold}")

    finite = amap[np.isfinite(amap)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    q, slope, inter = quantise(amap, np.uint16, lo, hi)
    in_scan = finite[finite > lo]
    top = float(np.percentile(in_scan, 99.9)) if in_scan.size else hi
    shown = threshold if threshold is not None else float(np.percentile(in_scan, 99.0)) if in_scan.size else lo
    display_max = max(top, shown + (hi - lo) * 1e-3)

    grey, grey_range = _grey(data, affine)
    volumes: dict[str, str] = {"input": grey, "map": _b64(nifti_gz(q, affine, slope, inter, cal=(shown, display_max)))}
    backgrounds = [{"key": "input", "label": input_label, "range": grey_range}]
    for i, (label, extra) in enumerate((extra_images or {}).items()):
        if not np.allclose(extra.affine, affine, atol=1e-3):
            raise ValueError(f"write_case_view: extra image {label!r} has another affine than the input; resample it "
                             f"to the input's grid first\n{np.round(extra.affine, 3)}\nvs\n{np.round(affine, 3)}")
        volumes[f"extra{i}"], rng = _grey(_image_data(extra, f"extra image {label!r}", shape), affine)
        backgrounds.append({"key": f"extra{i}", "label": str(label), "range": rng})
    bits = np.zeros(shape, np.uint8)
    if pred is not None or gt is not None:
        for mask, bit in ((pred, PRED_BIT), (gt, GT_BIT)):
            if mask is not None:
                bits |= mask.astype(np.uint8) * np.uint8(bit)
        volumes["masks"] = _b64(nifti_gz(bits, affine))
        for plane, normal in plane_normals(affine).items():
            outline = np.zeros(shape, np.uint8)
            for mask, bit in ((pred, PRED_BIT), (gt, GT_BIT)):
                if mask is not None:
                    outline |= in_plane_outline(mask, normal).astype(np.uint8) * np.uint8(bit)
            volumes[f"outline_{plane}"] = _b64(nifti_gz(outline, affine))

    ornt = nib.orientations.io_orientation(affine)
    ras_axes = [[int(np.flatnonzero(ornt[:, 0] == r)[0]), bool(ornt[ornt[:, 0] == r, 1][0] < 0)] for r in range(3)]
    start = _start_voxel(amap, pred)
    return {
        "title": title, "niivue_version": NIIVUE_VERSION, "shape": list(shape),
        "affine": affine.tolist(), "ras_axes": ras_axes,  # RAS axis r = native axis p (flipped when True)
        "axcodes": "".join(nib.orientations.aff2axcodes(affine)),
        "start_vox": start, "threshold": threshold, "shown_threshold": shown,
        "map_range": [lo, hi], "display_max": display_max, "opacity": 0.6, "map_step": slope,
        "has_pred": pred is not None, "has_gt": gt is not None, "pred_voxels": int(pred.sum()) if pred is not None else None,
        "gt_voxels": int(gt.sum()) if gt is not None else None,
        "colors": {k: list(v) for k, v in COLORS.items()}, "backgrounds": backgrounds, "volumes": volumes,
        "fallback": axial_slices(data, amap, shown, display_max, pred, gt, affine, grey_range, n=fallback_slices,
                                 colors=COLORS, at_voxel=start),
    }


def _json_for_script(value: Any) -> str:
    """JSON safe inside <script>: '<', '>' and '&' escaped, so no text can close the element."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_case_view(state: Mapping[str, Any]) -> str:
    """The HTML page for a `case_view_data` state."""
    title = html.escape(str(state["title"]) or "mmccd case view")
    page = (_ASSETS / "case_view.html").read_text(encoding="utf-8")
    parts = {"TITLE": title, "CSS": (_ASSETS / "case_view.css").read_text(encoding="utf-8"),
             "DATA": _json_for_script(state), "NIIVUE": niivue_source(),
             "APP": (_ASSETS / "case_view.js").read_text(encoding="utf-8"), "NIIVUE_VERSION": NIIVUE_VERSION}
    return re.sub(r"@@([A-Z_]+)@@", lambda m: parts[m.group(1)], page)  # one pass: inserted text is never re-read


def write_case_view(path: str | Path, image: SpatialImage, anomaly_map: np.ndarray, threshold: float | None,
                    pred_mask: np.ndarray | None = None, gt_mask: np.ndarray | None = None, title: str = "",
                    extra_images: Mapping[str, SpatialImage] | None = None, *, input_label: str = "input",
                    fallback_slices: int = 32) -> Path:
    """Write a self-contained case view (one HTML file, no network) to `path`; returns `path`.

    image:         the input source contrast (a 3D NIfTI), on its own grid; its affine places every layer
    anomaly_map:   (X, Y, Z) float on the input's grid, higher = more anomalous (NaN allowed)
    threshold:     the validation threshold (marked on the slider; the overlay starts there), or None
    pred_mask:     (X, Y, Z) bool, the predicted mask (e.g. anomaly_map >= threshold, post-processed), or None
    gt_mask:       (X, Y, Z) bool, the ground truth, or None
    title:         page title, e.g. "BraTS_003 — mmccd, FLAIR → T2"
    extra_images:  {label: 3D NIfTI on the input's grid} offered as other backgrounds (e.g. "T2 (target)")
    input_label:   the input's name in the page, e.g. "FLAIR (input)"
    fallback_slices: number of pre-rendered axial PNGs for browsers without WebGL2"""
    path = Path(path)
    if path.suffix.lower() != ".html":
        raise ValueError(f"write_case_view: {path} should be an .html file, e.g. {path / case_view_name('CASE')}")
    state = case_view_data(image, anomaly_map, threshold, pred_mask, gt_mask, title, extra_images,
                           input_label=input_label, fallback_slices=fallback_slices)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, render_case_view(state))
