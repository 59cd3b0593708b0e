"""Helpers for the raw-preprocessing tests: tiny synthetic DICOM series and the real-data skips.

Imported by the tests in this folder as `raw_helpers` (pytest puts this folder on sys.path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mmccd.paths import real_data_dir, unlabeled_data_dir

DATA = real_data_dir()
UNLABELED = unlabeled_data_dir()
HAS_SITK = importlib.util.find_spec("SimpleITK") is not None
HAS_DEEPBET = importlib.util.find_spec("deepbet") is not None
HAS_DICOM = importlib.util.find_spec("pydicom") is not None and importlib.util.find_spec("dcm2niix") is not None

needs_data = pytest.mark.skipif(DATA is None, reason="real BraTS data not present (../shared/data/brats or $MMCCD_REAL_DATA)")
needs_sitk = pytest.mark.skipif(not HAS_SITK, reason="SimpleITK not installed: pip install 'mmccd[preprocess]'")
needs_deepbet = pytest.mark.skipif(not HAS_DEEPBET, reason="deepbet not installed: pip install 'mmccd[preprocess]'")
needs_dicom = pytest.mark.skipif(not HAS_DICOM, reason="pydicom / dcm2niix not installed: pip install 'mmccd[preprocess]'")


def first_case() -> Path:
    return sorted(p for p in DATA.iterdir() if p.is_dir())[0]


def write_dicom_series(folder: Path, volume: np.ndarray, spacing=(1.0, 1.0, 2.0), series_number: int = 1,
                       description: str = "t1", series_uid: str | None = None, study_uid: str | None = None) -> str:
    """Write `volume` (X columns, Y rows, Z slices) as one axial MR series of uint16 slices in `folder`;
    returns its SeriesInstanceUID. Patient axes: columns along +x (L), rows along +y (P), slices along +z."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or "1.2.826.0.1.3680043.8.498.1"
    vol = np.clip(volume, 0, 65535).astype(np.uint16)
    for k in range(vol.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientName, ds.PatientID = "MR", "Synthetic^Test", "SYN0001"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, study_uid + ".9"
        ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = series_number, description, k + 1
        ds.StudyDate, ds.SeriesDate, ds.StudyTime, ds.SeriesTime, ds.AcquisitionTime = ("20240101",) * 2 + ("120000",) * 3
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(k * spacing[2])]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing, column spacing
        ds.SliceThickness, ds.SpacingBetweenSlices = float(spacing[2]), float(spacing[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.EchoTime, ds.RepetitionTime, ds.MagneticFieldStrength = 10.0, 500.0, 3.0
        ds.PixelData = np.ascontiguousarray(vol[:, :, k].T).tobytes()  # rows x columns
        ds.save_as(folder / f"{series_number:03d}_{k:03d}.dcm", enforce_file_format=True)
    return series_uid


RAW_NAMES = {"t1": "T1w.nii.gz", "t1ce": "t1_GD.nii.gz", "t2": "T2_tse.nii.gz", "flair": "AX_FLAIR.nii.gz"}
TEST_CASE = "Brats18_TCIA01_201_1"  # BraTS aligns its contrasts within 0.12 mm of the MI optimum here (docs/preprocess.md)


def real_case(name: str = TEST_CASE) -> Path:
    """A real BraTS case folder: `name` when present, else the first one."""
    folder = DATA / name
    return folder if folder.is_dir() else first_case()


def load_brats(folder: Path, contrasts=("t1", "t1ce", "t2", "flair", "seg")):
    """({contrast: (X, Y, Z) float32}, affine) of a BraTS 2017-2021-named case folder."""
    import nibabel as nib

    vols, affine = {}, None
    for c in contrasts:
        img = nib.load(str(folder / f"{folder.name}_{c}.nii.gz"))
        vols[c], affine = img.get_fdata(dtype=np.float32), img.affine
    return vols, affine


def write_rawlike(folder: Path, rl, names=RAW_NAMES) -> Path:
    """Save a RawLikeCase's images into `folder` under hospital-like names; returns the folder."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    for c, img in rl.images.items():
        nib.save(img, str(folder / names[c]))
    return folder
