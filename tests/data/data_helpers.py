"""Small synthetic NIfTI cases for the data tests (24 x 24 x 16 voxels: fast to write and read).

Imported by the tests in this folder as `data_helpers` (pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (24, 24, 16)
SUFFIX = {"brats2021": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}),
          "brats2023": ("-", {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"})}


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def volumes(shape=SHAPE, seed=0) -> dict[str, np.ndarray]:
    """An ellipsoidal 'brain' (background 0) with a distinct smooth pattern per modality, and a tumour blob
    (labels 1 core, 2 oedema, 4 rim) in the middle third of the axial axis."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    brain = x**2 + y**2 + z**2 < 0.8
    out = {}
    for k, m in enumerate(("t1", "t1ce", "t2", "flair")):
        v = 100 + 50 * (k + 1) * (x + 1) + 20 * y + rng.normal(0, 1, shape)
        out[m] = np.where(brain, v, 0).astype(np.float32)
    d = (x - 0.3) ** 2 + y**2 + z**2
    seg = np.zeros(shape, np.uint8)
    seg[(d < 0.12) & brain] = 2
    seg[(d < 0.05) & brain] = 4
    seg[(d < 0.02) & brain] = 1
    out["seg"] = seg
    return out


def write_case(root: Path, case_id: str, naming: str = "brats2021", ext: str = ".nii.gz",
               keys=("t1", "t1ce", "t2", "flair", "seg"), shape=SHAPE, seed=0) -> Path:
    sep, suffix = SUFFIX[naming]
    vols = volumes(shape, seed)
    if naming == "brats2023":
        vols["seg"] = np.where(vols["seg"] == 4, 3, vols["seg"]).astype(np.uint8)
    folder = root / case_id
    for key in keys:
        write_nifti(folder / f"{case_id}{sep}{suffix[key]}{ext}", vols[key])
    return folder
