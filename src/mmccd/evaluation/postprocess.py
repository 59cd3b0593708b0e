"""Post-processing options the literature uses, all off by default; each is a small pure function.

The 2D functions work on one slice (H, W) or a stack (N, H, W), processed slice by slice (no
smoothing or connectivity across slices); the ``*_3d`` ones work on a volume (N, H, W) of
consecutive slices.

- brain-mask erosion: drops the brain rim, where skull-stripping errors give false positives;
- median filter of the anomaly map;
- removal of predicted connected components smaller than a size (8-connectivity in 2D, 26 in 3D).
All three as in the comparative study of Baur et al. 2021 (arXiv 2004.03271) and the code bases
that followed it (e.g. pDDPM, Behrendt et al. 2023, arXiv 2303.03758).

The field's values as one named profile: ``PostProcess.profile("field", image_size=64)``. What the
cDDPM / pDDPM evaluation code does (Behrendt et al.; `src/utils/utils_eval.py`, `_test_step`), on
volumes cropped to 192 x 192 x 100 voxels of 1 mm and resampled by 2 (96 x 96 x 50 at 2 mm), evaluated
at that size (``resizedEvaluation: True``):
  1. brain mask eroded per axial slice, 4-connected cross, ``shape[1] // 25`` = 3 iterations at 96 px,
     and the residual multiplied by it (`apply_brainmask_volume`);
  2. a 3D 5 x 5 x 5 median filter of the residual volume (`apply_3d_median_filter`, kernelsize 5);
  3. threshold, then 3D connected components (skimage ``connectivity=3``, 26-neighbourhood) with
     ``filled_area <= 7`` voxels removed (`filter_3d_connected_components`): components of >= 8 voxels stay.
Our sizes are scaled from their 96 px to our image side S (f = S / 96): erosion by their own rule
S // 25; the median's side to the nearest odd number of 5 f (1 = off); the minimum component by area,
8 f^2 px, in 2D (rounded; below 2 = off). ``dims=3`` (whole-volume protocol only) applies the median
and the component removal in 3D as they do, scaled across slices by their 2 mm over our slice spacing:
median depth = nearest odd of 5 * 2 / slice_mm (11 at 1 mm; none without an in-plane median), minimum
component 8 f^2 * 2 / slice_mm voxels. The per-slice protocol can only use dims=2; every protocol can.
(Cost: the 11 x 7 x 7 median of dims=3 at 128 px takes ~15 s per 140-slice volume on one core; 2D ~2 s.)
Known differences: our crop box is the square around the brain (theirs a fixed 192 mm field of view that
a ~170 mm brain fills to ~90% along its longest axis), so scaled by image side our sizes are roughly 10%
smaller relative to the brain;
they median-filter the residual after zeroing it outside the eroded brain, we filter the map as scored;
and their Dice counts tumour outside the eroded brain as missed, ours ignores it (metrics are brain-only).
"""

from __future__ import annotations

import math
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


def _check_volume(x: np.ndarray, where: str) -> None:
    if x.ndim != 3:
        raise ValueError(f"{where}: expected a volume (N, H, W) of consecutive slices, found shape {x.shape}; "
                         "3D post-processing needs the whole stack (use the 2D functions per slice)")


def median_filter_3d(volume: np.ndarray, size: int, depth: int) -> np.ndarray:
    """Anomaly volume (N, H, W) filtered with a `depth` x `size` x `size` median (slices x rows x cols).

    Edges repeat the nearest value (mode "nearest"); size and depth <= 1 both: a copy."""
    volume = np.asarray(volume)
    _check_volume(volume, "median_filter_3d")
    depth, size = max(1, int(depth)), max(1, int(size))
    if depth == 1 and size == 1:
        return volume.copy()
    return ndimage.median_filter(volume, size=(depth, size, size), mode="nearest")


def remove_small_components_3d(binary: np.ndarray, min_size: int) -> np.ndarray:
    """Binary volume (N, H, W) without its 26-connected 3D components of fewer than `min_size` voxels."""
    binary = np.asarray(binary, dtype=bool)
    _check_volume(binary, "remove_small_components_3d")
    if min_size <= 1:
        return binary.copy()
    labels, n = ndimage.label(binary, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return binary.copy()
    keep = np.bincount(labels.ravel()) >= min_size
    keep[0] = False  # background
    return keep[labels]


# The cDDPM / pDDPM evaluation (FinnBehrendt/Conditioned-Diffusion-Models-UAD and
# FinnBehrendt/patched-Diffusion-Models-UAD; their own copy holds only the .pyc of src/utils/utils_eval.py, so
# read in the forks raymondfdavey/Conditioned-Diffusion-Models-UAD@063fea68 and cniel-ud/patched-Diffusion-
# Models-UAD@134b8ecc, same function bodies). utils_eval.py@063fea68 _test_step: l.59-60 erode, l.63-64
# median with cfg.get('kernelsize_median', 5) (set in no config), l.94-96 components; the helpers:
# apply_brainmask_volume (iterations=vol.squeeze().shape[1]//25, per slice, generate_binary_structure(2, 1)),
# apply_3d_median_filter (size (k, k, k)), filter_3d_connected_components (label(connectivity=3), removes
# prop['filled_area'] <= 7). Image size: configs/experiment/cDDPM/DDPM_cond_spark_2D.yaml (and pDDPM's
# configs/experiment/MIDL23_DDPM/DDPM_patched.yaml) imageDim [192,192,100], rescaleFactor 2 ->
# src/datamodules/create_dataset.py get_transform: CropOrPad then tio.Resample(2) = 96 x 96 x 50 at 2 mm.
FIELD_IMAGE_SIZE = 96  # px in-plane where their values hold
FIELD_VOXEL_MM = 2.0  # their isotropic voxel after tio.Resample(2) of 1 mm data
FIELD_MEDIAN = 5  # 3D kernel side, voxels
FIELD_MIN_COMPONENT = 8  # voxels: they remove filled_area <= 7
FIELD_ERODE_DIVISOR = 25  # iterations = image width // 25
PROFILES = ("none", "field")


def nearest_odd(x: float) -> int:
    """Nearest odd integer to x >= 0 (an even integer rounds up): 6.67 -> 7, 3.33 -> 3, 1.67 -> 1, 10 -> 11."""
    return 2 * math.floor(x / 2) + 1


@dataclass(frozen=True)
class PostProcess:
    """Chosen post-processing; the default does nothing. Thresholds must be chosen WITH it applied.

    erode:         px to erode the brain mask by, per slice (metrics then ignore the brain rim)
    median:        odd size of the median filter on the anomaly map, in-plane (0 = off)
    min_component: drop predicted components under this many px (2D) or voxels (3D) (0 = off)
    dims:          2: per slice, on (H, W) or (N, H, W); 3: median and components on a volume (N, H, W) of
                   consecutive slices (whole-volume protocol only; 2D input is refused)
    median_depth:  dims 3: odd median size across slices (0 = same as `median`)
    name:          name of the profile it was made by ("field"), "" for custom values
    image_size:    the image side S the profile was scaled to (0 for custom values)
    slice_mm:      dims-3 profile: the slice spacing it was scaled to (0 otherwise)
    """

    erode: int = 0
    median: int = 0
    min_component: int = 0
    dims: int = 2
    median_depth: int = 0
    name: str = ""
    image_size: int = 0
    slice_mm: float = 0.0

    def __post_init__(self) -> None:
        for name in ("erode", "median", "min_component", "median_depth"):
            if getattr(self, name) < 0:
                raise ConfigError(f"post-processing {name}={getattr(self, name)}: expected 0 (off) or a positive number")
        for name in ("median", "median_depth"):
            if getattr(self, name) > 1 and getattr(self, name) % 2 == 0:
                raise ConfigError(f"post-processing {name}={getattr(self, name)}: expected an odd size (e.g. 3 or 5) so "
                                  "the filtered map is not shifted, or 0 for off")
        if self.dims not in (2, 3):
            raise ConfigError(f"post-processing dims={self.dims}: expected 2 (per slice) or 3 (whole volume)")
        if self.median_depth and self.dims != 3:
            raise ConfigError(f"post-processing median_depth={self.median_depth} needs dims=3 (a median across slices)")

    @classmethod
    def profile(cls, name: str, image_size: int, dims: int = 2, slice_mm: float = 1.0) -> PostProcess:
        """A named profile at image side `image_size` px: "none", or "field" (cDDPM / pDDPM, see the module doc).

        dims=2: per slice, for every protocol (erode S // 25, median odd(5 S/96), min_component round(8 (S/96)^2) px);
        dims=3: whole-volume protocol, median odd(5 * 2 / slice_mm) slices deep and components of
        round(8 (S/96)^2 * 2 / slice_mm) voxels, 26-connected; `slice_mm` = our slice spacing in mm (the
        depth is 0 when the in-plane median is off). Sizes that round to 1 are off (0)."""
        if name not in PROFILES:
            raise ConfigError(f"post-processing profile {name!r}: expected one of {PROFILES}")
        if image_size < 1 or slice_mm <= 0:
            raise ConfigError(f"post-processing profile {name!r}: expected image_size >= 1 px and slice_mm > 0, "
                              f"found {image_size} and {slice_mm}")
        if name == "none":
            return cls()
        f = image_size / FIELD_IMAGE_SIZE
        depth_scale = FIELD_VOXEL_MM / slice_mm if dims == 3 else 1.0
        median = nearest_odd(FIELD_MEDIAN * f)
        # a median across slices alone is not theirs: no in-plane median, no depth either
        depth = nearest_odd(FIELD_MEDIAN * depth_scale) if dims == 3 and median > 1 else 0
        min_component = round(FIELD_MIN_COMPONENT * f * f * depth_scale)
        return cls(erode=image_size // FIELD_ERODE_DIVISOR, median=median if median > 1 else 0,
                   min_component=min_component if min_component > 1 else 0, dims=dims,
                   median_depth=depth if depth > 1 else 0,
                   name=name, image_size=int(image_size), slice_mm=float(slice_mm) if dims == 3 else 0.0)

    @property
    def active(self) -> bool:
        return bool(self.erode or self.median > 1 or self.median_depth > 1 or self.min_component > 1)

    def apply_map(self, anomaly_map: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(map, brain) of shape (H, W) or (N, H, W) -> median-filtered map, eroded brain mask (erosion per slice).

        dims 3: (N, H, W) consecutive slices only, median across slices too."""
        if self.dims == 3:
            return (median_filter_3d(anomaly_map, self.median, self.median_depth or self.median),
                    erode_brain(brain, self.erode))
        return median_filter(anomaly_map, self.median), erode_brain(brain, self.erode)

    def apply_mask(self, pred: np.ndarray) -> np.ndarray:
        """Binary prediction (H, W) or (N, H, W) -> without its small components (dims 3: 3D components)."""
        if self.dims == 3:
            return remove_small_components_3d(pred, self.min_component)
        return remove_small_components(pred, self.min_component)

    def describe(self) -> str:
        """'none'; custom values: e.g. 'erode=3, median=5, min_component=10' (only those on, ', 3D' if dims 3);
        a profile: its name, size, values and their source, e.g.
        'field@64px (2D per slice): erode 2, median 3, min_component 4 px (cDDPM/pDDPM at 96 px, ...)'."""
        if self.name:
            return self._describe_profile()
        parts = [f"{k}={v}" for k, v in (("erode", self.erode), ("median", self.median),
                                           ("median_depth", self.median_depth),
                                           ("min_component", self.min_component)) if v]
        if self.dims == 3:
            parts.append("3D")
        return ", ".join(parts) if parts else "none"

    def _describe_profile(self) -> str:
        def off(v: int, unit: str = "") -> str:
            return f"{v}{unit}" if v > 1 else "off"

        if self.dims == 3:
            depth = self.median_depth or self.median
            shape = f"median {max(depth, 1)} x {max(self.median, 1)} x {max(self.median, 1)}" \
                if max(depth, self.median) > 1 else "median off"
            head = (f"{self.name}@{self.image_size}px (3D volume, {self.slice_mm:g} mm slices): erode {self.erode}, "
                    f"{shape}, min_component {off(self.min_component, ' voxels')} (26-connected)")
        else:
            head = (f"{self.name}@{self.image_size}px (2D per slice): erode {self.erode}, median {off(self.median)}, "
                    f"min_component {off(self.min_component, ' px')}")
        return head + (f" (from cDDPM/pDDPM utils_eval.py at {FIELD_IMAGE_SIZE} px, {FIELD_VOXEL_MM:g} mm voxels: "
                       f"erode width//{FIELD_ERODE_DIVISOR} = {FIELD_IMAGE_SIZE // FIELD_ERODE_DIVISOR} per slice, 3D "
                       f"median {FIELD_MEDIAN}, 3D components < {FIELD_MIN_COMPONENT} voxels removed; scaled by "
                       f"{self.image_size}/{FIELD_IMAGE_SIZE})")
