import numpy as np

from mmccd.data.slicing import positions, select_slices


def _volume():
    """10 axial slices; brain in slices 1..8 (slice 1 only 2 voxels); tumour in slices 4..6, largest in 5."""
    brain = np.zeros((10, 10, 10), bool)
    brain[2:8, 2:8, 2:8] = True
    brain[1, 0, 0:2] = True
    brain[8, 2:8, 2:8] = True
    seg = np.zeros((10, 10, 10), np.uint8)
    seg[4, 3, 3] = 2
    seg[5, 3:5, 3:5] = 1
    seg[6, 3, 3:5] = 4
    return brain, seg


def test_selection():
    brain, seg = _volume()
    sel = select_slices(brain, seg, box_side=10, min_brain_fraction=0.1)
    assert sel.slice_indices == [1, 2, 3, 4, 5, 6, 7, 8]  # every slice with any brain
    assert sel.brain_fraction[0] == 0.02 and sel.brain_fraction[1] == 0.36
    assert sel.tumour_voxels == [0, 0, 0, 1, 4, 2, 0, 0]
    train_idx = [sel.slice_indices[p] for p in sel.train_slices]
    assert train_idx == [2, 3, 7, 8]  # tumour-free and enough brain
    assert all(seg[i].max() == 0 for i in train_idx)
    assert [sel.slice_indices[p] for p in sel.eval_slices_all] == [2, 3, 4, 5, 6, 7, 8]
    assert sel.slice_indices[sel.max_tumour_slice] == 5


def test_train_window():
    brain, seg = _volume()
    sel = select_slices(brain, seg, 10, 0.1, train_slice_window=(3, 7))
    assert [sel.slice_indices[p] for p in sel.train_slices] == [3, 7]


def test_without_segmentation():
    brain, _ = _volume()
    sel = select_slices(brain, None, 10, 0.1)
    assert sel.train_slices == [] and sel.max_tumour_slice is None and len(sel.eval_slices_all) == 7
    meta = sel.as_dict()
    assert positions(meta, "max_tumour") == [] and positions(meta, "stored") == list(range(8))
