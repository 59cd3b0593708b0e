"""Post-processing options the literature uses, all off by default; each is a small pure function.

Every function works on one slice (H, W) or a stack (N, H, W), and always in 2D: a stack is
processed slice by slice (no smoothing or connectivity across slices).

- brain-mask erosion: drops the brain rim, where skull-stripping errors give false positives;
- median filter of the anomaly map;
- removal of predicted connected components smaller than a size (8-connectivity).
All three as in the comparative study of Baur et al. 2021 (arXiv 2004.03271) and the code bases
that followed it (e.g. pDDPM, Behrendt et al. 2023, arXiv 2303.03758).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mmccd.errors import ConfigError


def _per_slice(shape_ndim: int, footprint2d: np.ndarray) -> np.ndarray:
    """Lift a 2D footprint to act per slice on (N, H, W)."""
    if shape_ndim == 2:
        return footprint2d
    if shape_ndim == 3:
        return footprint2d[None]
    raise ValueError(f"expected an (H, W) or (N, H, W) array, found {shape_ndim} dimensions")


def erode_brain(brain: np.ndarray, iterations: int) -> np.ndarray:
    """Brain mask (H, W) or (N, H, W) bool eroded by `iterations` px (4-connected cross), per slice.

    Pixels on the image border count as outside. iterations=0 returns a copy."""
    brain = np.asarray(brain, dtype=bool)
    if iterations <= 0:  # scipy's iterations < 1 would mean "until nothing changes"
        return brain.copy()
    structure = _per_slice(brain.ndim, ndimage.generate_binary_structure(2, 1))
    return ndimage.binary_erosion(brain, structure=structure, iterations=int(iterations), border_value=0)


def median_filter(anomaly_map: np.ndarray, size: int) -> np.ndarray:
    """Anomaly map (H, W) or (N, H, W) filtered with a `size` x `size` median, per slice; size <= 1: a copy."""
    anomaly_map = np.asarray(anomaly_map)
    if size <= 1:
        return anomaly_map.copy()
    footprint = _per_slice(anomaly_map.ndim, np.ones((int(size), int(size)), dtype=bool))
    return ndimage.median_filter(anomaly_map, footprint=footprint, mode="nearest")


def remove_small_components(binary: np.ndarray, min_size: int) -> np.ndarray:
    """Binary mask (H, W) or (N, H, W) without its 8-connected components of fewer than `min_size` px.

    Components are found per 2D slice; min_size <= 1 returns a copy."""
    binary = np.asarray(binary, dtype=bool)
    if min_size <= 1:
        return binary.copy()
    structure = np.ones((3, 3), dtype=bool)
    if binary.ndim == 3:  # label wants 3x3x3: only the middle plane, so labels never span slices
        structure = np.stack([np.zeros_like(structure), structure, np.zeros_like(structure)])
    elif binary.ndim != 2:
        raise ValueError(f"expected an (H, W) or (N, H, W) array, found {binary.ndim} dimensions")
    labels, n = ndimage.label(binary, structure=structure)
    if n == 0:
        return binary.copy()
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False  # background
    return keep[labels]


@dataclass(frozen=True)
class PostProcess:
    """Chosen post-processing; the default does nothing. Thresholds must be chosen WITH it applied.

    erode:         px to erode the brain mask by (metrics then ignore the brain rim)
    median:        odd size of the median filter on the anomaly map (0 = off)
    min_component: drop predicted components under this many px (0 = off)
    """

    erode: int = 0
    median: int = 0
    min_component: int = 0

    def __post_init__(self) -> None:
        for name in ("erode", "median", "min_component"):
            if getattr(self, name) < 0:
                raise ConfigError(f"post-processing {name}={getattr(self, name)}: expected 0 (off) or a positive number")
        if self.median > 1 and self.median % 2 == 0:
            raise ConfigError(f"post-processing median={self.median}: expected an odd size (e.g. 3 or 5) so the "
                              "filtered map is not shifted, or 0 for off")

    @property
    def active(self) -> bool:
        return bool(self.erode or self.median > 1 or self.min_component > 1)

    def apply_map(self, anomaly_map: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(map, brain) of shape (H, W) or (N, H, W) -> median-filtered map, eroded brain mask."""
        return median_filter(anomaly_map, self.median), erode_brain(brain, self.erode)

    def apply_mask(self, pred: np.ndarray) -> np.ndarray:
        """Binary prediction (H, W) or (N, H, W) -> without its small components."""
        return remove_small_components(pred, self.min_component)

    def describe(self) -> str:
        """'none', or e.g. 'erode=3, median=5, min_component=10' (only the options that are on)."""
        parts = [f"{k}={v}" for k, v in (("erode", self.erode), ("median", self.median),
                                           ("min_component", self.min_component)) if v]
        return ", ".join(parts) if parts else "none"
