"""A preprocessed case on disk: its `preprocess.json` record, and maps back to the raw scan's grid.

A case folder written by `mmccd preprocess` (see pipeline.py)::

    <case>/<case>_{t1,t1ce,t2,flair}.nii.gz   masked contrasts on the output grid (the BraTS layout)
    <case>/<case>_brainmask.nii.gz            the brain mask (uint8) on the same grid
    <case>/<case>_qc.png                      QC montage
    <case>/preprocess.json                    this record (written last: its presence marks the case done)

Record keys: format, case_id, fixed, grid {shape, affine, axcodes, spacing_mm}, contrasts {c: {source,
kind, files, series_uid, raw_grid {shape, affine}, fixed_to_raw (4 x 4, RAS world: output world -> that
raw scan's world; identity for the fixed contrast), similarity_nmi, output}}, brain {backend,
volume_ml, plausible, mask}, registration {library, method, init}, settings, versions, seconds, qc.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mmccd.data.io import save_nifti_like
from mmccd.data.raw.geometry import Grid, resample
from mmccd.errors import DataError

RECORD = "preprocess.json"
FORMAT = "mmccd-preprocess/1"


def read_record(case_dir: str | Path) -> dict[str, Any] | None:
    """The record of a finished case folder, or None when there is none (not preprocessed, or unfinished)."""
    path = Path(case_dir) / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError("the preprocessing record is unreadable", file=path, found=str(exc),
                        fix="preprocess the case again (--overwrite)") from None
    if record.get("format") != FORMAT:
        raise DataError("not a preprocessing record of this version", file=path, expected=FORMAT,
                        found=str(record.get("format")), fix="preprocess the case again (--overwrite)")
    return record


def raw_reference(grid: dict[str, Any]) -> nib.Nifti1Image:
    """A NIfTI image on a recorded raw grid {shape, affine}, to save volumes like (`save_nifti_like`).

    Its voxels are a zero-stride view (no memory); sform and qform both hold the affine (scanner code)."""
    shape = tuple(int(s) for s in grid["shape"])
    affine = np.asarray(grid["affine"], dtype=float)
    img = nib.Nifti1Image(np.broadcast_to(np.uint8(0), shape), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img


@dataclass(frozen=True)
class PreprocessedCase:
    """A case folder written by `mmccd preprocess`: paths on the output grid, and the way back to raw grids."""

    root: Path
    record: dict[str, Any]

    @classmethod
    def load(cls, case_dir: str | Path) -> PreprocessedCase:
        """Open a finished case folder; DataError when it has no (readable) preprocess.json."""
        record = read_record(case_dir)
        if record is None:
            raise DataError("not a preprocessed case folder", file=case_dir, expected=f"a {RECORD} file",
                            fix="run `mmccd preprocess --case RAW_CASE --out CASE_DIR` first")
        return cls(Path(case_dir), record)

    @property
    def case_id(self) -> str:
        return str(self.record["case_id"])

    @property
    def contrasts(self) -> list[str]:
        return list(self.record["contrasts"])

    @property
    def grid(self) -> Grid:
        """The output grid (1 mm, voxel axes L, P, S)."""
        g = self.record["grid"]
        return Grid(tuple(int(s) for s in g["shape"]), np.asarray(g["affine"], dtype=float))

    def image_path(self, contrast: str) -> Path:
        return self.root / self._entry(contrast)["output"]

    def raw_source(self, contrast: str) -> Path:
        """The file or DICOM folder the user gave for `contrast`."""
        return Path(self._entry(contrast)["source"])

    def raw_image(self, contrast: str) -> nib.Nifti1Image:
        """A NIfTI image on the raw grid of `contrast` (for a DICOM series: the grid dcm2niix converts it to),
        to save maps like: ``save_nifti_like(case.to_raw(m, c), case.raw_image(c), path)``."""
        return raw_reference(self._entry(contrast)["raw_grid"])

    def fixed_to_raw(self, contrast: str) -> np.ndarray:
        """4 x 4 world transform (RAS mm): output-grid world -> the raw scan of `contrast`."""
        return np.asarray(self._entry(contrast)["fixed_to_raw"], dtype=float)

    def to_raw(self, volume: np.ndarray, contrast: str, order: int | None = None) -> np.ndarray:
        """`volume` (X, Y, Z) on the output grid mapped onto the raw grid of `contrast` (X', Y', Z').

        Each raw voxel centre is sent through the inverse of the co-registration into the output grid
        and sampled there: trilinear (order 1) for float volumes, nearest (order 0) for bool / integer
        ones (masks, labels) unless `order` says otherwise; 0 outside the output grid. Returns float32
        for order 1, the input dtype for order 0."""
        grid = self.grid
        volume = np.asarray(volume)
        if volume.shape != grid.shape:
            raise ValueError(f"volume shape {volume.shape} is not the preprocessed grid {grid.shape}")
        if order is None:
            order = 0 if volume.dtype == bool or np.issubdtype(volume.dtype, np.integer) else 1
        raw = self._entry(contrast)["raw_grid"]
        out = resample(volume.astype(np.uint8) if volume.dtype == bool else volume, grid.affine,
                       tuple(raw["shape"]), np.asarray(raw["affine"], dtype=float),
                       np.linalg.inv(self.fixed_to_raw(contrast)), order=order)
        return out.astype(bool) if volume.dtype == bool else out

    def save_raw(self, volume: np.ndarray, contrast: str, path: str | Path, order: int | None = None) -> Path:
        """Write `volume` (output grid) as NIfTI on the raw grid of `contrast` (atomically)."""
        save_nifti_like(self.to_raw(volume, contrast, order), self.raw_image(contrast), path)
        return Path(path)

    def _entry(self, contrast: str) -> dict[str, Any]:
        entry = self.record["contrasts"].get(contrast)
        if entry is None:
            raise DataError(f"the case has no {contrast} image", case=self.case_id, file=self.root / RECORD,
                            expected=f"one of {', '.join(self.contrasts)}", found=contrast)
        return entry
