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
    if all(np.issubdtype(v.dtype, np.integer) for v in volumes) and len({v.dtype for v in volumes}) == 1:
        acc = np.array(volumes[0])  # integers: the bitwise OR is non-zero exactly where any volume is
        for v in volumes[1:]:
            acc |= v
        return acc != 0
    mask = np.zeros(volumes[0].shape, dtype=bool)
    for v in volumes:
        mask |= v != 0
    return mask


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box (one slice per axis) holding every True voxel of `mask` (all of it if none)."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(None))
    return tuple(box)


def percentile_range(volume: np.ndarray, brain: np.ndarray, low: float = 1.0, high: float = 99.0, *,
                     case: str | None = None, file: str | None = None) -> tuple[float, float]:
    """(lo, hi): the `low` / `high` percentiles (numpy's linear method) of volume[brain].

    DataError for an empty brain or hi <= lo (constant brain)."""
    values = volume[brain]  # a copy: partitioned in place below
    if values.size == 0:
        raise DataError("no brain voxels to normalise", case=case, file=file, expected="non-zero voxels",
                        found="an empty brain mask")
    if _table_size(values):
        lo, hi = _integer_percentiles(values, (low, high))
    else:
        if np.issubdtype(values.dtype, np.integer):  # the percentiles of their float32 values
            values = values.astype(np.float32)
        lo, hi = (float(v) for v in np.percentile(values, [low, high], overwrite_input=True))
    if not hi > lo:
        raise DataError("brain intensities have no contrast", case=case, file=file,
                        expected=f"percentile {high:g} above percentile {low:g}",
                        found=f"both {lo:g}", fix="check the image; a constant brain cannot be normalised")
    return lo, hi


def _table_size(values: np.ndarray) -> int | None:
    """max + 1 for integers in 0 .. 65535 (counted for percentiles, looked up for normalisation instead of
    sorted / computed); None otherwise."""
    if not np.issubdtype(values.dtype, np.integer) or values.size == 0:
        return None
    low, high = int(values.min()), int(values.max())
    return high + 1 if low >= 0 and high < 2**16 else None


def _integer_percentiles(values: np.ndarray, percents: Sequence[float]) -> list[float]:
    """np.percentile(values.astype(float32), percents) (linear method), exactly, from a histogram of the
    integers (no sort): the order statistics at floor/ceil of the virtual index q (n - 1), then numpy's
    linear interpolation in the same dtypes. tests/data/test_preprocess.py checks equality with numpy."""
    cum = np.cumsum(np.bincount(values.ravel()))
    n = int(values.size)
    out = []
    for p in percents:
        q = np.float64(p) / 100
        virtual = (n - 1) * q  # numpy's "linear" virtual index
        prev = int(np.clip(np.floor(virtual), 0, n - 1))
        nxt = min(prev + 1, n - 1) if virtual < n - 1 else prev
        a = np.array([np.searchsorted(cum, prev, side="right")], np.float32)
        b = np.array([np.searchsorted(cum, nxt, side="right")], np.float32)
        t = np.array([virtual - np.floor(virtual) if 0 <= virtual < n - 1 else 0.0], np.float64)
        diff = b - a
        r = a + diff * t
        np.subtract(b, diff * (1 - t), out=r, where=t >= 0.5)
        out.append(float(r[0]))
    return out


def normalise(x: np.ndarray, brain: np.ndarray, lo: float, hi: float, mode: str = "percentile") -> np.ndarray:
    """Map intensities with the range (lo, hi) to [-1, 1]; -1 outside `brain` (same shape as x). float32.

    mode "percentile" (default): y = 2 (clip(x, lo, hi) - lo) / (hi - lo) - 1          (lo -> -1, hi -> +1)
    mode "reference" (the authors' code, centred on half the range instead of the midpoint):
                                  y = clip((x - (hi - lo)/2) / ((hi - lo)/2), -1, 1)
    Elementwise, so normalising a crop equals cropping the normalised volume. Integer images are mapped
    through a table of the same float32 arithmetic on every value 0 .. max (identical result, one pass)."""
    size = _table_size(x) if x.size > 2**16 else None
    if size:
        values = np.arange(size, dtype=np.float32)
        table = normalise(values, np.ones(size, bool), lo, hi, mode)
        y = table[x]
        y[~np.asarray(brain, dtype=bool)] = -1.0
        return y
    y = np.array(x, dtype=np.float32)  # a fresh float32 copy, then in place (same float32 arithmetic)
    if mode == "percentile":
        np.clip(y, lo, hi, out=y)
        y -= lo
        y *= 2.0
        y /= hi - lo
        y -= 1.0
    elif mode == "reference":
        half = (hi - lo) / 2.0
        y -= half
        y /= half
        np.clip(y, -1.0, 1.0, out=y)
    else:
        raise ValueError(f"normalisation mode must be 'percentile' or 'reference', not {mode!r}")
    y[~np.asarray(brain, dtype=bool)] = -1.0
    return y


def percentile_normalise(volume: np.ndarray, brain: np.ndarray, low: float = 1.0, high: float = 99.0,
                         mode: str = "percentile", *, case: str | None = None,
                         file: str | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Map brain intensities to [-1, 1]; background (outside `brain`) is -1: `percentile_range` then
    `normalise`. volume, brain: same shape. Returns (y float32, (lo, hi))."""
    lo, hi = percentile_range(volume, brain, low, high, case=case, file=file)
    return normalise(volume, brain, lo, hi, mode), (lo, hi)


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


def crop(slices: np.ndarray, box: Box, fill: float = 0, index: np.ndarray | None = None,
         dtype: np.dtype | type | None = None) -> np.ndarray:
    """(N, H, W) -> (n, side, side): the square `box` of the slices `index` (default all), `fill` outside
    the grid. Reads only the box (views such as `to_slices` are not copied whole)."""
    r0, c0, side = box
    _, h, w = slices.shape
    index = np.arange(slices.shape[0]) if index is None else np.asarray(index)
    out = np.full((len(index), side, side), fill, dtype=dtype or slices.dtype)
    rs, re = max(r0, 0), min(r0 + side, h)
    cs, ce = max(c0, 0), min(c0 + side, w)
    if rs < re and cs < ce and len(index):
        out[:, rs - r0:re - r0, cs - c0:ce - c0] = slices[index, rs:re, cs:ce]
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
    return resize(crop(np.asarray(slices), box, fill, dtype=np.float32), size, mode)


def resize(crops: np.ndarray, size: int, mode: str = "bilinear") -> np.ndarray:
    """(n, side, side) float32 crops -> (n, size, size) float32 (see `crop_resize`)."""
    if crops.shape[0] == 0:
        return np.zeros((0, size, size), np.float32)
    return _resize(torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32)), size, mode).numpy()


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
