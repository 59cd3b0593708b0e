import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmccd.config import PrepareConfig
from mmccd.data.batch import collate_slices
from mmccd.data.dataset import SliceDataset, slices_from_prepared
from mmccd.data.discovery import find_cases
from mmccd.data.phantom import write_phantom_dataset
from mmccd.data.prepare import prepare_case, prepare_dataset
from mmccd.data.store import PreparedStore
from mmccd.errors import DataError

CFG = PrepareConfig(size=32, workers=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    write_phantom_dataset(root / "cases", n_cases=2, seed=1, shape=(48, 48, 32))
    prepare_dataset(root / "cases", root / "prepared", CFG)
    return PreparedStore.open(root / "prepared")


def test_items_and_collate(store):
    ids = store.case_ids
    ds = SliceDataset(store, ids, "flair", "t2", slices="train")
    assert len(ds) == sum(len(store.meta(c)["train_slices"]) for c in ids)
    item = ds[0]
    assert item["source"].shape == (1, 32, 32) and item["source"].dtype == torch.float32
    assert item["brain_mask"].dtype == torch.bool and not item["gt_mask"].any()
    meta = store.meta(item["subject_id"])
    assert item["slice_index"] == meta["slice_indices"][meta["train_slices"][0]]
    flair = store.images(ids[0])[meta["train_slices"][0], 3].astype(np.float32)
    np.testing.assert_array_equal(item["source"][0].numpy(), flair)
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_slices)))
    assert batch.source.shape == (4, 1, 32, 32) and batch.gt_mask is not None and len(batch.subject_id) == 4


def test_max_tumour_and_all(store):
    ds = SliceDataset(store, store.case_ids, "t2", "flair", slices="max_tumour")
    assert len(ds) == 2 and all(ds[i]["gt_mask"].any() for i in range(2))
    assert len(SliceDataset(store, store.case_ids, "t2", "flair", slices="all")) > len(ds)


def test_unknown_contrast(store):
    with pytest.raises(DataError, match="unknown contrast"):
        SliceDataset(store, store.case_ids, "pd", "t2")


def test_slices_from_prepared(store):
    case = find_cases(store.meta(store.case_ids[0])["source_files"]["t1"].rsplit("/", 2)[0])[0]
    pc = prepare_case(case, CFG)
    batch = slices_from_prepared(pc, "flair", "t2", which="all")
    assert len(batch) == len(pc.meta["eval_slices_all"]) and batch.source.shape[1:] == (1, 32, 32)
    assert batch.slice_index.tolist() == [pc.meta["slice_indices"][p] for p in pc.meta["eval_slices_all"]]
    assert batch.gt_mask is not None and batch.subject_id[0] == case.case_id
