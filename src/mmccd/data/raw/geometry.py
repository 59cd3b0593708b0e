"""Voxel grids, world transforms and resampling: numpy and scipy only (works in the core install).

Conventions (one for the whole package):

- **world** is nibabel's scanner space, RAS+ millimetres (x to the Right, y Anterior, z Superior);
  an *affine* maps voxel indices (i, j, k) to world points; ITK's LPS world is converted at the
  SimpleITK boundary only (`ras_to_lps`).
- the **output grid** is 1 mm isotropic with voxel axes pointing to Left, Posterior, Superior
  (nibabel axcodes "LPS": ITK's identity direction, the orientation of BraTS files), so a
  preprocessed case is stored in the same voxel order as BraTS.
- a **world transform** W of a contrast is a 4 x 4 rigid matrix mapping a world point of the fixed
  (output) space to the matching world point of that contrast's raw scan (ITK's fixed -> moving
  convention). The output voxel v of contrast c samples its raw file at
  ``inv(raw_affine_c) @ W_c @ out_affine @ v``; mapping back inverts it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)
OUTPUT_AXCODES = ("L", "P", "S")


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape (X, Y, Z) and affine (4, 4) voxel -> world (RAS mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        """(3,) voxel size in mm along each voxel axis."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def ras_to_lps(matrix: np.ndarray) -> np.ndarray:
    """A 4 x 4 world transform or affine in RAS -> the same in LPS (and back: the flip is its own inverse).

    For a transform W (world -> world) this is F W F; for an affine A (voxel -> world) use F A."""
    return LPS_FLIP @ matrix @ LPS_FLIP


def fov_corners(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """(8, 3) world points of the outer corners of the voxel grid (voxel edges, not centres)."""
    lo, hi = -0.5, np.asarray(shape[:3], dtype=float) - 0.5
    corners = np.array([[x, y, z] for x in (lo, hi[0]) for y in (lo, hi[1]) for z in (lo, hi[2])])
    return corners @ affine[:3, :3].T + affine[:3, 3]


def output_grid(shape: tuple[int, ...], affine: np.ndarray, spacing: float = 1.0) -> Grid:
    """The `spacing`-mm LPS-aligned grid covering the whole field of view of the grid (shape, affine).

    Oblique or rotated inputs get a box around their field of view (its empty corners stay 0);
    the grid is centred on the field of view."""
    lps = fov_corners(shape, affine) * np.array([-1.0, -1.0, 1.0])  # corners in LPS coordinates
    lo, hi = lps.min(axis=0), lps.max(axis=0)
    n = np.maximum(1, np.ceil((hi - lo) / spacing - 1e-6)).astype(int)
    first = (lo + hi) / 2 - (n - 1) * spacing / 2  # centre of voxel 0, LPS
    out = np.eye(4)
    out[:3, :3] = np.diag([-spacing, -spacing, spacing])
    out[:3, 3] = first * np.array([-1.0, -1.0, 1.0])
    return Grid((int(n[0]), int(n[1]), int(n[2])), out)


def resample(volume: np.ndarray, src_affine: np.ndarray, out_shape: tuple[int, ...], out_affine: np.ndarray,
             out_to_src_world: np.ndarray | None = None, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """`volume` (its grid `src_affine`) sampled at the voxel centres of (out_shape, out_affine).

    out_to_src_world: 4 x 4 world transform from the output's world to the source's (identity when
    None). order: 1 trilinear for images and maps, 0 nearest for masks and labels. Points outside the
    source get `cval`. Returns float32 (order 1) or the input dtype (order 0), shape out_shape."""
    world = np.eye(4) if out_to_src_world is None else np.asarray(out_to_src_world, dtype=float)
    m = np.linalg.inv(np.asarray(src_affine, dtype=float)) @ world @ np.asarray(out_affine, dtype=float)
    if order == 0:
        # nearest on integers keeps labels exact; affine_transform would cast them to float
        return _nearest(volume, m, tuple(int(s) for s in out_shape[:3]), cval)
    src = np.asarray(volume, dtype=np.float32)
    return ndimage.affine_transform(src, m[:3, :3], m[:3, 3], output_shape=tuple(out_shape[:3]), order=order,
                                    mode="constant", cval=cval, prefilter=False, output=np.float32)


def _nearest(volume: np.ndarray, m: np.ndarray, shape: tuple[int, int, int], cval: float) -> np.ndarray:
    """Nearest-neighbour resampling, one output slab at a time (bounded memory)."""
    out = np.full(shape, cval, dtype=volume.dtype)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    base = m[:3, 0, None, None] * ii + m[:3, 1, None, None] * jj + m[:3, 3, None, None]  # (3, X, Y)
    src_shape = np.asarray(volume.shape)[:, None, None]
    for k in range(shape[2]):
        idx = np.rint(base + m[:3, 2, None, None] * k).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < src_shape), axis=0)
        out[:, :, k][inside] = volume[idx[0][inside], idx[1][inside], idx[2][inside]]
    return out


# ---------------------------------------------------------------- rigid transforms


def rigid_matrix(angles_deg: tuple[float, float, float], shift_mm: tuple[float, float, float],
                 center: np.ndarray | None = None) -> np.ndarray:
    """4 x 4 rigid transform: rotation about x, then y, then z (degrees) about `center`, then a shift (mm)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    r = rz @ ry @ rx
    c = np.zeros(3) if center is None else np.asarray(center, dtype=float)
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = c - r @ c + np.asarray(shift_mm, dtype=float)
    return out


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """The angle (degrees) of the rotation part of a rigid 4 x 4 (or 3 x 3) matrix."""
    r = np.asarray(matrix, dtype=float)[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))


def transform_error(estimate: np.ndarray, truth: np.ndarray, points: np.ndarray) -> tuple[float, float]:
    """(max displacement in mm over `points` (N, 3), rotation angle in degrees) between two rigid transforms."""
    p = np.c_[points, np.ones(len(points))]
    d = (p @ np.asarray(estimate).T - p @ np.asarray(truth).T)[:, :3]
    return float(np.linalg.norm(d, axis=1).max()), rotation_angle_deg(np.linalg.inv(truth) @ estimate)


def is_rigid(matrix: np.ndarray, tol: float = 1e-4) -> bool:
    """True when the 3 x 3 part of a 4 x 4 matrix is a proper rotation (orthonormal, determinant +1)."""
    r = np.asarray(matrix, dtype=float)[:3, :3]
    return bool(np.allclose(r.T @ r, np.eye(3), atol=tol) and np.linalg.det(r) > 0)
