"""Per-volume preprocessing, exact and invertible where it matters.

1. brain mask: voxels where any loaded modality is non-zero (BraTS is skull-stripped, background 0);
2. percentile normalisation of brain intensities to [-1, 1], background -1;
3. axial slices along the voxel axis closest to superior-inferior, in the ORIGINAL voxel order
   (no reorientation), so maps written back land on the exact input grid;
4. one square in-plane box per volume around the union of the brain over all slices, cropped
   (padding with background where the box leaves the volume) and resized to `size` x `size`;
   `uncrop` is the inverse used to write maps back.

A box is (r0, c0, side): rows r0 .. r0+side-1 and columns c0 .. c0+side-1 of the in-plane grid
(H, W) = the volume's two non-axial axes in their original order; r0, c0 may be negative.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from mmccd.errors import DataError

Box = tuple[int, int, int]


def brain_mask(volumes: Sequence[np.ndarray]) -> np.ndarray:
    """(X, Y, Z) bool: any of `volumes` (each (X, Y, Z)) is non-zero."""
    mask = np.zeros(volumes[0].shape, dtype=bool)
    for v in volumes:
        mask |= v != 0
    return mask


def percentile_normalise(volume: np.ndarray, brain: np.ndarray, low: float = 1.0, high: float = 99.0,
                         mode: str = "percentile", *, case: str | None = None,
                         file: str | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Map brain intensities to [-1, 1]; background (outside `brain`) is -1.

    lo, hi = the `low` / `high` percentiles of volume[brain]
    mode "percentile" (default): y = 2 (clip(x, lo, hi) - lo) / (hi - lo) - 1          (lo -> -1, hi -> +1)
    mode "reference" (the authors' code, centred on half the range instead of the midpoint):
                                  y = clip((x - (hi - lo)/2) / ((hi - lo)/2), -1, 1)
    volume, brain: same shape. Returns (y float32, (lo, hi)). DataError if hi <= lo (constant brain)."""
    values = volume[brain]
    if values.size == 0:
        raise DataError("no brain voxels to normalise", case=case, file=file, expected="non-zero voxels",
                        found="an empty brain mask")
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if not hi > lo:
        raise DataError("brain intensities have no contrast", case=case, file=file,
                        expected=f"percentile {high:g} above percentile {low:g}",
                        found=f"both {lo:g}", fix="check the image; a constant brain cannot be normalised")
    x = volume.astype(np.float32, copy=False)
    if mode == "percentile":
        y = 2.0 * (np.clip(x, lo, hi) - lo) / (hi - lo) - 1.0
    elif mode == "reference":
        half = (hi - lo) / 2.0
        y = np.clip((x - half) / half, -1.0, 1.0)
    else:
        raise ValueError(f"normalisation mode must be 'percentile' or 'reference', not {mode!r}")
    y = np.where(brain, y, -1.0).astype(np.float32)
    return y, (lo, hi)


def axial_axis(affine: np.ndarray) -> int:
    """The voxel axis whose direction is closest to superior-inferior (coded 'S' or 'I')."""
    codes = nib.aff2axcodes(np.asarray(affine))
    for axis, code in enumerate(codes):
        if code in ("S", "I"):
            return axis
    raise ValueError(f"no superior-inferior axis in affine with axis codes {codes}")


def to_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """(X, Y, Z) -> (n, H, W): a view with the axial axis first, in-plane axes in original order."""
    return np.moveaxis(volume, axis, 0)


def square_box(brain_slices: np.ndarray, margin: int = 4) -> Box:
    """Square box around the union over slices of `brain_slices` (n, H, W) bool, `margin` px on the
    longer side; centred on the brain's bounding box. May extend beyond the grid."""
    union = brain_slices.any(axis=0)
    if not union.any():
        raise ValueError("empty brain mask: no box")
    rows = np.flatnonzero(union.any(axis=1))
    cols = np.flatnonzero(union.any(axis=0))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    side = int(max(h, w) + 2 * margin)
    r0 = int(rows[0] - (side - h) // 2)
    c0 = int(cols[0] - (side - w) // 2)
    return (r0, c0, side)


def _crop(slices: np.ndarray, box: Box, fill: float) -> np.ndarray:
    """(n, H, W) -> (n, side, side), `fill` outside the grid."""
    r0, c0, side = box
    n, h, w = slices.shape
    out = np.full((n, side, side), fill, dtype=slices.dtype)
    rs, re = max(r0, 0), min(r0 + side, h)
    cs, ce = max(c0, 0), min(c0 + side, w)
    if rs < re and cs < ce:
        out[:, rs - r0:re - r0, cs - c0:ce - c0] = slices[:, rs:re, cs:ce]
    return out


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(n, h, w) float -> (n, size, size); pixel-centre aligned (align_corners=False)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if mode == "nearest":
        return F.interpolate(x[:, None], size=(size, size), mode="nearest-exact")[:, 0]
    if mode == "bilinear":
        antialias = x.shape[-1] > size or x.shape[-2] > size
        return F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False,
                             antialias=antialias)[:, 0]
    raise ValueError(f"mode must be 'bilinear' or 'nearest', not {mode!r}")


def crop_resize(slices: np.ndarray, box: Box, size: int, mode: str = "bilinear", fill: float = 0.0) -> np.ndarray:
    """Crop (n, H, W) slices to the square `box` (padding with `fill`) and resize to (n, size, size) float32.

    mode "bilinear" for intensities (antialiased when shrinking), "nearest" for masks and labels."""
    crop = _crop(np.asarray(slices, dtype=np.float32), box, fill)
    if crop.shape[0] == 0:
        return np.zeros((0, size, size), np.float32)
    return _resize(torch.from_numpy(crop), size, mode).numpy()


def uncrop(maps: np.ndarray, box: Box | Sequence[int], in_plane_shape: tuple[int, int]) -> np.ndarray:
    """Inverse of `crop_resize` for maps: (n, size, size) -> (n, H, W), bilinear, 0 outside the box."""
    r0, c0, side = (int(v) for v in box)
    h, w = in_plane_shape
    maps = np.asarray(maps, dtype=np.float32)
    n = maps.shape[0]
    out = np.zeros((n, h, w), dtype=np.float32)
    if n == 0:
        return out
    big = F.interpolate(torch.from_numpy(np.ascontiguousarray(maps))[:, None], size=(side, side), mode="bilinear",
                        align_corners=False)[:, 0].numpy()
    rs, re = max(r0, 0), min(r0 + side, h)
    cs, ce = max(c0, 0), min(c0 + side, w)
    if rs < re and cs < ce:
        out[:, rs:re, cs:ce] = big[:, rs - r0:re - r0, cs - c0:ce - c0]
    return out
