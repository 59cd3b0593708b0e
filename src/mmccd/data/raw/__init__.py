"""Raw scans -> BraTS-like cases (`mmccd preprocess`), and the way back to the raw grid.

Modules, one concept each, in the order a case goes through them:

- reading:   find a raw case's contrasts, read NIfTI files and DICOM series (dcm2niix)
- geometry:  voxel grids, world transforms, resampling (numpy / scipy)
- register:  rigid co-registration (SimpleITK) and the similarity check
- brain:     brain extraction (deepbet; HD-BET where its weights are present; none)
- qc:        the QC montage
- record:    preprocess.json and `PreprocessedCase.to_raw` (maps back onto a raw grid)
- pipeline:  one case, written atomically; batch: many cases, parallel, resumable; cli: the command line
- skull:     `looks_skull_stripped`, the guard rail for cases that were not preprocessed
- rawlike:   SYNTHETIC raw-like cases and heads made from BraTS cases (tests, benchmarks)

Heavy dependencies (the `[preprocess]` extra) are imported only when used; names below load lazily.
"""

_EXPORTS = {
    "PreprocessConfig": "pipeline", "preprocess_case": "pipeline", "preprocess_dataset": "batch",
    "PreprocessSummary": "batch", "PreprocessedCase": "record", "looks_skull_stripped": "skull",
    "MissingExtraError": "extra",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"mmccd.data.raw.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mmccd.data.raw' has no attribute {name!r}")
