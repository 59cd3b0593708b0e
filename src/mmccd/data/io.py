"""NIfTI reading with errors a user can act on, and writing maps on an input's voxel grid (atomically)."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from mmccd.atomic import atomic_write
from mmccd.errors import DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti_name(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """'x_t1.nii.gz' -> 'x_t1'."""
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# ---------------------------------------------------------------- NIfTI


def _sniff(path: Path, case_id: str | None) -> None:
    """Cheap check of the first bytes: a gzip file for .nii.gz, a NIfTI-1/2 header for .nii."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except PermissionError:
        raise DataError("cannot read the file (permission denied)", case=case_id, file=path,
                        fix="give the current user read permission (chmod a+r)") from None
    except IsADirectoryError:
        raise DataError("is a folder, not a NIfTI file", case=case_id, file=path) from None
    if not head:
        raise DataError("the file is empty", case=case_id, file=path, fix="download or export it again")
    if path.name.lower().endswith(".gz"):
        if head[:2] != b"\x1f\x8b":
            raise DataError("not a gzip-compressed NIfTI file", case=case_id, file=path,
                            expected="a .nii.gz file (gzip)", found=f"first bytes {head[:2]!r}",
                            fix="re-export the image as NIfTI, or fix the file name")
        try:  # the first bytes inside: a gzip of something else (DICOM, an HTML error page) is not NIfTI
            with gzip.open(path, "rb") as f:
                inner = f.read(4)
        except (EOFError, OSError, zlib.error):
            return  # truncated or corrupt: nibabel's read says so
        if len(inner) == 4 and not _nifti_sizeof_hdr(inner):
            raise DataError("a gzip file that does not hold a NIfTI image", case=case_id, file=path,
                            expected="a NIfTI-1/2 header inside the gzip (sizeof_hdr 348 or 540)",
                            found=f"first bytes {inner!r} after decompression",
                            fix="re-export the image as NIfTI (e.g. with dcm2niix), or remove it")
        return
    if not _nifti_sizeof_hdr(head):
        raise DataError("not a NIfTI file", case=case_id, file=path,
                        expected="a NIfTI-1/2 header (sizeof_hdr 348 or 540)", found=f"first bytes {head!r}",
                        fix="re-export the image as NIfTI (e.g. with dcm2niix), or remove it")


def _nifti_sizeof_hdr(head: bytes) -> bool:
    """The first 4 bytes are a NIfTI-1 or NIfTI-2 sizeof_hdr (348 or 540) in either byte order."""
    return any(int.from_bytes(head, order) in (348, 540) for order in ("little", "big"))


def spatial_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop trailing singleton dimensions beyond the third: (H, W, D, 1) -> (H, W, D)."""
    shape = tuple(shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def load_header(path: str | Path, case_id: str | None = None) -> nib.Nifti1Image:
    """Open a NIfTI image without reading its voxels (nibabel proxy); checks the name, bytes and header.

    Raises DataError for a missing, unreadable or non-NIfTI file (a gzip of something else included) and for an
    image that is not 3D, has no voxels, holds no grey levels (RGB, complex) or whose affine is not finite and
    invertible."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise DataError("the file is a broken symbolic link", case=case_id, file=path,
                        expected="a link to an existing file", found=f"a link to {os.readlink(path)}",
                        fix="fetch the data it points to (e.g. `datalad get` / `git annex get`) or replace the link")
    if not path.exists():
        raise DataError("file not found", case=case_id, file=path)
    _sniff(path, case_id)
    try:
        img = nib.load(str(path))
    except PermissionError:
        raise DataError("cannot read the file (permission denied)", case=case_id, file=path,
                        fix="give the current user read permission (chmod a+r)") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError("the file is truncated or corrupt", case=case_id, file=path, found=str(exc) or type(exc).__name__,
                        fix="download or export it again") from None
    except Exception as exc:  # nibabel raises several types for a bad header
        raise DataError("not a readable NIfTI image", case=case_id, file=path, found=f"{type(exc).__name__}: {exc}",
                        fix="re-export the image as NIfTI") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError("not a NIfTI image", case=case_id, file=path, found=type(img).__name__)
    shape = spatial_shape(img.shape)
    if len(shape) != 3:
        raise DataError("the image is not a 3D volume", case=case_id, file=path,
                        expected="3 dimensions (a 4th of size 1 is accepted)", found=f"shape {tuple(img.shape)}",
                        fix="split 4D series into 3D volumes; 2D slices are not supported")
    if 0 in shape:
        raise DataError("the image has no voxels", case=case_id, file=path,
                        expected="at least one voxel along each axis", found=f"shape {tuple(img.shape)}",
                        fix="export the image again")
    _check_voxel_type(img, path, case_id)
    _check_affine(img, path, case_id)
    return img


def _check_voxel_type(img: nib.Nifti1Image, path: Path, case_id: str | None) -> None:
    """One real number per voxel: RGB (a screenshot / overlay export) and complex (raw k-space recon) are refused."""
    dtype = img.header.get_data_dtype()
    if dtype.fields is not None or np.issubdtype(dtype, np.complexfloating) or dtype.kind not in "biuf":
        kind = "RGB(A) colour" if dtype.fields is not None else "complex" if dtype.kind == "c" else str(dtype)
        raise DataError("the voxels are not grey levels", case=case_id, file=path,
                        expected="one real intensity per voxel (integer or float)", found=f"{kind} voxels ({dtype})",
                        fix="export a grey-level image (for complex data, its magnitude)")


def _check_affine(img: nib.Nifti1Image, path: Path, case_id: str | None) -> None:
    """The voxel-to-world matrix must be finite and invertible: orientation, axial axis and the map's grid use it."""
    affine = np.asarray(img.affine, dtype=float)
    header = img.header
    source = ("sform" if header["sform_code"] > 0 else "qform" if header["qform_code"] > 0
              else "pixdim (no sform or qform)")
    fix = (f"repair the header's {source.split()[0]} (e.g. with nibabel, set the affine of another image of the "
           "case) or export the image again")
    if not np.all(np.isfinite(affine)):
        raise DataError("the header's affine (voxel-to-world matrix) holds NaN or infinite values", case=case_id,
                        file=path, expected="a finite, invertible affine", found=f"{source} {_rows(affine)}", fix=fix)
    rotation_zoom = affine[:3, :3]
    scale = np.prod(np.linalg.norm(rotation_zoom, axis=0))
    if not abs(np.linalg.det(rotation_zoom)) > 1e-6 * scale:  # a zero or repeated column: not a 3D grid
        raise DataError("the header's affine (voxel-to-world matrix) is not invertible", case=case_id, file=path,
                        expected="a finite, invertible affine (three independent axes of non-zero voxel size)",
                        found=f"{source} {_rows(affine)}", fix=fix)


def _rows(affine: np.ndarray) -> str:
    """The first three rows, compactly: [[1, 0, 0, -90], [0, 1, 0, -126], [0, 0, 0, -72]]."""
    return "[" + ", ".join("[" + ", ".join(f"{float(v):.4g}" for v in row) + "]" for row in affine[:3]) + "]"


def load_nifti(path: str | Path, case_id: str | None = None,
               keep_integers: bool = False) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read a 3D NIfTI volume.

    Returns (data, img): data (X, Y, Z) float32 in the file's voxel order (scaling applied), img the
    nibabel image (header + affine; its voxels are not cached). keep_integers: a file storing integers
    without intensity scaling (label maps) is returned in its own integer type, skipping the float
    conversion. A trailing singleton 4th dimension is squeezed. Raises DataError for a missing,
    unreadable, truncated, non-NIfTI or non-3D file."""
    path = Path(path)
    img = load_header(path, case_id)
    try:
        if keep_integers and _unscaled_integers(img):
            data = np.asarray(img.dataobj)
        else:
            data = np.asarray(img.get_fdata(dtype=np.float32, caching="unchanged"), dtype=np.float32)
    except PermissionError:
        raise DataError("cannot read the file (permission denied)", case=case_id, file=path,
                        fix="give the current user read permission (chmod a+r)") from None
    except MemoryError:
        raise
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError("Expected N bytes ...")
        raise DataError("the voxel data are truncated or corrupt", case=case_id, file=path,
                        found=f"{type(exc).__name__}: {exc}", fix="download or export the file again") from None
    return data.reshape(spatial_shape(data.shape)), img


def _unscaled_integers(img: nib.Nifti1Image) -> bool:
    """The file stores integers and applies no intensity scaling (slope 1 or unset, intercept 0 or unset)."""
    if not np.issubdtype(img.header.get_data_dtype(), np.integer):
        return False
    slope, inter = scaling(img)
    return slope in (None, 1.0) and inter in (None, 0.0)


def scaling(img: nib.Nifti1Image) -> tuple[float | None, float | None]:
    """(scl_slope, scl_inter) of a loaded file: nibabel keeps them on the voxel proxy (`img.header` of a loaded
    image reports (None, None)); None where unset."""
    slope, inter = getattr(img.dataobj, "slope", None), getattr(img.dataobj, "inter", None)
    if slope is None and inter is None:
        slope, inter = img.header.get_slope_inter()
    return slope, inter


def save_nifti_like(array: np.ndarray, reference_img: nib.Nifti1Image, path: str | Path) -> None:
    """Write `array` (the reference's 3D voxel grid) as NIfTI with the reference's affine and header.

    The stored type follows `array`: bool/uint8 -> uint8, integers -> int16/int32, floats -> float32
    (no intensity scaling). Written atomically."""
    array = np.asarray(array)
    ref_shape = spatial_shape(reference_img.shape)
    if array.shape != ref_shape:
        raise ValueError(f"array shape {array.shape} differs from the reference grid {ref_shape}")
    if array.dtype == bool or array.dtype == np.uint8:
        array, dtype = array.astype(np.uint8), np.uint8
    elif np.issubdtype(array.dtype, np.integer):
        dtype = np.int16 if np.abs(array).max(initial=0) < 2**15 else np.int32
        array = array.astype(dtype)
    else:
        array, dtype = array.astype(np.float32), np.float32
    header = reference_img.header.copy()
    img = type(reference_img)(array, reference_img.affine, header=header)
    img.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, 0
    with atomic_write(path) as tmp:
        nib.save(img, str(tmp))
