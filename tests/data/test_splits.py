import json

import pytest

from mmccd.data.splits import load_or_create_folds, load_or_create_splits, make_folds, make_splits
from mmccd.errors import DataError

IDS = [f"case_{i:02d}" for i in range(20)]


def test_deterministic_and_disjoint():
    a = make_splits(IDS, 0.15, 0.25, seed=1)
    assert a == make_splits(list(reversed(IDS)), 0.15, 0.25, seed=1)  # order of the input does not matter
    assert a != make_splits(IDS, 0.15, 0.25, seed=2)
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (12, 3, 5)
    assert sorted(a["train"] + a["val"] + a["test"]) == IDS


@pytest.mark.parametrize("n", [3, 4, 5])
def test_small_sets_have_val_and_test(n):
    s = make_splits(IDS[:n], 0.15, 0.25, 0)
    assert len(s["val"]) >= 1 and len(s["test"]) >= 1 and len(s["train"]) >= 1


def test_tiny_sets():
    assert make_splits(IDS[:2], 0.15, 0.25, 0) == {"train": IDS[:2], "val": [], "test": []}
    assert make_splits([], 0.15, 0.25, 0) == {"train": [], "val": [], "test": []}


def test_written_once_and_reused(tmp_path):
    path = tmp_path / "splits.json"
    first = load_or_create_splits(path, IDS, 0.15, 0.25, 0)
    saved = json.loads(path.read_text())
    assert saved["seed"] == 0 and saved["val_fraction"] == 0.15 and saved["train"] == first["train"]
    mtime = path.stat().st_mtime_ns
    assert load_or_create_splits(path, IDS, 0.15, 0.25, 0) == first
    assert path.stat().st_mtime_ns == mtime


def test_mismatch_is_an_error_never_a_rewrite(tmp_path):
    path = tmp_path / "splits.json"
    load_or_create_splits(path, IDS, 0.15, 0.25, 0)
    before = path.read_text()
    with pytest.raises(DataError, match="other cases") as exc:
        load_or_create_splits(path, IDS[:-1] + ["new_case"], 0.15, 0.25, 0)
    assert "delete splits.json" in str(exc.value)
    with pytest.raises(DataError, match="other settings"):
        load_or_create_splits(path, IDS, 0.15, 0.25, 7)
    assert path.read_text() == before


# ---------------------------------------------------------------- K folds


def test_every_subject_is_tested_once_and_roles_never_overlap():
    ids = [f"s{i:02d}" for i in range(26)]
    folds = make_folds(ids, 5, 0.15, seed=3)
    assert len(folds) == 5
    tested = [s for f in folds for s in f.test]
    assert sorted(tested) == ids  # each subject a test subject exactly once
    for f in folds:
        assert set(f.train) | set(f.val) | set(f.test) == set(ids)
        assert not (set(f.train) & set(f.val) or set(f.train) & set(f.test) or set(f.val) & set(f.test))
        assert len(f.val) == round(26 * 0.15) and len(f.test) in (5, 6)
    assert [f.as_dict() for f in make_folds(list(reversed(ids)), 5, 0.15, seed=3)] == [f.as_dict() for f in folds]
    assert make_folds(ids, 5, 0.15, seed=4) != folds  # another seed, other folds


def test_folds_are_written_once_and_a_changed_case_list_is_an_error(tmp_path):
    ids = [f"s{i:02d}" for i in range(12)]
    path = tmp_path / "folds.json"
    first = load_or_create_folds(path, ids, 3, 0.15, 0)
    assert path.exists() and load_or_create_folds(path, ids, 3, 0.15, 0) == first
    with pytest.raises(DataError, match="the saved folds are for other cases.*s12"):
        load_or_create_folds(path, ids + ["s12"], 3, 0.15, 0)
    with pytest.raises(DataError, match="other settings"):
        load_or_create_folds(path, ids, 4, 0.15, 0)
    with pytest.raises(DataError, match="too few"):
        make_folds(ids[:2], 2, 0.15, 0)  # a test, a validation and no training subject
    with pytest.raises(DataError, match="K >= 2"):
        make_folds(ids, 1, 0.15, 0)
