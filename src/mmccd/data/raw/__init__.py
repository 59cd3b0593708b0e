"""Raw scans -> BraTS-like cases (mmccd preprocess); see docs/preprocess.md."""
