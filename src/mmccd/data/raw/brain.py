"""Brain extraction on the output grid: one mask, later applied to every contrast.

Backends (`extract_brain(..., backend=...)`):

- ``deepbet`` (default): deepbet's 3D CNN (Fisch et al. 2024, arXiv 2308.07003; MIT), trained on T1
  images; its weights ship inside its wheel, so it works offline. Run on the fixed contrast (T1 when
  present).
- ``hd-bet``: HD-BET through brainles-preprocessing, only where its weights are already on disk
  (mmccd never downloads at run time); install brainles-preprocessing yourself.
- ``none``: the input is already skull-stripped; the brain is where the fixed scan is non-zero, carried
  to the output grid as a fraction (trilinear) and kept where it is >= 0.5 (`stripped_mask`).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from mmccd.data.raw.extra import require
from mmccd.data.raw.geometry import Grid, resample
from mmccd.errors import DataError, MmccdError

BACKENDS = ("deepbet", "hd-bet", "none")
PLAUSIBLE_ML = (900.0, 2000.0)  # adult brain (and BraTS brain masks); outside: logged in the record


def extract_brain(volume: np.ndarray, affine: np.ndarray, backend: str = "deepbet", device: str = "cpu"
                  ) -> np.ndarray:
    """(X, Y, Z) bool brain mask of `volume` (X, Y, Z) on the grid `affine` (RAS), by a model.

    backend: "deepbet" or "hd-bet" ("none" is `stripped_mask`, from the raw scan). device: "cpu" or "cuda".
    Raises MmccdError for an unknown backend or one that cannot run here (missing package or weights)."""
    if backend == "deepbet":
        return _deepbet(volume, affine, device)
    if backend == "hd-bet":
        return _hd_bet(volume, affine, device)
    raise MmccdError(f"unknown brain-extraction backend {backend!r}: expected one of {', '.join(BACKENDS)}")


def brain_volume_ml(mask: np.ndarray, affine: np.ndarray) -> float:
    """Volume of the True voxels of `mask` in millilitres."""
    return float(mask.sum()) * float(abs(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0


@functools.lru_cache(maxsize=2)
def _deepbet_model(no_gpu: bool):
    deepbet = require("deepbet", "brain extraction (deepbet)")
    return deepbet.BrainExtraction(no_gpu=no_gpu)


def _deepbet(volume: np.ndarray, affine: np.ndarray, device: str) -> np.ndarray:
    bet = _deepbet_model(device == "cpu")
    _, mask, _ = bet.run(nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine))
    return np.asarray(mask.dataobj).astype(bool).reshape(volume.shape)


def hd_bet_weights() -> Path:
    """Where brainles_hd_bet keeps HD-BET's first weight file (fold 0, used by its 'fast' mode)."""
    utils = require("brainles_hd_bet.utils", "brain extraction (hd-bet)")
    return Path(utils.get_params_fname(0))


def _hd_bet(volume: np.ndarray, affine: np.ndarray, device: str) -> np.ndarray:
    weights = hd_bet_weights()
    if not weights.is_file():
        raise MmccdError(f"HD-BET's weights are not on this machine (expected {weights}); mmccd does not download "
                         "at run time: put the HD-BET parameter files there, or use --brain deepbet")
    hd_bet = require("brainles_preprocessing.brain_extraction", "brain extraction (hd-bet)")
    with tempfile.TemporaryDirectory(prefix="mmccd-hdbet-") as tmp:
        src, out, mask_path = Path(tmp) / "in.nii.gz", Path(tmp) / "out.nii.gz", Path(tmp) / "mask.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine), str(src))
        hd_bet.HDBetExtractor().extract(src, out, mask_path, mode="fast", device=device if device == "cpu" else 0,
                                        do_tta=False)
        return np.asarray(nib.load(str(mask_path)).dataobj) > 0


def stripped_mask(raw: np.ndarray, raw_affine: np.ndarray, grid: Grid) -> np.ndarray:
    """(X, Y, Z) bool on `grid`: the non-zero voxels of an already skull-stripped raw scan (X', Y', Z'),
    resampled as a fraction (trilinear) and kept at >= 0.5, holes filled: its partial-volume edge, not
    the wider non-zero halo that interpolated intensities have."""
    inside = resample((raw != 0).astype(np.float32), raw_affine, grid.shape, grid.affine, order=1) >= 0.5
    if not inside.any():
        raise DataError("the fixed image is empty on the output grid", expected="non-zero voxels",
                        found="all voxels 0", fix="check the input image")
    return ndimage.binary_fill_holes(inside)
