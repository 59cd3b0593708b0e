"""benchmarks/training_noise.py's table from made-up draws: one row per draw, and the mean and standard deviation
over the draws of each Dice column."""

from __future__ import annotations

import pytest

from benchmark_scripts import load_script


@pytest.fixture(scope="module")
def tn():
    return load_script("training_noise")


def _draw(how: str, test: float, val: float) -> dict:
    score = {"val_dice": val, "dice": test, "dice_std": 0.1, "auroc": 0.8, "n": 9}
    return {"run": "r", "how": how, "max_tumour": score, "all": {**score, "dice": test / 2, "val_dice": val / 2},
            "translation": {"translation_mae": 0.28, "translation_ssim": 0.3, "cyclic_error": 0.1}}


def test_one_row_per_draw_and_the_spread_over_draws(tn, tmp_path, capsys):
    results = {"command": "training_noise.py", "bench": "b", "fold": 0, "pair": "flair:t2",
               "draws": {"benchmark": _draw("seed 0", 0.4, 0.5), "seed-1": _draw("seed 1", 0.6, 0.7),
                         "seed-2": _draw("seed 2", 0.8, 0.6)}}
    tn.write_outputs(tmp_path, results)
    text = (tmp_path / "training_noise.md").read_text()
    assert "n = 9 test subjects" in text
    assert [r.split(" | ")[0] for r in text.splitlines() if r.startswith("| seed-") or r.startswith("| bench")] == \
        ["| benchmark", "| seed-1", "| seed-2"]
    spread = next(r for r in text.splitlines() if r.startswith("| mean ± std over the 3 draws"))
    cells = [c.strip() for c in spread.strip("|").split("|")]
    # val max-tumour 0.5/0.7/0.6 -> 0.600 ± 0.100; test 0.4/0.6/0.8 -> 0.600 ± 0.200; volume test halves -> 0.300 ± 0.100
    assert cells[2:6] == ["0.600 ± 0.100", "0.600 ± 0.200", "0.300 ± 0.050", "0.300 ± 0.100"]


def test_a_single_draw_has_no_spread_row(tn, tmp_path, capsys):
    results = {"command": "c", "bench": "b", "fold": 0, "pair": "flair:t2", "draws": {"benchmark": _draw("x", 0.4, 0.5)}}
    tn.write_outputs(tmp_path, results)
    text = (tmp_path / "training_noise.md").read_text()
    assert "| benchmark |" in text and "draws |" not in text
