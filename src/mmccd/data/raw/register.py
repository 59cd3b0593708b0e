"""Rigid co-registration of one contrast to the fixed one (SimpleITK), and a similarity check.

Why SimpleITK and not ANTsPy: on these 2 cores it was as accurate and faster, and it installs without
pinning numpy / scipy below the versions the rest of mmccd uses (docs/preprocess.md has the numbers
and `benchmarks/registration_compare.py --ants` the command).

Method: Mattes mutual information (32 bins, 50k random samples), Euler 3D transform (rotation about
the fixed image's centre + shift), regular-step gradient descent, three levels: block-averaged copies
of both images at about 4 mm and 2 mm, then the images themselves (block means are cheap anti-aliasing;
ITK's own pyramid smooths both whole volumes at every level, which cost more than the optimisation
here), started from the scanner coordinates (identity: the sequences of one session
share the scanner's world; `init="moments"` aligns the centres of mass first, for scans from
different sessions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmccd.data.raw.extra import require
from mmccd.data.raw.geometry import LPS_FLIP, ras_to_lps
from mmccd.errors import DataError

NMI_BINS = 32
LEVELS_MM = (4.0, 2.0, 0.0)  # pyramid: ~4 mm, ~2 mm, native
SAMPLES = (50_000, 50_000, 50_000)  # random metric samples per level
ITERATIONS = (100, 100, 100)  # at most, per level
METHOD = (f"rigid (Euler 3D), Mattes MI 32 bins, {SAMPLES[-1] // 1000}k random samples, regular-step gradient "
          f"descent, levels: block means at {LEVELS_MM[0]:g} and {LEVELS_MM[1]:g} mm, then native")  # for the record
MIN_NMI = 1.15  # below: a gross failure (e.g. 180 degrees off) or unrelated images; calibrated in docs/preprocess.md


@dataclass(frozen=True)
class Registration:
    """A rigid co-registration result.

    transform: 4 x 4 world transform (RAS mm), fixed world -> moving world
    metric:    the optimiser's final Mattes MI value (negative; lower is better)
    iterations: optimiser iterations at the last level
    """

    transform: np.ndarray
    metric: float
    iterations: int


def to_sitk(data: np.ndarray, affine: np.ndarray):  # -> SimpleITK.Image
    """A SimpleITK float32 image of `data` (X, Y, Z) on the grid `affine` (RAS): spacing, LPS origin and
    direction from the affine. DataError for a sheared affine (ITK cannot represent it)."""
    sitk = require("SimpleITK", "co-registration")
    lps = LPS_FLIP @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise DataError("the image's voxel axes are not orthogonal (sheared affine)", expected="a rigid voxel grid",
                        found=f"affine {np.round(affine, 4).tolist()}", fix="resample the image to an orthogonal grid")
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0)), dtype=np.float32))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in lps[:3, 3]])
    img.SetDirection([float(d) for d in direction.flatten()])
    return img


def _euler_to_ras(tx) -> np.ndarray:
    """4 x 4 RAS matrix of a SimpleITK Euler3DTransform (fixed -> moving, LPS): x' = R (x - c) + c + t."""
    r = np.asarray(tx.GetMatrix(), dtype=float).reshape(3, 3)
    c, t = np.asarray(tx.GetCenter(), dtype=float), np.asarray(tx.GetTranslation(), dtype=float)
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = r, c + t - r @ c
    return ras_to_lps(lps)


def block_mean(data: np.ndarray, affine: np.ndarray, target_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) averaged over blocks of round(target_mm / voxel size) voxels per axis (at least 1):
    an anti-aliased coarse copy for a pyramid level, at the cost of one pass over the volume."""
    zooms = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    f = np.maximum(1, np.round(target_mm / zooms)).astype(int)
    if np.all(f == 1):
        return data, affine
    n = np.asarray(data.shape) // f
    blocks = np.asarray(data[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]], dtype=np.float32)
    coarse = blocks.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).mean(axis=(1, 3, 5), dtype=np.float32)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(f)
    scale[:3, 3] = (f - 1) / 2  # a block's centre, in the fine voxel indices
    return coarse, np.asarray(affine, dtype=float) @ scale


def _level(sitk, samples: int, n_voxels: int, seed: int, iterations: int, bins: int):
    """One level of the registration: Mattes MI at `samples` random points, regular-step gradient descent."""
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(min(1.0, samples / n_voxels), seed)
    reg.SetInterpolator(sitk.sitkLinear)
    # gradients at the sample points only, not a gradient image of each whole volume
    reg.SetMetricUseFixedImageGradientFilter(False)
    reg.SetMetricUseMovingImageGradientFilter(False)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=iterations,
                                                 relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    return reg


def register_rigid(fixed: np.ndarray, fixed_affine: np.ndarray, moving: np.ndarray, moving_affine: np.ndarray,
                   init: str = "scanner", samples: tuple[int, ...] = SAMPLES, seed: int = 1,
                   threads: int | None = None, levels_mm: tuple[float, ...] = LEVELS_MM,
                   iterations: tuple[int, ...] = ITERATIONS, bins: int = 32) -> Registration:
    """Rigidly register `moving` (X', Y', Z') to `fixed` (X, Y, Z), each on its own grid (RAS affines).

    levels_mm: the pyramid, coarse to fine: block-averaged copies of both images at about these voxel
    sizes (0: the images themselves); samples and iterations: per level. seed: of the random samples, non-zero (SimpleITK reads 0 as "seed
    from the clock"). Returns the fixed -> moving world transform; the same inputs, seed and thread count
    give the same result (to about 1e-3 mm: the threads' sums are added in varying order)."""
    if seed == 0:
        raise ValueError("seed must be non-zero (SimpleITK takes 0 as 'seed from the wall clock')")
    sitk = require("SimpleITK", "co-registration")
    if threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    if init not in ("scanner", "moments"):
        raise ValueError(f"init must be 'scanner' or 'moments', not {init!r}")
    transform = None
    reg = None
    for mm, n_samples, n_iter in zip(levels_mm, samples, iterations, strict=True):
        f_data, f_aff = block_mean(fixed, fixed_affine, mm)
        m_data, m_aff = block_mean(moving, moving_affine, mm)
        f_img, m_img = to_sitk(f_data, f_aff), to_sitk(m_data, m_aff)
        if transform is None:
            if init == "moments":
                transform = sitk.CenteredTransformInitializer(f_img, m_img, sitk.Euler3DTransform(),
                                                              sitk.CenteredTransformInitializerFilter.MOMENTS)
            else:
                transform = sitk.Euler3DTransform()
                size = np.asarray(f_img.GetSize(), dtype=float)
                transform.SetCenter(f_img.TransformContinuousIndexToPhysicalPoint(list((size - 1) / 2)))
        reg = _level(sitk, n_samples, int(np.prod(f_data.shape)), seed, n_iter, bins)
        reg.SetInitialTransform(transform, inPlace=False)
        out = reg.Execute(f_img, m_img)
        transform = sitk.Euler3DTransform(out.GetNthTransform(0) if hasattr(out, "GetNthTransform") else out)
    return Registration(_euler_to_ras(transform), float(reg.GetMetricValue()), int(reg.GetOptimizerIteration()))


# ---------------------------------------------------------------- similarity


def nmi(a: np.ndarray, b: np.ndarray, bins: int = NMI_BINS) -> float:
    """Normalised mutual information (H(A) + H(B)) / H(A, B) of paired samples a, b (N,): 1 = independent, 2 = equal.

    Each variable is binned over its 1st-99th percentile range (robust to a few bright voxels)."""
    def binned(x: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(x[:: max(1, x.size // 200_000)], [1, 99])  # a subsample fixes the range
        return np.clip(((x - lo) / max(hi - lo, 1e-12) * bins).astype(np.int64), 0, bins - 1)

    joint = np.bincount(binned(a) * bins + binned(b), minlength=bins * bins).astype(float).reshape(bins, bins)
    p = joint / joint.sum()

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return (entropy(p.sum(1)) + entropy(p.sum(0))) / max(entropy(p), 1e-12)


def nmi_on_grid(fixed: np.ndarray, moved: np.ndarray) -> float:
    """NMI of the fixed image and a moved one, both (X, Y, Z) on the output grid, over every voxel where
    `moved` has data (it is NaN outside its scan): head outlines count, as they do for the registration.
    Every second voxel along each axis is used (8 x faster, the same value to about 0.001)."""
    fixed, moved = fixed[::2, ::2, ::2], moved[::2, ::2, ::2]
    keep = np.isfinite(moved)
    if keep.sum() < 1000:
        return 1.0  # (almost) no overlap: as bad as independent images
    return nmi(fixed[keep], moved[keep])


def check_similarity(value: float, fixed_file: Path | str, moving_file: Path | str, case: str | None,
                     minimum: float = MIN_NMI) -> None:
    """DataError naming both files when the registered pair's NMI is below `minimum`."""
    if value < minimum:
        raise DataError(f"co-registration failed: the images are dissimilar after registration (NMI {value:.3f})",
                        case=case, file=f"{moving_file} registered to {fixed_file}",
                        expected=f"normalised mutual information >= {minimum:g}", found=f"{value:.3f}",
                        fix="check that both files are scans of the same head (and the same session), view the "
                            "pair; if the fields of view hardly overlap try --init moments")
