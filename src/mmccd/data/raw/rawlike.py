"""SYNTHETIC test inputs made from a co-registered (BraTS) case, with a known ground truth:

- `make_rawlike`: every contrast moved by its own known rigid transform (the patient moving between
  sequences) and resampled to another voxel size and orientation (thick slices integrate over their
  thickness), as a hospital scan would be;
- `add_head`: a skull-stripped volume given a bright scalp-like shell, a dark gap and background noise,
  a crude "head" on which skull-stripping checks must fire.

Used by the tests and the benchmark; numpy, scipy and nibabel only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from mmccd.data.raw.geometry import fov_corners, resample, rigid_matrix

# contrast -> (axcodes of its raw voxel axes, voxel size mm, rotation about x, y, z deg, shift mm)
DEFAULT_MOTIONS: dict[str, tuple[str, tuple[float, float, float], tuple[float, float, float],
                                 tuple[float, float, float]]] = {
    "t1": ("RAS", (0.9, 0.9, 3.0), (4.0, -3.0, 6.0), (5.0, -8.0, 3.0)),
    "t1ce": ("LAS", (1.0, 1.0, 2.0), (-5.0, 2.0, -4.0), (-6.0, 4.0, -5.0)),
    "t2": ("RPI", (0.9, 3.0, 0.9), (2.0, 6.0, -3.0), (3.0, 7.0, -6.0)),
    "flair": ("PRS", (0.9, 0.9, 3.0), (-6.0, -4.0, 5.0), (-4.0, -5.0, 8.0)),
}


@dataclass
class RawLikeCase:
    """Raw-like images and the motion that made each.

    images:  contrast -> nibabel image on its own raw grid (int16, scanner-like intensities)
    motions: contrast -> 4 x 4 rigid world transform, BraTS world -> that raw scan's world (RAS mm)
    """

    images: dict[str, nib.Nifti1Image]
    motions: dict[str, np.ndarray]

    def true_transform(self, contrast: str, fixed: str) -> np.ndarray:
        """4 x 4 fixed raw world -> `contrast` raw world: what co-registration should find."""
        return self.motions[contrast] @ np.linalg.inv(self.motions[fixed])


def grid_for(corners: np.ndarray, axcodes: str, spacing: tuple[float, float, float]) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, affine) of a grid with voxel axes `axcodes` (e.g. "RAS", "ASR") and `spacing` covering `corners`."""
    axis = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    direction = np.zeros((3, 3))
    for col, code in enumerate(axcodes):
        row, sign = axis[code]
        direction[row, col] = sign
    local = corners @ direction  # world -> voxel-axis coordinates (direction is orthonormal)
    lo, hi = local.min(axis=0), local.max(axis=0)
    sp = np.asarray(spacing, dtype=float)
    n = np.ceil((hi - lo) / sp).astype(int)
    first = (lo + hi) / 2 - (n - 1) * sp / 2
    affine = np.eye(4)
    affine[:3, :3] = direction * sp
    affine[:3, 3] = direction @ first
    return tuple(int(v) for v in n), affine


def make_rawlike(volumes: Mapping[str, np.ndarray], affine: np.ndarray,
                 motions: Mapping[str, tuple] | None = None, peak: float = 4000.0) -> RawLikeCase:
    """Move and resample each co-registered volume (X, Y, Z), all on the grid `affine`, to its own raw grid.

    motions: contrast -> (axcodes, voxel size, rotation deg, shift mm) as DEFAULT_MOTIONS (used when None);
    rotations are about the volume's centre. Intensities are scaled to a maximum of `peak` and stored as int16."""
    motions = DEFAULT_MOTIONS if motions is None else motions
    shape = next(iter(volumes.values())).shape
    centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]
    images, moved = {}, {}
    for c, vol in volumes.items():
        axcodes, spacing, angles, shift = motions[c]
        m = rigid_matrix(angles, shift, centre)
        corners = fov_corners(shape, affine) @ m[:3, :3].T + m[:3, 3]
        raw_shape, raw_affine = grid_for(corners, axcodes, spacing)
        data = _acquire(vol, affine, raw_shape, raw_affine, np.linalg.inv(m), spacing)
        scale = peak / max(float(data.max()), 1e-6)
        images[c] = nib.Nifti1Image(np.rint(data * scale).astype(np.int16), raw_affine)
        images[c].set_qform(raw_affine, code=1)
        moved[c] = m
    return RawLikeCase(images, moved)


def _acquire(vol: np.ndarray, affine: np.ndarray, raw_shape: tuple[int, ...], raw_affine: np.ndarray,
             raw_to_src: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Sample `vol` on the raw grid averaging over each raw voxel's extent along its thick (> 1.5 mm) axes:
    a box slice profile, as a scanner's slice integrates, rather than point samples that alias."""
    offsets = [np.linspace(-0.5, 0.5, int(np.ceil(s)) + 2)[1:-1] if s > 1.5 else np.zeros(1) for s in spacing]
    total = np.zeros(raw_shape, dtype=np.float32)
    n = 0
    for di in offsets[0]:
        for dj in offsets[1]:
            for dk in offsets[2]:
                shift = np.eye(4)
                shift[:3, 3] = (di, dj, dk)
                total += resample(vol, affine, raw_shape, raw_affine @ shift, out_to_src_world=raw_to_src, order=1)
                n += 1
    return total / n


def add_head(volume: np.ndarray, zooms: tuple[float, ...], gap_mm: float = 4.0, shell_mm: float = 6.0,
             noise: float = 0.02, seed: int = 0) -> np.ndarray:
    """(X, Y, Z) float32: a skull-stripped `volume` inside a crude head.

    Around the non-zero brain: a dark gap of `gap_mm` (CSF and bone, 5 % of the brain's median), then a
    bright shell of `shell_mm` (scalp fat, 1.3 x the brain's 95th percentile), and Gaussian background
    noise of `noise` x that value everywhere else."""
    brain = volume != 0
    outside = ndimage.distance_transform_edt(~brain, sampling=zooms[:3])
    ref = float(np.percentile(volume[brain], 95))
    rng = np.random.default_rng(seed)
    out = np.abs(rng.normal(0.0, noise * ref, volume.shape)).astype(np.float32)
    out[(outside > 0) & (outside <= gap_mm)] = 0.05 * float(np.median(volume[brain]))
    out[(outside > gap_mm) & (outside <= gap_mm + shell_mm)] = 1.3 * ref
    out[brain] = volume[brain]
    return out
