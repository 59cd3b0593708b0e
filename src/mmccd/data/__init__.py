"""Data: discover cases -> validate -> normalise, slice, crop -> prepared store -> torch datasets.

Stages (one module each): discovery, io, validation, preprocess, slicing, splits, store,
prepare, dataset; phantom makes the SYNTHETIC demo data set.
"""

from mmccd.data.batch import SliceBatch, collate_slices
from mmccd.data.dataset import SliceDataset, slices_from_prepared
from mmccd.data.discovery import Case, case_from_path, find_cases
from mmccd.data.io import load_nifti, save_nifti_like
from mmccd.data.phantom import make_phantom, write_phantom_dataset
from mmccd.data.prepare import PreparedCase, PrepareSummary, prepare_case, prepare_dataset
from mmccd.data.preprocess import axial_axis, crop_resize, percentile_normalise, uncrop
from mmccd.data.splits import load_or_create_splits, make_splits
from mmccd.data.store import PreparedStore
from mmccd.data.validation import ValidationResult, check_cases, validate_case

__all__ = [
    "Case", "PrepareSummary", "PreparedCase", "PreparedStore", "SliceBatch", "SliceDataset", "ValidationResult",
    "axial_axis", "case_from_path", "check_cases",
    "collate_slices", "crop_resize", "find_cases", "load_nifti", "load_or_create_splits", "make_phantom",
    "make_splits", "percentile_normalise", "prepare_case", "prepare_dataset", "save_nifti_like",
    "slices_from_prepared", "uncrop", "validate_case", "write_phantom_dataset",
]
