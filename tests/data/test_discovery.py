import pytest
from data_helpers import volumes, write_case, write_nifti

from mmccd.data.discovery import case_from_path, find_cases
from mmccd.errors import DataError


def test_brats2021_naming(tmp_path):
    write_case(tmp_path, "B_002")
    write_case(tmp_path, "B_001", ext=".nii")
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["B_001", "B_002"]
    c = cases[0]
    assert c.naming == "brats2021" and not c.problems
    assert sorted(c.images) == ["flair", "t1", "t1ce", "t2"]
    assert c.images["t1"].name == "B_001_t1.nii" and c.images["t1ce"].name == "B_001_t1ce.nii"
    assert c.seg is not None and c.seg.name == "B_001_seg.nii"


def test_brats2023_naming(tmp_path):
    write_case(tmp_path, "BraTS-GLI-00001-000", naming="brats2023", keys=("t1", "t1ce", "t2", "flair"))
    (c,) = find_cases(tmp_path)
    assert c.naming == "brats2023" and c.seg is None
    assert {k: p.name.split("-")[-1] for k, p in c.images.items()} == {
        "t1": "t1n.nii.gz", "t1ce": "t1c.nii.gz", "t2": "t2w.nii.gz", "flair": "t2f.nii.gz"}


def test_custom_layout(tmp_path):
    v = volumes()
    write_nifti(tmp_path / "sub-01" / "sub-01_T1w.nii.gz", v["t1"])
    write_nifti(tmp_path / "sub-01" / "anat_FLAIR_run1.nii", v["flair"])
    write_nifti(tmp_path / "sub-01" / "sub-01_mask.nii.gz", v["seg"])
    layout = {"t1": "{case}_T1w.nii.gz", "flair": "*FLAIR*.nii*", "seg": "{case}_mask.nii.gz"}
    (c,) = find_cases(tmp_path, layout)
    assert c.naming == "custom" and sorted(c.images) == ["flair", "t1"] and c.seg.name == "sub-01_mask.nii.gz"
    with pytest.raises(DataError, match="matching the layout"):
        find_cases(tmp_path, {"t1": "*T2w*"})
    with pytest.raises(DataError, match="unknown key"):
        find_cases(tmp_path, {"T1": "*"})


def test_duplicates_are_recorded_not_raised(tmp_path):
    folder = write_case(tmp_path, "D_001")
    write_nifti(folder / "D_001_t1.nii", volumes()["t1"])
    (c,) = find_cases(tmp_path)
    assert "t1" not in c.images
    assert len(c.problems) == 1 and "duplicate files for t1" in c.problems[0]


def test_root_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_cases(tmp_path / "nope")
    with pytest.raises(DataError, match="no cases found"):
        find_cases(tmp_path)
    write_nifti(tmp_path / "x_t1.nii.gz", volumes()["t1"])  # a flat folder: files but no case folders
    with pytest.raises(DataError, match="directly in the folder"):
        find_cases(tmp_path)


def test_single_file_case(tmp_path):
    folder = write_case(tmp_path, "S_001", naming="brats2023")
    c = case_from_path(folder / "S_001-t2f.nii.gz")
    assert (c.case_id, c.naming, list(c.images), c.seg) == ("S_001", "single-file", ["flair"], None)
    plain = write_nifti(tmp_path / "scan.nii.gz", volumes()["t2"])
    with pytest.raises(DataError, match="cannot tell the contrast"):
        case_from_path(plain)
    c = case_from_path(plain, modality="t2")
    assert c.case_id == "scan" and list(c.images) == ["t2"]
    assert case_from_path(folder).naming == "brats2023"  # a case folder
