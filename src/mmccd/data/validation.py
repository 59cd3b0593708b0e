"""Check a case before using it: one DataError per problem, naming the case, the file, what was
expected and what was found.

Two levels, so that preparing a data set reads each volume once:

- header level (`validate_case(..., read_data=False)`): missing / duplicate / unreadable /
  non-NIfTI / non-3D files, zero-sized, non-grey-level or with an affine that is not finite and invertible
  (`io.load_header`); a single sagittal or coronal slice; shape, voxel size and orientation across
  modalities and segmentation;
- voxel level (`check_arrays`): NaN/Inf, empty or constant volumes, only negative intensities (an inverted
  scaling), no zero background (not skull-stripped), no anatomy (pure noise), segmentation labels.

`prepare_case` runs both on the arrays it has loaded anyway (`validate_loaded`).
A header origin (translation) that differs while the voxel grid is identical is only a warning:
real BraTS files have it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from mmccd.data.discovery import SEG, Case
from mmccd.data.io import load_header, load_nifti, scaling, spatial_shape
from mmccd.data.preprocess import axial_axis
from mmccd.errors import DataError

log = logging.getLogger("mmccd")

SEG_LABELS = {"brats2021": (0, 1, 2, 4), "brats2023": (0, 1, 2, 3)}
ANY_LABELS = (0, 1, 2, 3, 4)  # custom and single-file naming
ZOOM_TOL = 1e-3  # mm
DIRECTION_TOL = 1e-3
ORIGIN_TOL = 1e-2  # mm
MIN_BACKGROUND = 0.01  # fraction of zero voxels below which an image is not skull-stripped (BraTS: 0.81-0.88)
# correlation of neighbouring brain voxels below which an image holds no anatomy; measured: real BraTS 2018 and
# 2023 volumes 0.85-0.96, the SYNTHETIC phantom 0.80-0.92, i.i.d. noise within 0.02 of 0
MIN_NEIGHBOUR_CORRELATION = 0.3


@dataclass
class ValidationResult:
    errors: list[DataError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def extend(self, other: ValidationResult) -> None:
        self.errors += other.errors
        self.warnings += other.warnings


def allowed_labels(naming: str) -> tuple[int, ...]:
    return SEG_LABELS.get(naming, ANY_LABELS)


def check_files(case: Case, modalities: Sequence[str], require_seg: bool) -> list[DataError]:
    """Discovery problems, requested modalities and segmentation that are missing (not listed one by one when
    discovery found no file at all: its problem says why)."""
    errors = [DataError(p, case=case.case_id, file=case.root) for p in case.problems]
    if errors and not case.files:
        return errors
    duplicated = " ".join(case.problems)
    present = ", ".join(sorted(case.files)) or "none"
    for m in modalities:
        if m not in case.images and f"for {m}:" not in duplicated:
            errors.append(DataError(f"the {m} image is missing", case=case.case_id, file=case.root,
                                    expected=f"a {m} file ({_expected_name(case, m)})", found=f"modalities {present}",
                                    fix="add the file, pass a layout for other names, or skip the case"))
    if require_seg and case.seg is None and f"for {SEG}:" not in duplicated:
        errors.append(DataError("the segmentation is missing", case=case.case_id, file=case.root,
                                expected=f"a label map ({_expected_name(case, SEG)})", found=f"modalities {present}"))
    return errors


def _expected_name(case: Case, key: str) -> str:
    if case.naming == "brats2023":
        inv = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", SEG: SEG}
        return f"{case.case_id}-{inv[key]}.nii.gz"
    if case.naming == "brats2021":
        return f"{case.case_id}_{key}.nii.gz"
    return "as given by the layout"


def check_geometry(case: Case, images: Mapping[str, nib.Nifti1Image], files: Mapping[str, Path]) -> ValidationResult:
    """Same shape, voxel size and orientation for every image (keys: modalities and "seg").

    The reference is the first key; a different origin alone is a warning."""
    result = ValidationResult()
    if not images:
        return result
    ref_key = next(iter(images))
    ref = images[ref_key]
    ref_shape = spatial_shape(ref.shape)
    thin = _thin_in_plane_axis(ref)
    if thin is not None:
        result.errors.append(DataError(
            "the image is a single sagittal or coronal slice", case=case.case_id, file=files[ref_key],
            expected="axial slices of at least 2 x 2 voxels (one axial slice is accepted)",
            found=f"shape {ref_shape}, axes {''.join(nib.aff2axcodes(ref.affine))}: 1 voxel along in-plane axis {thin}",
            fix="mmccd works on axial slices: give it a 3D volume or an axial slice"))
        return result
    ref_zooms = np.asarray(ref.header.get_zooms()[:3], dtype=float)
    ref_dir = ref.affine[:3, :3] / np.linalg.norm(ref.affine[:3, :3], axis=0)
    for key, img in images.items():
        if key == ref_key:
            continue
        f = files[key]
        shape = spatial_shape(img.shape)
        if shape != ref_shape:
            result.errors.append(DataError(f"the {key} volume has another shape than {ref_key}", case=case.case_id,
                                           file=f, expected=f"shape {ref_shape} (as {files[ref_key].name})",
                                           found=f"shape {shape}", fix="resample all images of a case to one grid"))
            continue
        zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
        if not np.allclose(zooms, ref_zooms, atol=ZOOM_TOL):
            result.errors.append(DataError(f"the {key} volume has another voxel size than {ref_key}", case=case.case_id,
                                           file=f, expected=f"voxel size {_mm(ref_zooms)} mm", found=f"{_mm(zooms)} mm",
                                           fix="resample all images of a case to one grid"))
            continue
        direction = img.affine[:3, :3] / np.linalg.norm(img.affine[:3, :3], axis=0)
        if not np.allclose(direction, ref_dir, atol=DIRECTION_TOL):
            result.errors.append(DataError(
                f"the {key} volume has another orientation than {ref_key}", case=case.case_id, file=f,
                expected=f"axes {''.join(nib.aff2axcodes(ref.affine))} (affine rotation as {files[ref_key].name})",
                found=f"axes {''.join(nib.aff2axcodes(img.affine))}, rotation {np.round(direction, 3).tolist()}",
                fix="reorient / co-register the images of a case to one grid"))
            continue
        shift = np.abs(img.affine[:3, 3] - ref.affine[:3, 3]).max()
        if shift > ORIGIN_TOL:
            result.warnings.append(f"case {case.case_id}: {f.name} has a header origin {shift:.2f} mm away from "
                                   f"{files[ref_key].name} on the same voxel grid; the voxel grids are used as they are")
    return result


def _thin_in_plane_axis(img: nib.Nifti1Image) -> int | None:
    """The voxel axis of size 1 among the two that are not axial (slices would be lines), or None."""
    axis = axial_axis(img.affine)
    shape = spatial_shape(img.shape)
    return next((a for a in range(3) if a != axis and shape[a] < 2), None)


def _mm(zooms: np.ndarray) -> str:
    """(1.0, 1.0, 2.0) -> '1 x 1 x 2' (numpy 2 prints np.float64(1.0) inside tuples)."""
    return " x ".join(f"{float(z):.4g}" for z in zooms)


def check_arrays(case: Case, arrays: Mapping[str, np.ndarray], files: Mapping[str, Path],
                 images: Mapping[str, nib.Nifti1Image] | None = None) -> list[DataError]:
    """Voxel-level checks: NaN/Inf, empty, constant, inverted (only negative), not skull-stripped (no zero
    background) or anatomy-free (pure noise) images; segmentation labels for key "seg". `images` (the headers,
    optional) lets a message name an inverting scl_slope."""
    errors = []
    for key, data in arrays.items():
        f = files[key]
        lo, hi = float(data.min()), float(data.max())  # NaN and +-inf propagate: one pass each
        if not (np.isfinite(lo) and np.isfinite(hi)):
            n = int(data.size - np.count_nonzero(np.isfinite(data)))
            errors.append(DataError(f"the {key} volume holds NaN or infinite values", case=case.case_id, file=f,
                                    expected="finite intensities", found=f"{n} non-finite voxel(s)",
                                    fix="fix or re-export the image"))
            continue
        if key == SEG:
            errors += _check_labels(case, data, f)
            continue
        if lo == hi == 0:
            errors.append(DataError(f"the {key} volume is empty", case=case.case_id, file=f,
                                    expected="a skull-stripped brain (non-zero voxels)", found="all voxels 0"))
        elif lo == hi:
            errors.append(DataError(f"the {key} volume is constant", case=case.case_id, file=f,
                                    expected="an image with contrast", found=f"every voxel {lo:g}"))
        elif hi <= 0:
            slope = scaling(images[key])[0] if images and key in images else None
            why = f" (the header's scl_slope is {slope:g}: it inverts the stored values)" if slope and slope < 0 else ""
            errors.append(DataError(f"the {key} volume has only negative intensities", case=case.case_id, file=f,
                                    expected="MRI intensities >= 0 (background 0)",
                                    found=f"intensities {lo:g} .. {hi + 0.0:g}{why}",
                                    fix="re-export the image with a positive intensity scaling (or negate it)"))
        elif (background := 1 - np.count_nonzero(data) / data.size) < MIN_BACKGROUND:
            errors.append(DataError(f"the {key} volume has no background", case=case.case_id, file=f,
                                    expected=f"a skull-stripped brain with background exactly 0 (at least "
                                             f"{MIN_BACKGROUND:.0%} of the voxels)",
                                    found=f"{background:.2%} of the voxels 0, intensities {lo:g} .. {hi:g}",
                                    fix="skull-strip and co-register the raw scan first: `mmccd preprocess --case RAW_CASE --out CASE_DIR` "
                                        "(or `mmccd score --preprocess`); an intensity offset "
                                        "(scl_inter) also hides the background"))
        elif (r := neighbour_correlation(data)) is not None and r < MIN_NEIGHBOUR_CORRELATION:
            errors.append(DataError(f"the {key} volume looks like pure noise (no anatomy)", case=case.case_id, file=f,
                                    expected=f"neighbouring brain voxels correlated "
                                             f"(r >= {MIN_NEIGHBOUR_CORRELATION:g}; BraTS MRI: 0.85-0.96)",
                                    found=f"r = {r:.3f}",
                                    fix="check that the file is the intended image (not a noise map, not read "
                                        "with the wrong data type or byte order)"))
    return errors


def neighbour_correlation(data: np.ndarray, planes: int = 16) -> float | None:
    """Pearson correlation of the pairs of neighbouring voxels that are both non-zero, along the first two axes
    of up to `planes` evenly spaced planes of the third (a few ms on a BraTS volume); None under 200 pairs.

    data: (X, Y, Z). Anatomy is smooth at the voxel scale (r near 1); independent noise gives r near 0."""
    index = np.unique(np.linspace(0, data.shape[2] - 1, min(planes, data.shape[2])).round().astype(int))
    sample = np.asarray(data[:, :, index], dtype=np.float64)
    firsts, seconds = [], []
    for a, b in ((sample[:-1], sample[1:]), (sample[:, :-1], sample[:, 1:])):
        both = (a != 0) & (b != 0)
        firsts.append(a[both])
        seconds.append(b[both])
    x, y = np.concatenate(firsts), np.concatenate(seconds)
    if x.size < 200:
        return None
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
    return float(np.dot(x, y) / denominator) if denominator > 0 else None


def _check_labels(case: Case, seg: np.ndarray, f: Path) -> list[DataError]:
    allowed = allowed_labels(case.naming)
    labelled = seg[seg != 0]  # tumour voxels are few: sort only those
    values = np.unique(labelled)
    if labelled.size < seg.size:
        values = np.concatenate([np.zeros(1, values.dtype), values])
    fractional = values != np.round(values)
    if fractional.any():
        frac = [float(v) for v in values[fractional][:5]]
        n = int(np.count_nonzero(np.isin(labelled, values[fractional])))
        return [DataError("the segmentation holds non-integer values", case=case.case_id, file=f,
                          expected=f"integer labels {set(allowed)} (integral floats such as 2.0 are accepted)",
                          found=f"{n} voxel(s) with values such as {frac}",
                          fix="a label map resampled with linear interpolation: resample it with nearest-neighbour "
                              "interpolation (or round it) and save it as integers")]
    bad = sorted({int(v) for v in values} - set(allowed))
    if bad:
        return [DataError("the segmentation holds unexpected labels", case=case.case_id, file=f,
                          expected=f"labels {set(allowed)} ({case.naming} naming)", found=f"labels {bad}",
                          fix="map the labels to BraTS conventions (0 background, 1 necrotic, 2 oedema, "
                              "4 (2023: 3) enhancing)")]
    return []


def validate_loaded(case: Case, images: Mapping[str, nib.Nifti1Image], arrays: Mapping[str, np.ndarray],
                    modalities: Sequence[str], require_seg: bool) -> ValidationResult:
    """All checks on volumes already loaded (keys: modalities and optionally "seg")."""
    result = ValidationResult(check_files(case, modalities, require_seg))
    files = case.files
    result.extend(check_geometry(case, images, files))
    if not result.errors:
        result.errors += check_arrays(case, arrays, files, images)
    if not result.errors:
        warning = skull_stripping_warning(images, arrays, files)
        if warning:
            result.warnings.append(warning)
    return result


def skull_stripping_warning(images: Mapping[str, nib.Nifti1Image], arrays: Mapping[str, np.ndarray],
                            files: Mapping[str, Path]) -> str | None:
    """A warning naming the file when a case does not look skull-stripped (one contrast is checked: T1 when
    present; 0.1-0.3 s), pointing at `mmccd preprocess`; None when it looks like BraTS."""
    from mmccd.data.raw.skull import looks_skull_stripped  # numpy and scipy only

    key = next((m for m in ("t1", "flair", "t2", "t1ce") if m in arrays), None)
    if key is None:
        return None
    return looks_skull_stripped(np.asarray(arrays[key]), images[key].affine, files[key])


def validate_case(case: Case, modalities: Sequence[str], require_seg: bool, read_data: bool = True) -> ValidationResult:
    """Check `case` for the requested `modalities` (and a segmentation if `require_seg`).

    read_data=False checks headers only (cheap); True also reads the voxels (NaN, empty, labels, truncation)."""
    result = ValidationResult(check_files(case, modalities, require_seg))
    files = case.files
    images: dict[str, nib.Nifti1Image] = {}
    for key, f in files.items():
        try:
            if read_data:
                data, img = load_nifti(f, case.case_id)
                result.errors += check_arrays(case, {key: data}, files, {key: img})
                del data
            else:
                img = load_header(f, case.case_id)
            images[key] = img
        except DataError as exc:
            result.errors.append(exc)
    result.extend(check_geometry(case, images, files))
    return result


def check_cases(cases: Sequence[Case], modalities: Sequence[str], require_seg: bool, on_error: str = "skip",
                read_data: bool = True) -> tuple[list[Case], list[tuple[str, str]]]:
    """Validate every case; returns (good cases, [(case_id, reason)] skipped).

    Every problem is logged before anything is raised; on_error="stop" then raises the first DataError."""
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', not {on_error!r}")
    good, skipped, first = [], [], None
    for case in cases:
        result = validate_case(case, modalities, require_seg, read_data=read_data)
        for w in result.warnings:
            log.warning("%s", w)
        if result.errors:
            for e in result.errors:
                log.error("%s", e)
            skipped.append((case.case_id, "; ".join(str(e) for e in result.errors)))
            first = first or result.errors[0]
        else:
            good.append(case)
    if first is not None and on_error == "stop":
        raise first
    return good, skipped
