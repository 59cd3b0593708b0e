"""Find and read the contrasts of one raw case: NIfTI files or DICOM series folders.

A raw case is a folder whose entries are named by contrast, e.g.::

    patient01/  T1w.nii.gz  t1_gd.nii  T2/ (DICOM files)  FLAIR_ax/ (DICOM files)

An entry's contrast comes from the words of its name (split at ``_ - . +`` and spaces, any case):
FLAIR words (flair, t2f, t2flair) win over T1ce words (t1ce, t1c, t1gd, ce, gd, post), which win over
T2 (t2, t2w) and T1 (t1, t1w, t1n, mprage). Entries that name no contrast (a segmentation, a localiser)
are skipped and logged; a `layout` (contrast -> glob pattern inside the folder) replaces the guessing.

DICOM folders are converted with dcm2niix (the field's converter; its PyPI wheel ships the binary)
after pydicom has checked that they hold exactly one series.
"""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from mmccd.config import MODALITIES
from mmccd.data.io import is_nifti_name, load_nifti
from mmccd.data.raw.extra import require
from mmccd.errors import DataError

log = logging.getLogger("mmccd")

WORDS = {  # checked in this order: the first contrast with a word in the name wins
    "flair": {"flair", "t2f", "t2flair"},
    "t1ce": {"t1ce", "t1c", "t1gd", "ce", "gd", "post", "t1post", "contrast"},
    "t2": {"t2", "t2w"},
    "t1": {"t1", "t1w", "t1n", "mprage"},
}
IGNORED_WORDS = {"seg", "mask", "label", "labels"}


@dataclass
class RawImage:
    """One contrast as read from the raw case.

    data:   (X, Y, Z) float32, the file's own voxel order
    affine: (4, 4) voxel -> world (RAS mm), as nibabel reads it (for DICOM: as dcm2niix wrote it)
    source: the file or DICOM folder the user gave
    files:  the files read (one NIfTI file, or every DICOM file of the series)
    series_uid: DICOM SeriesInstanceUID, or None for NIfTI
    """

    contrast: str
    data: np.ndarray
    affine: np.ndarray
    source: Path
    files: list[Path] = field(default_factory=list)
    series_uid: str | None = None

    @property
    def kind(self) -> str:
        return "nifti" if self.series_uid is None else "dicom"


def contrast_of(name: str) -> str | None:
    """The contrast a file or folder name stands for ("T1w.nii.gz" -> "t1", "ax_FLAIR" -> "flair"), or None."""
    stem = name
    for suffix in (".nii.gz", ".nii"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    words = {w for w in re.split(r"[_\-.+\s]+", stem.lower()) if w}
    if words & IGNORED_WORDS:
        return None
    for contrast, names in WORDS.items():
        if words & names:
            return contrast
    return None


def find_contrasts(folder: str | Path, layout: Mapping[str, str] | None = None) -> dict[str, Path]:
    """contrast -> NIfTI file or DICOM folder of the raw case `folder`.

    DataError when `folder` is missing or when two entries claim one contrast."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("the raw case folder does not exist" if not folder.exists() else "not a folder",
                        file=folder, expected="a folder with one NIfTI file or DICOM folder per contrast",
                        fix="pass the case folder with --case (or a folder of case folders with --data)")
    found: dict[str, list[Path]] = {}
    if layout:
        bad = [k for k in layout if k not in MODALITIES]
        if bad:
            raise DataError(f"unknown contrast(s) in the layout: {', '.join(bad)}", file=folder,
                            expected=", ".join(MODALITIES))
        for contrast, pattern in layout.items():
            found[contrast] = sorted(p for p in folder.glob(pattern.replace("{case}", folder.name))
                                     if not p.name.startswith("."))
    else:
        for entry in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
            if not (entry.is_dir() or is_nifti_name(entry.name)):
                continue
            contrast = contrast_of(entry.name)
            if contrast is None:
                log.info("raw case %s: skipping %s (its name names no contrast)", folder.name, entry.name)
                continue
            found.setdefault(contrast, []).append(entry)
    for contrast, paths in found.items():
        if len(paths) > 1:
            raise DataError(f"several entries for the {contrast} contrast", case=folder.name, file=folder,
                            expected="one file or DICOM folder per contrast",
                            found=", ".join(p.name for p in paths),
                            fix="keep one, or pass a layout naming each contrast's file")
    return {c: found[c][0] for c in MODALITIES if found.get(c)}


def read_contrast(path: str | Path, contrast: str, case: str | None = None) -> RawImage:
    """Read one contrast: a NIfTI file, or a folder holding one DICOM series. DataError naming the file."""
    path = Path(path)
    if path.is_dir():
        return _read_dicom(path, contrast, case)
    data, img = load_nifti(path, case)
    _check_volume(data, path, case)
    return RawImage(contrast, data, np.asarray(img.affine, dtype=float), path, [path])


def _check_volume(data: np.ndarray, path: Path, case: str | None) -> None:
    if min(data.shape) < 2:
        raise DataError("the image is a single slice, not a volume", case=case, file=path,
                        expected="a 3D volume (at least 2 voxels along each axis)", found=f"shape {data.shape}",
                        fix="export the whole series (every slice) as one volume")
    if not np.isfinite(data).all():
        raise DataError("the image holds NaN or infinite values", case=case, file=path,
                        expected="finite intensities", fix="fix or re-export the image")


def dicom_series(folder: Path, case: str | None = None) -> tuple[str, list[Path]]:
    """(SeriesInstanceUID, its files) of the one DICOM series under `folder` (searched recursively).

    DataError when the folder holds no DICOM file or several series (each listed with its description)."""
    pydicom = require("pydicom", "reading DICOM")
    series: dict[str, list[Path]] = {}
    info: dict[str, str] = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SeriesNumber",
                                                                              "SeriesDescription", "Rows"])
        except Exception:  # not a DICOM file (a DICOMDIR index, notes): not part of a series
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        if not uid or "Rows" not in ds:
            continue
        series.setdefault(uid, []).append(f)
        info[uid] = f"series {getattr(ds, 'SeriesNumber', '?')} '{getattr(ds, 'SeriesDescription', '')}'"
    if not series:
        raise DataError("no DICOM image in the folder", case=case, file=folder,
                        expected="the DICOM files of one series", found="none readable by pydicom",
                        fix="point the contrast at a NIfTI file or a folder of DICOM files")
    if len(series) > 1:
        listed = "; ".join(f"{info[u]} ({len(fs)} files)" for u, fs in series.items())
        raise DataError("the DICOM folder holds several series", case=case, file=folder,
                        expected="one series per contrast folder", found=f"{len(series)}: {listed}",
                        fix="move each series into its own folder named after its contrast")
    uid = next(iter(series))
    return uid, series[uid]


def _read_dicom(folder: Path, contrast: str, case: str | None) -> RawImage:
    uid, files = dicom_series(folder, case)
    dcm2niix = require("dcm2niix", "converting DICOM to NIfTI")
    with tempfile.TemporaryDirectory(prefix="mmccd-dcm-") as tmp:
        # -b n: no JSON sidecar, -z n: no compression (read back at once), -f: fixed output name
        proc = subprocess.run([dcm2niix.bin, "-b", "n", "-z", "n", "-f", "series", "-o", tmp, str(folder)],
                              capture_output=True, text=True, check=False)
        outputs = sorted(Path(tmp).glob("*.nii"))
        if proc.returncode != 0 or not outputs:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise DataError("dcm2niix could not convert the DICOM series", case=case, file=folder,
                            expected="a convertible MR series", found=" | ".join(last) or f"exit {proc.returncode}",
                            fix="convert it yourself (dcm2niix) and point the contrast at the NIfTI file")
        if len(outputs) > 1:
            raise DataError("dcm2niix split the series into several volumes", case=case, file=folder,
                            expected="one 3D volume", found=", ".join(p.name for p in outputs),
                            fix="convert it yourself (dcm2niix) and point the contrast at the volume to use")
        data, img = load_nifti(outputs[0], case)
        affine = np.asarray(img.affine, dtype=float)
    _check_volume(data, folder, case)
    return RawImage(contrast, data, affine, folder, files, uid)


def read_case(folder: str | Path, required: Sequence[str] = MODALITIES,
              layout: Mapping[str, str] | None = None, only: Sequence[str] | None = None) -> dict[str, RawImage]:
    """Every contrast of the raw case `folder` (MODALITIES order), or those of `only` that are present.
    DataError for a required contrast that is missing (naming the folder and what it holds) and for any
    file that cannot be read."""
    folder = Path(folder)
    entries = find_contrasts(folder, layout)
    if only is not None:
        entries = {c: p for c, p in entries.items() if c in only or c in required}
    missing = [c for c in required if c not in entries]
    if missing:
        held = ", ".join(f"{p.name} ({c})" for c, p in entries.items()) or "no entry naming a contrast"
        raise DataError(f"the {', '.join(missing)} image is missing", case=folder.name, file=folder,
                        expected=f"one file or DICOM folder per contrast among {', '.join(required)}",
                        found=held, fix="add it, name it after its contrast (e.g. FLAIR.nii.gz), pass a layout, "
                                        "or ask for fewer contrasts (--contrasts)")
    return {c: read_contrast(p, c, folder.name) for c, p in entries.items()}


def nifti_image(raw: RawImage) -> nib.Nifti1Image:
    """The raw contrast as an in-memory NIfTI image (float32)."""
    return nib.Nifti1Image(raw.data, raw.affine)
