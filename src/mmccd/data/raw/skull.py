"""Guard rail: does an image look skull-stripped? (core dependencies only: cheap enough for validation.)

Two signs of a head that was not skull-stripped, either one enough:

1. the non-zero volume is far from a brain's: above 3.0 l (a head with skull, scalp and neck, or a
   background of noise: every voxel non-zero) or below 0.45 l (not a whole brain); a skull-stripped
   adult brain is 0.9-2.0 l (the 26 + 2 BraTS cases here: NONZERO_RANGE_SEEN);
2. a bright ring outside the brain: voxels above an Otsu threshold of the non-zero intensities that lie
   outside a brain estimated from the image (the largest bright component after an opening that cuts
   thin bridges, holes filled, dilated by 4 mm) make up more than RING_FRACTION of the bright voxels
   and more than RING_ML millilitres (scalp fat in T1, scalp and marrow in T2 / FLAIR).

The morphology runs on a ~2 mm copy (every n-th voxel), so a 240 x 240 x 155 volume takes 0.1-0.3 s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from mmccd.data.preprocess import bounding_box

NONZERO_LITRES = (0.45, 3.0)
NONZERO_RANGE_SEEN = (1.08, 1.73)  # litres, min / max over the 112 BraTS volumes here (docs/preprocess.md)
RING_FRACTION = 0.10
RING_ML = 60.0
WORK_MM = 2.0
TISSUE_FRACTION = 0.1  # of the 99th percentile
MARGIN = 5  # voxels of zeros kept around the non-zero box (the dilations below reach 2 + 2)


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of `values` (N,) over a histogram of `bins` between the 0.5th and 99.5th percentiles."""
    lo, hi = np.percentile(values, [0.5, 99.5])
    hist, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def ring_measure(image: np.ndarray, affine: np.ndarray) -> tuple[float, float]:
    """(ring volume in ml, ring fraction of the bright voxels) of `image` (X, Y, Z) on the grid `affine`."""
    zooms = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    step = np.maximum(1, np.round(WORK_MM / zooms)).astype(int)
    x = np.asarray(image[:: step[0], :: step[1], :: step[2]], dtype=np.float32)
    voxel_ml = float(np.prod(zooms * step)) / 1000.0
    # the morphology below never reaches more than MARGIN voxels past the non-zero box: the same result on the box
    x = np.pad(x[bounding_box(x != 0)], MARGIN)
    values = x[x != 0]
    if values.size < 100:
        return 0.0, 0.0
    tissue = x > TISSUE_FRACTION * float(np.percentile(values, 99))  # drops background, bone and the dark gap
    ball = ndimage.generate_binary_structure(3, 1)
    core = ndimage.binary_opening(tissue, structure=ball, iterations=2)  # cuts bridges thinner than ~8 mm
    labels, n = ndimage.label(core)
    bright = x > _otsu(values)
    n_bright = int(bright.sum())
    if n == 0 or n_bright == 0:
        return 0.0, 0.0
    largest = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    brain = ndimage.binary_dilation(ndimage.binary_fill_holes(largest), structure=ball, iterations=2)
    ring = int((bright & ~brain).sum())
    return ring * voxel_ml, ring / n_bright


def nonzero_litres(image: np.ndarray, affine: np.ndarray) -> float:
    """Volume of the non-zero voxels of `image` in litres."""
    return float(np.count_nonzero(image)) * float(abs(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1e6


def looks_skull_stripped(image: np.ndarray, affine: np.ndarray, path: str | Path) -> str | None:
    """None when `image` (X, Y, Z; grid `affine`, RAS) looks skull-stripped; else a warning naming `path`,
    saying what was seen and pointing at `mmccd preprocess`."""
    fix = ("mmccd expects skull-stripped, co-registered images (as BraTS); for a raw scan run "
           "`mmccd preprocess --case RAW_CASE --out CASE_DIR` first")
    litres = nonzero_litres(image, affine)
    lo, hi = NONZERO_LITRES
    if litres > hi:
        return (f"{path}: does not look skull-stripped: {litres:.2f} l of non-zero voxels (a skull-stripped brain "
                f"is 0.9-2.0 l; this looks like a whole head or a noisy background). {fix}")
    if litres < lo:
        return (f"{path}: does not look like a skull-stripped whole brain: only {litres:.2f} l of non-zero voxels "
                f"(a skull-stripped brain is 0.9-2.0 l). Check the field of view; {fix}")
    ring_ml, fraction = ring_measure(image, affine)
    if ring_ml > RING_ML and fraction > RING_FRACTION:
        return (f"{path}: does not look skull-stripped: a bright ring of {ring_ml:.0f} ml ({100 * fraction:.0f} % of "
                f"the bright voxels) lies outside the brain (scalp or skull). {fix}")
    return None
