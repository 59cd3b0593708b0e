from __future__ import annotations

from pathlib import Path

import numpy as np

from mmccd.evaluation.figures import (
    column_kind,
    dice_threshold_plot,
    figure_grid,
    montage,
    subject_strip_plot,
)


def assert_png(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 2000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temp files left


def slice_row(rng: np.random.Generator) -> dict[str, np.ndarray]:
    img = rng.random((32, 32))
    gt = np.zeros((32, 32), bool)
    gt[10:18, 12:20] = True
    amap = rng.random((32, 32)) * 0.2 + gt
    return {"input": img, "translation": img * 0.9, "cyclic reconstruction": img * 0.8,
            "anomaly map": amap, "prediction": amap > 0.5, "ground truth": gt}


def test_figure_grid(tmp_path):
    rng = np.random.default_rng(0)
    rows = [slice_row(rng), slice_row(rng)]
    del rows[1]["translation"]  # a missing entry leaves an empty cell
    cols = ["input", "translation", "cyclic reconstruction", "anomaly map", "prediction", "ground truth"]
    assert_png(figure_grid(rows, cols, tmp_path / "figures" / "grid.png", titles=["S1 z=70", "S2 z=81"]))
    # masks without an input to outline on are drawn as binary images
    assert_png(figure_grid([{"ground truth": rows[0]["ground truth"]}], ["ground truth"], tmp_path / "gt.png"))


def test_column_kinds():
    f, b = np.zeros(2), np.zeros(2, bool)
    assert [column_kind(n, f) for n in ("input", "anomaly map", "score", "translation")] == \
        ["image", "map", "map", "image"]
    assert column_kind("prediction", b) == "mask"


def test_dice_threshold_plot(tmp_path):
    t = np.geomspace(1e-3, 1, 50)
    val, test = np.exp(-np.log(t / 0.05) ** 2), 0.9 * np.exp(-np.log(t / 0.1) ** 2)
    assert_png(dice_threshold_plot(t, val, test, chosen=0.05, path=tmp_path / "curve.png", oracle=0.1))
    # thresholds down to 0 (maps with zeros in half the brain) still plot, on a symmetric log axis
    t0 = np.concatenate([[0.0], t])
    assert_png(dice_threshold_plot(t0, np.r_[0.0, val], None, chosen=0.05, path=tmp_path / "curve0.png"))


def test_subject_strip_plot(tmp_path):
    per_method = {"mmccd": [0.5, 0.6, 0.7, np.nan], "cyclic-unet": [0.3, 0.4, 0.35], "ae": []}
    assert_png(subject_strip_plot(per_method, tmp_path / "strip.png"))


def test_montage(tmp_path):
    rng = np.random.default_rng(1)
    vol = np.zeros((40, 24, 24))
    vol[5:35] = rng.random((30, 24, 24))  # empty slices at both ends are skipped
    amap = np.zeros_like(vol)
    amap[5:35, 8:14, 8:14] = rng.random((30, 6, 6))
    assert_png(montage(vol, amap, tmp_path / "m_map.png", threshold=0.5, title="case 001"))
    assert_png(montage(vol, amap > 0.5, tmp_path / "m_mask.png", n=9))
    assert_png(montage(vol, None, tmp_path / "m.png", indices=[10, 20]))
