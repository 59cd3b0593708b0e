"""The seed study's numbers (issue 13, item 2) from hand-made evaluations: the std over seeds beside the std over
subjects, and which method differences exceed twice the larger seed spread, in results.json's rows and in the
results.md tables."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from mmccd.pipeline.benchmark.report import _seed_differences_table, _seed_table
from mmccd.pipeline.benchmark.results import seed_study


@dataclass(frozen=True)
class Spec:  # the fields of a RunSpec the seed study reads
    name: str
    pair: str
    fold: int | None
    seed: int


# mean Dice per seed on fold 0's test subjects (max-tumour slice, whole volume)
DICE = {"dae": {0: (0.80, 0.70), 1: (0.78, 0.68), 2: (0.82, 0.72)},
        "mmccd": {0: (0.60, 0.40), 1: (0.50, 0.45), 2: (0.70, 0.35)},
        "cyclic-unet": {0: (0.62, 0.52), 1: (0.63, 0.53), 2: (0.61, 0.51)}}


def evaluations():
    specs, evals = [], {}
    for method, by_seed in DICE.items():
        for seed, (slice_dice, volume_dice) in by_seed.items():
            spec = Spec(method, "flair:t2", 0, seed)
            specs.append(spec)
            evals[spec] = {("internal", "max_tumour", "none"): SimpleNamespace(summary={
                               "subject_mean_dice": slice_dice, "subject_std_dice": 0.1, "n_subjects": 9}),
                           ("internal", "all", "none"): SimpleNamespace(summary={
                               "subject_mean_dice": volume_dice, "subject_std_dice": 0.2, "n_subjects": 9})}
    specs.append(Spec("threshold", "flair:t2", 0, 0))  # one seed only: not in the study
    evals[specs[-1]] = {}
    specs.append(Spec("dae", "flair:t2", 1, 0))  # another fold: not in the study
    return specs, evals


def test_seed_spread_and_which_differences_exceed_it():
    specs, evals = evaluations()
    rows = {r["method"]: r for r in seed_study(specs, evals, ["max_tumour", "all"], "internal", "none")}
    assert set(rows) == {"dae", "mmccd", "cyclic-unet"}
    dae, mm, cyc = rows["dae"], rows["mmccd"], rows["cyclic-unet"]
    assert dae["seeds"] == [0, 1, 2] and dae["n_subjects"] == 9
    assert dae["dice_mean_over_seeds"] == pytest.approx(0.80)
    assert dae["seed_std"] == pytest.approx((2 * 0.02 ** 2 / 3) ** 0.5)  # population std over the 3 seeds
    assert mm["seed_std"] == pytest.approx((2 * 0.1 ** 2 / 3) ** 0.5)
    assert dae["subject_std"] == pytest.approx(0.1) and dae["subject_std_volume"] == pytest.approx(0.2)
    # DAE - Cyclic UNet: 0.18 apart, both seed spreads ~0.016 / 0.008: larger than the spread
    assert dae["differences_vs_seed_spread"]["cyclic-unet"]["diff"] == pytest.approx(0.18)
    assert dae["differences_vs_seed_spread"]["cyclic-unet"]["larger_than_spread"]
    # Cyclic UNet - MMCCD per slice: 0.02 apart, MMCCD's seed std 0.082: not larger
    assert not cyc["differences_vs_seed_spread"]["mmccd"]["larger_than_spread"]
    assert cyc["differences_vs_seed_spread"]["mmccd"]["seed_spread"] == pytest.approx(mm["seed_std"])
    # per volume: DAE 0.70 vs MMCCD 0.40 (seed std 0.041): larger
    assert dae["differences_vs_seed_spread_volume"]["mmccd"]["larger_than_spread"]

    _, head, body = _seed_table(list(rows.values()), ["max_tumour", "all"])
    assert head[:4] == ["method", "source→target", "seeds", "Dice per seed (max-tumour)"]
    assert body[0][:5] == ["dae", "flair→t2", "0, 1, 2", "0.800, 0.780, 0.820", "0.016"]
    title, head, body = _seed_differences_table(list(rows.values()), ["max_tumour", "all"])
    assert "2 × the larger seed std" in title
    assert len(body) == 3  # each pair of methods once
    by_pair = {r[0]: r for r in body}
    assert by_pair["dae − mmccd"][2:5] == ["+0.200", "0.163", "yes"]
    assert by_pair["mmccd − cyclic-unet"][2:5] == ["-0.020", "0.163", "no"]


def test_the_seed_study_trains_plain_networks_and_scores_their_score_only_variants(tmp_path):
    from mmccd.data.splits import Split
    from mmccd.pipeline.benchmark.plan import default_seed_rows, plan_runs

    (tmp_path / "preset.yaml").write_text("name: seed-test\nprepare: {size: 32}\ntrain: {iterations: 4, seed: 0}\n")
    (tmp_path / "bright.yaml").write_text("extends: preset.yaml\nscore: {residual: bright}\n")  # scores only
    (tmp_path / "noisy.yaml").write_text("extends: preset.yaml\ntrain: {source_noise_std: 0.2}\n")  # trains its own
    split = Split(name="s", train=("a", "b"), val=("c",), test=("d",))
    methods = ("dae", "threshold", f"dae@{tmp_path / 'bright.yaml'}", f"dae@{tmp_path / 'noisy.yaml'}")
    rows = default_seed_rows(tmp_path / "preset.yaml", methods, plain=("dae",))
    assert rows == ["dae", f"dae@{tmp_path / 'bright.yaml'}"]  # not the threshold, not the variant that trains
    specs = plan_runs(tmp_path / "out", tmp_path / "preset.yaml", [("flair", "t2", methods)], [split], cv=True,
                      seeds=[1, 2], seed_methods=rows)
    seeded = {(s.name, s.seed): s for s in specs if s.seed != 0}
    assert set(seeded) == {(n, k) for n in ("dae", "dae@bright") for k in (1, 2)}  # not the threshold, not @noisy
    for k in (1, 2):
        assert seeded[("dae@bright", k)].run == seeded[("dae", k)].run == tmp_path / "out/runs/fold-0" / f"seed-{k}" / \
            "dae_flair-t2"  # the variant evaluates the seed's own plain run
        assert seeded[("dae", k)].cfg.train.seed == k
    only = plan_runs(tmp_path / "out", tmp_path / "preset.yaml", [("flair", "t2", methods)], [split], cv=True,
                     seeds=[1], seed_methods=["dae"])  # --seed-methods dae: the named rows only
    assert {(s.name, s.seed) for s in only if s.seed != 0} == {("dae", 1)}


def test_seed_methods_outside_the_first_pair_are_refused(tmp_path):
    from mmccd.errors import ConfigError
    from mmccd.pipeline.benchmark import run_benchmark

    with pytest.raises(ConfigError, match="--seed-methods ae: not among the methods of the first pair"):
        run_benchmark(tmp_path / "cases", tmp_path / "out", preset="tiny", methods=["dae", "threshold"],
                      seeds=[1], seed_methods=["dae", "ae"])
    assert not (tmp_path / "out").exists()  # refused before anything is written
