"""The QC montage of a preprocessed case: brain-mask outline on each contrast, registration checkerboards.

One row per contrast (the fixed one first): axial, coronal and sagittal slices through the brain's
centre with the brain mask outlined, then axial and coronal checkerboards alternating 16 mm tiles of
the contrast and the fixed image (edges that jump at tile borders show a misregistration).
Slices are shown in radiological convention (patient's right on the left, anterior / superior up) from
volumes on the output grid (voxel axes L, P, S). matplotlib's object API (Figure, Agg), never pyplot.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mmccd.atomic import atomic_write

MASK_COLOR = "#00e676"
TILE_MM = 16


def _views(volume: np.ndarray, centre: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Axial, coronal, sagittal 2D slices (rows, columns) of an LPS-ordered volume, radiological display."""
    i, j, k = centre
    return {"axial": volume[:, :, k].T, "coronal": volume[:, j, ::-1].T, "sagittal": volume[i, :, ::-1].T}


def _scaled(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Intensities mapped to [0, 1] by the 1st and 99th percentiles inside the brain."""
    inside = volume[mask] if mask.any() else volume.ravel()
    lo, hi = np.percentile(inside, [1, 99]) if inside.size else (0.0, 1.0)
    return np.clip((volume - lo) / max(float(hi - lo), 1e-6), 0, 1)


def checkerboard(a: np.ndarray, b: np.ndarray, tile: int = TILE_MM) -> np.ndarray:
    """(H, W): tiles of `tile` pixels taken alternately from a and b (both (H, W))."""
    rows, cols = np.indices(a.shape)
    return np.where(((rows // tile) + (cols // tile)) % 2 == 0, a, b)


def _show(ax: Axes, image: np.ndarray, title: str | None = None, ylabel: str | None = None) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9)


def qc_montage(volumes: Mapping[str, np.ndarray], mask: np.ndarray, fixed: str, path: str | Path,
               title: str = "", dpi: int = 90) -> Path:
    """Write the QC montage PNG of `volumes` (contrast -> (X, Y, Z), output grid, not yet masked) and the
    brain `mask` (X, Y, Z) bool; `fixed` names the registration target. Written atomically."""
    order = [fixed] + [c for c in volumes if c != fixed]
    idx = np.argwhere(mask) if mask.any() else np.argwhere(np.ones_like(mask))
    centre = tuple(int(v) for v in np.round(idx.mean(axis=0)))
    scaled = {c: _scaled(volumes[c], mask) for c in order}
    fixed_views = _views(scaled[fixed], centre)
    mask_views = _views(mask.astype(float), centre)
    columns = ["axial", "coronal", "sagittal", "checker axial", "checker coronal"]
    fig = Figure(figsize=(2.2 * len(columns), 2.3 * len(order) + 0.4), layout="constrained")
    axes = fig.subplots(len(order), len(columns), squeeze=False)
    for r, c in enumerate(order):
        views = _views(scaled[c], centre)
        for col, name in enumerate(("axial", "coronal", "sagittal")):
            ax = axes[r, col]
            _show(ax, views[name], name if r == 0 else None, (c + (" (fixed)" if c == fixed else "")) if col == 0
                  else None)
            if mask_views[name].any():
                ax.contour(mask_views[name], levels=[0.5], colors=[MASK_COLOR], linewidths=0.8)
        for col, name in ((3, "axial"), (4, "coronal")):
            ax = axes[r, col]
            label = f"checker {name}" if r == 0 else None
            if c == fixed:
                ax.axis("off")
                if r == 0:
                    ax.set_title(label, fontsize=9)
                continue
            _show(ax, checkerboard(views[name], fixed_views[name]), label)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
    return Path(path)
