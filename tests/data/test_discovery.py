import os
import shutil

import pytest
from data_helpers import volumes, write_case, write_nifti

from mmccd.data.discovery import case_from_path, find_cases
from mmccd.errors import DataError, printable


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


def test_each_case_by_its_own_naming_but_one_naming_per_case(tmp_path):
    write_case(tmp_path, "A_001")
    write_case(tmp_path, "B-001", naming="brats2023")
    mixed = write_case(tmp_path, "C_001", keys=("t1", "t1ce", "flair", "seg"))
    write_nifti(mixed / "C_001-t2w.nii.gz", volumes()["t2"])
    a, b, c = find_cases(tmp_path)
    assert (a.naming, b.naming) == ("brats2021", "brats2023") and not a.problems and not b.problems
    assert c.images["t2"].name == "C_001-t2w.nii.gz"  # found, so not reported missing
    (problem,) = c.problems
    assert "mix the BraTS 2021 naming (C_001_flair.nii.gz, C_001_seg.nii.gz, C_001_t1.nii.gz, C_001_t1ce.nii.gz)" in problem
    assert "the BraTS 2023 naming (C_001-t2w.nii.gz)" in problem


def test_layout_pattern_matching_two_files_names_the_pattern(tmp_path):
    folder = write_case(tmp_path, "L_001", keys=("flair",))
    write_nifti(folder / "L_001_flair_2.nii.gz", volumes()["flair"])
    (c,) = find_cases(tmp_path, {"flair": "*flair*"})
    assert "flair" not in c.images
    assert c.problems == ("the layout pattern '*flair*' for flair matches 2 files: L_001_flair.nii.gz, "
                          "L_001_flair_2.nii.gz (make the pattern match exactly one file per case)",)


def test_folders_without_case_files_are_listed_beside_cases(tmp_path):
    write_case(tmp_path, "A_001")
    (tmp_path / "B_empty").mkdir()
    (tmp_path / "C_dicom").mkdir()
    (tmp_path / "C_dicom" / "IM1.dcm").write_bytes(b"")
    (tmp_path / "D_link").symlink_to(tmp_path / "gone")
    (tmp_path / "notes.txt").write_text("not a case")  # a file beside the cases is no case
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["A_001", "B_empty", "C_dicom", "D_link"]
    assert all(c.naming == "none" and not c.files and len(c.problems) == 1 for c in cases[1:])
    assert "(it is empty)" in cases[1].problems[0] and "IM1.dcm" in cases[2].problems[0]
    assert "broken symbolic link" in cases[3].problems[0]
    shutil.rmtree(tmp_path / "A_001")  # no case left: an error that says what the subfolders are
    with pytest.raises(DataError, match=r"no cases found.*\(3 subfolder\(s\) without: B_empty, C_dicom, D_link\)"):
        find_cases(tmp_path)


def test_non_utf8_names(tmp_path):
    """A case folder whose name is not UTF-8 is a problem (its id is shown escaped); a file so named is not."""
    latin1 = write_case(tmp_path, os.fsdecode(b"M\xfcller"))
    (c,) = find_cases(tmp_path)
    assert c.case_id == r"M\xfcller" and c.root == latin1 and not c.files and "not valid UTF-8" in c.problems[0]
    assert r"case M\xfcller, file " in str(DataError(c.problems[0], case=c.case_id, file=c.root))
    shutil.rmtree(latin1)
    folder = write_case(tmp_path, "U_001", keys=("t2",))
    write_nifti(folder / os.fsdecode(b"U_001_\xe9_flair.nii.gz"), volumes()["flair"])
    (c,) = find_cases(tmp_path)
    assert not c.problems and c.images["flair"].exists()
    assert printable(c.images["flair"].name) == r"U_001_\xe9_flair.nii.gz"


def test_a_data_folder_that_is_one_case_folder(tmp_path):
    folder = write_case(tmp_path, "O_001")
    with pytest.raises(DataError, match="this looks like one case folder"):
        find_cases(folder)
