"""prepare_dataset end to end on tiny SYNTHETIC phantom cases: store layout, resume, config refusal."""

import json

import numpy as np
import pytest
from data_helpers import write_case

from mmccd.config import MODALITIES, PrepareConfig
from mmccd.data.discovery import case_from_path, find_cases
from mmccd.data.phantom import write_phantom_dataset
from mmccd.data.prepare import prepare_case, prepare_dataset
from mmccd.data.preprocess import uncrop
from mmccd.data.store import PreparedStore
from mmccd.errors import DataError

CFG = PrepareConfig(size=32, workers=1)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root, n_cases=3, seed=0, shape=(48, 48, 32))
    return root


def test_prepare_case_meta_and_arrays(phantoms):
    case = find_cases(phantoms)[0]
    pc = prepare_case(case, CFG)
    m = pc.meta
    n = len(m["slice_indices"])
    assert pc.images.shape == (n, 4, 32, 32) and pc.brain.shape == pc.seg.shape == (n, 32, 32)
    assert pc.images.min() >= -1 - 1e-6 and pc.images.max() <= 1 + 1e-6
    assert set(np.unique(pc.seg)) <= {0, 1, 2, 3} and 3 in pc.seg  # BraTS 2021's 4 stored as 3
    assert m["axial_axis"] == 2 and m["original_shape"] == [48, 48, 32] and m["has_seg"]
    assert all(pc.seg[p].max() == 0 for p in m["train_slices"])
    assert m["max_tumour_slice"] == int(np.argmax(m["tumour_voxels"]))
    assert sorted(m["percentiles"]) == sorted(MODALITIES)
    # the box maps the stored brain back onto the original grid
    back = uncrop(pc.brain.astype(np.float32), m["box"], (48, 48)) > 0.5
    import nibabel as nib

    orig = np.moveaxis(np.asarray(nib.load(case.images["t1"]).dataobj) > 0, 2, 0)[m["slice_indices"]]
    assert (back == orig).mean() > 0.97


def test_single_file_case(phantoms):
    case = case_from_path(next(phantoms.glob("*/*_flair.nii.gz")))
    pc = prepare_case(case, CFG)
    assert pc.meta["modalities_present"] == ["flair"] and pc.seg is None
    assert np.all(pc.images[:, 0] == -1) and pc.images[:, 3].max() > 0.5


def test_prepare_store_roundtrip_and_resume(phantoms, tmp_path):
    out = tmp_path / "prepared"
    s1 = prepare_dataset(phantoms, out, CFG)
    assert len(s1.prepared) == 3 and not s1.skipped and not s1.reused
    store = PreparedStore.open(out)
    assert store.case_ids == s1.prepared and store.config == CFG
    record = json.loads((out / "prepare.json").read_text())
    assert record["modalities"] == list(MODALITIES) and "mmccd_version" in record and "created" in record
    cid = store.case_ids[0]
    images, brain, seg = store.images(cid), store.brain(cid), store.seg(cid)
    assert isinstance(images, np.memmap) and images.dtype == np.float16 and brain.dtype == seg.dtype == np.uint8
    pc = prepare_case(find_cases(phantoms)[0], CFG)
    np.testing.assert_allclose(images, pc.images, atol=1e-3)
    np.testing.assert_array_equal(seg, pc.seg)
    assert store.meta(cid)["slice_indices"] == pc.meta["slice_indices"]
    splits = store.splits()
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == store.case_ids

    mtimes = {p: p.stat().st_mtime_ns for p in (out / "cases").rglob("*")}
    splits_mtime = (out / "splits.json").stat().st_mtime_ns
    s2 = prepare_dataset(phantoms, out, CFG)
    assert s2.reused == s1.prepared and not s2.prepared
    assert {p: p.stat().st_mtime_ns for p in (out / "cases").rglob("*")} == mtimes
    assert (out / "splits.json").stat().st_mtime_ns == splits_mtime

    # an interrupted case (no meta.json) is redone, the others reused
    (out / "cases" / cid / "meta.json").unlink()
    s3 = prepare_dataset(phantoms, out, CFG)
    assert s3.prepared == [cid] and len(s3.reused) == 2


def test_config_mismatch_refused_unless_overwrite(phantoms, tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(phantoms, out, CFG)
    other = PrepareConfig(size=24, workers=1)
    with pytest.raises(DataError, match="another config") as exc:
        prepare_dataset(phantoms, out, other)
    assert "size: 32 there, 24 now" in str(exc.value)
    s = prepare_dataset(phantoms, out, other, overwrite=True)
    assert len(s.prepared) == 3 and PreparedStore.open(out).images(s.prepared[0]).shape[-1] == 24


def test_workers_2_matches_in_process(phantoms, tmp_path):
    s = prepare_dataset(phantoms, tmp_path / "a", PrepareConfig(size=32, workers=2))
    assert len(s.prepared) == 3
    a = PreparedStore.open(tmp_path / "a")
    prepare_dataset(phantoms, tmp_path / "b", CFG)
    b = PreparedStore.open(tmp_path / "b")
    for cid in a.case_ids:
        np.testing.assert_array_equal(a.images(cid), b.images(cid))
    assert a.splits()["train"] == b.splits()["train"]
    # the number of workers does not change the data: resuming with another number reuses every case
    assert len(prepare_dataset(phantoms, tmp_path / "a", CFG).reused) == 3


def test_bad_cases_skipped_or_stop(tmp_path):
    data = tmp_path / "cases"
    write_case(data, "A_001")
    write_case(data, "A_002", seed=1)
    write_case(data, "A_003", seed=2)
    write_case(data, "B_bad", keys=("t1", "t2", "flair", "seg"))  # no t1ce
    s = prepare_dataset(data, tmp_path / "out", PrepareConfig(size=16, workers=1))
    assert s.prepared == ["A_001", "A_002", "A_003"]
    assert s.skipped[0][0] == "B_bad" and "t1ce image is missing" in s.skipped[0][1]
    # only the contrasts used are required: the case is then prepared with t1ce = -1
    s = prepare_dataset(data, tmp_path / "out2", PrepareConfig(size=16, workers=1), required=("flair", "t2"))
    assert "B_bad" in s.prepared
    store = PreparedStore.open(tmp_path / "out2")
    assert "t1ce" not in store.meta("B_bad")["modalities_present"]
    with pytest.raises(DataError, match="t1ce image is missing"):
        prepare_dataset(data, tmp_path / "out3", PrepareConfig(size=16, workers=1), on_error="stop")


def test_voxel_problem_found_while_preparing(tmp_path):
    from data_helpers import volumes, write_nifti

    data = tmp_path / "cases"
    write_case(data, "A_001")
    bad = write_case(data, "A_002")
    v = volumes()["t2"]
    v[1, 1, 1] = np.nan
    write_nifti(bad / "A_002_t2.nii.gz", v)
    s = prepare_dataset(data, tmp_path / "out", PrepareConfig(size=16, workers=1))
    assert s.prepared == ["A_001"] and "NaN" in s.skipped[0][1]


def test_open_errors(phantoms, tmp_path):
    with pytest.raises(DataError, match="mmccd prepare"):
        PreparedStore.open(tmp_path)
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(DataError, match="not empty and not a prepared folder"):
        prepare_dataset(phantoms, tmp_path, CFG)
