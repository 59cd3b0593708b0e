"""Pre-rendered axial PNG slices for a case view, shown when the browser has no WebGL2.

The slices are resampled to RAS by axis permutation and flips only (nibabel's closest orientation), then
drawn as the viewer draws them: the input in grey, the anomaly map above the threshold in "inferno", the
prediction and the ground truth outlined. One pixel per voxel (as many mm as the voxel), left on the left.
Uses matplotlib's object API (`Figure`), never pyplot.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure

from mmccd.evaluation.figures import MAP_CMAP


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="black")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def axial_slices(image: np.ndarray, anomaly_map: np.ndarray, threshold: float, display_max: float,
                 pred: np.ndarray | None, gt: np.ndarray | None, affine: np.ndarray,
                 image_range: Sequence[float], n: int = 32,
                 colors: Mapping[str, Sequence[int]] | None = None, at_voxel: Sequence[int] | None = None
                 ) -> list[dict[str, object]]:
    """Up to `n` axial slices spread evenly over the slices where `image` is above its minimum.

    image, anomaly_map: (X, Y, Z) float on one grid; pred, gt: (X, Y, Z) bool or None
    threshold, display_max: the overlay's colour range (below threshold: not drawn)
    at_voxel: a native voxel (i, j, k) whose axial slice is always among them (the page starts there)
    Returns [{"k": axial index in RAS order, "z_mm": world z of the slice, "png": base64 PNG}], inferior first."""
    if n <= 0:
        return []
    colors = colors or {"prediction": (0, 229, 255), "ground truth": (0, 230, 118)}
    ornt = nib.orientations.io_orientation(affine)
    ras = [nib.orientations.apply_orientation(a, ornt) if a is not None else None
           for a in (image, anomaly_map, pred, gt)]
    img, amap, pred_r, gt_r = ras
    ras_affine = affine @ nib.orientations.inv_ornt_aff(ornt, image.shape)
    dx, dy = (float(z) for z in nib.affines.voxel_sizes(ras_affine)[:2])
    occupied = np.flatnonzero((img > image_range[0]).any(axis=(0, 1)))
    first, last = (int(occupied[0]), int(occupied[-1])) if occupied.size else (0, img.shape[2] - 1)
    ks = np.linspace(first, last, min(n, last - first + 1)).round().astype(int)
    if at_voxel is not None:  # its slice replaces the nearest one, so the count stays n
        p = int(np.flatnonzero(ornt[:, 0] == 2)[0])  # native axis along inferior-superior
        k0 = image.shape[p] - 1 - int(at_voxel[p]) if ornt[p, 1] < 0 else int(at_voxel[p])
        ks[int(np.argmin(np.abs(ks - k0)))] = k0
    ks = np.unique(ks)

    width, height = img.shape[0] * dx, img.shape[1] * dy
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    out: list[dict[str, object]] = []
    for k in ks:
        ax.clear()
        ax.set_axis_off()
        extent = (0.0, width, 0.0, height)
        ax.imshow(img[:, :, k].T, origin="lower", cmap="gray", vmin=image_range[0], vmax=image_range[1],
                  interpolation="nearest", extent=extent)
        shown = amap[:, :, k].T
        ax.imshow(np.ma.masked_where(~(shown >= threshold), shown), origin="lower", cmap=MAP_CMAP, alpha=0.6,
                  vmin=threshold, vmax=display_max, interpolation="nearest", extent=extent)
        for mask, name in ((pred_r, "prediction"), (gt_r, "ground truth")):
            if mask is not None and mask[:, :, k].any():
                ax.contour(mask[:, :, k].T.astype(float), levels=[0.5], linewidths=1.0, origin="lower",
                           colors=[tuple(c / 255 for c in colors[name])], extent=extent)
        ax.set_xlim(0, width)
        ax.set_ylim(0, height)
        z_mm = float((ras_affine @ np.array([0.0, 0.0, float(k), 1.0]))[2])
        out.append({"k": int(k), "z_mm": round(z_mm, 2), "png": _png(fig)})
    return out
