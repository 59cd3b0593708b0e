"""`mmccd benchmark` on a tiny SYNTHETIC phantom: outputs, levels, --test-data, resume; threshold from validation only."""

import csv
import json

import numpy as np
import pytest

from mmccd.data.phantom import write_phantom_dataset
from mmccd.evaluation.metrics import MapRecord
from mmccd.evaluation.protocol import records_from_arrays, threshold_protocol
from mmccd.evaluation.thresholds import choose_threshold
from mmccd.pipeline import benchmark
from mmccd.pipeline.benchmark import parse_pair, run_benchmark
from mmccd.pipeline.evaluate import evaluation_key
from mmccd.pipeline.runs import read_run_config, run_store
from mmccd.scoring import resolve_scoring
from mmccd.scoring.slices import load_cache

PRESET = """\
# tiny, 30 iterations: a benchmark in seconds (synthetic data; the numbers mean nothing)
name: bench-test
prepare: {size: 32, min_brain_fraction: 0.15, workers: 1}
network: {base_channels: 16, channel_mult: [1, 2, 2], num_res_blocks: 1, attention_resolutions: [8],
          num_head_channels: 16, dropout: 0.0}
diffusion: {stripe_width: 32}
train: {iterations: 30, batch_size: 8, lr: 0.001, checkpoint_every: 200, log_every: 20}
score: {num_masks: 8, ddim_steps: 5, mask_batch: 8}
eval: {figure_slices: 0}  # no example grids: matplotlib is the slowest part here
"""
REQUIRED = ("method", "source", "target", "dice_val_threshold", "dice_oracle", "auroc", "auprc", "dice_volume",
            "threshold", "n_test_subjects", "seconds_per_slice")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    write_phantom_dataset(root / "cases", n_cases=6, seed=1, shape=(48, 48, 32))
    write_phantom_dataset(root / "other", n_cases=2, seed=7, shape=(48, 48, 32), naming="brats2023")
    (root / "preset.yaml").write_text(PRESET)
    entries = run_benchmark(root / "cases", root / "out", preset=root / "preset.yaml",
                            methods=["cyclic-unet", "threshold"], test_data=root / "other")
    return root, entries


def test_writes_results_with_the_required_keys(bench):
    root, entries = bench
    out = root / "out"
    doc = json.loads((out / "results.json").read_text())
    assert [(e["method"], e["test_set"]) for e in doc["results"]] == [
        ("cyclic-unet", "held-out test split"), ("cyclic-unet", "test-data"),
        ("threshold", "held-out test split"), ("threshold", "test-data")]
    assert doc["results"] == entries
    for e in entries:
        assert all(e[k] is not None for k in REQUIRED), e
        assert (e["source"], e["target"]) == ("flair", "t2")
        assert 0.0 <= e["dice_val_threshold"] <= 1.0 and 0.0 <= e["dice_volume"] <= 1.0
    assert entries[0]["train_seconds"] > 0 and entries[2]["train_seconds"] == 0  # threshold: nothing to train
    assert "mmccd benchmark --data" in doc["command"] and doc["machine"] and doc["date"]
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and set(REQUIRED) <= set(rows[0])
    md = (out / "results.md").read_text()
    for text in ("oracle Dice", "not comparable", "53.4", "0.549", "validation", "99.99th percentile",
                 "Post-processing: none", doc["command"]):
        assert text in md, text
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {"subject_dice_flair-t2_max_tumour.png", "subject_dice_flair-t2_all.png",
            "dice_vs_threshold_cyclic-unet_flair-t2_max_tumour.png"} <= figures
    assert "subject_dice_flair-t2_max_tumour.png" in (out / "report.html").read_text()
    for tag in ("eval-max_tumour", "eval-all", "eval-test-data-max_tumour", "eval-test-data-all"):
        assert (out / "runs" / "cyclic-unet_flair-t2" / tag / "report.html").exists(), tag


def test_levels_are_labelled_and_match_the_run_reports(bench):
    root, entries = bench
    doc = json.loads((root / "out" / "results.json").read_text())
    assert {"dice_val_threshold", "dice_volume", "pooled_dice", "slice_mean_dice_volume"} <= set(doc["aggregation"])
    for e in entries:
        (mt,), (vol,) = e["protocols"]["max_tumour"], e["protocols"]["all"]  # one split: one evaluation each
        assert e["dice_val_threshold"] == mt["subject_mean_dice"] == mt["slice_mean_dice"]  # one slice per subject
        assert e["dice_volume"] == vol["subject_mean_dice"] and e["slice_mean_dice_volume"] == vol["slice_mean_dice"]
        assert e["pooled_dice"] == mt["pooled_dice"] and e["pooled_dice_volume"] == vol["pooled_dice"]
        assert e["n_test_slices"] == e["n_test_subjects"] < e["n_test_slices_volume"]
        folder = "eval-all" if e["test_set"] == "held-out test split" else "eval-test-data-all"
        metrics = json.loads((root / "out" / e["runs"][0] / folder / "metrics.json").read_text())
        assert metrics["summary"]["subject_mean_dice"] == pytest.approx(e["dice_volume"])
        assert metrics["threshold"] == pytest.approx(e["threshold_volume"])


def test_test_data_cases_are_the_test_subjects_with_the_training_threshold(bench):
    root, entries = bench
    splits = json.loads((root / "out" / "prepared-test" / "splits.json").read_text())
    assert splits["train"] == splits["val"] == [] and splits["test"] == ["Phantom-00000-000", "Phantom-00001-000"]
    by_set = {(e["method"], e["test_set"]): e for e in entries}
    for method in ("cyclic-unet", "threshold"):
        ext, own = by_set[(method, "test-data")], by_set[(method, "held-out test split")]
        assert ext["n_test_subjects"] == 2 and set(ext["per_subject_dice"]["max_tumour"]) == set(splits["test"])
        assert ext["threshold"] == own["threshold"] and ext["threshold_volume"] == own["threshold_volume"]


def test_threshold_is_the_validation_optimum_of_the_cached_maps(bench):
    root, entries = bench
    (path,) = (root / "out" / "runs" / "cyclic-unet_flair-t2" / "maps").glob("val_max_tumour_*.npz")
    val = load_cache(path, str(np.load(path)["signature"]))  # the validation maps the benchmark scored
    assert val is not None and set(val.subject_ids) == set(
        json.loads((root / "out" / "prepared" / "splits.json").read_text())["val"])
    records = records_from_arrays(val.subject_ids, val.slice_indices, val.maps, val.gt, val.brain)
    assert entries[0]["threshold"] == pytest.approx(choose_threshold(records).threshold)


def test_resume_skips_finished_work(bench, monkeypatch):
    root, entries = bench
    out = root / "out"
    ckpts = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoints/*.pt")}
    assert ckpts

    def fail(*args, **kwargs):
        raise AssertionError("finished work was recomputed")

    monkeypatch.setattr("mmccd.pipeline.runs.train_network", fail)
    monkeypatch.setattr("mmccd.pipeline.benchmark.jobs.train_run", fail)
    monkeypatch.setattr("mmccd.pipeline.evaluate.score_split", fail)  # no map scored again ...
    monkeypatch.setattr("mmccd.pipeline.evaluate.threshold_protocol", fail)  # ... and no evaluation redone
    again = run_benchmark(root / "cases", out, preset=root / "preset.yaml", methods=["cyclic-unet", "threshold"],
                          test_data=root / "other")
    assert [{k: e[k] for k in REQUIRED if k != "seconds_per_slice"} for e in again] == \
        [{k: e[k] for k in REQUIRED if k != "seconds_per_slice"} for e in entries]
    assert {p: p.stat().st_mtime_ns for p in ckpts} == ckpts


def _slice(scores, tumour, subject):
    """One (1, 10) slice, all brain."""
    return MapRecord(subject, 0, np.asarray([scores], float), np.asarray([tumour], bool), np.ones((1, 10), bool))


def test_threshold_never_sees_test_subjects():
    scores = np.arange(10) / 10 + 0.05  # 0.05 ... 0.95
    val = [_slice(scores, scores > 0.8, "V1"), _slice(scores, scores > 0.8, "V2")]  # optimum in (0.75, 0.85]
    test = [_slice(scores, scores > 0.6, "T1")]  # optimum in (0.55, 0.65]
    res = threshold_protocol(val, test)
    assert 0.75 < res.choice.threshold <= 0.85 and res.choice.val_dice == 1.0
    assert 0.55 < res.oracle.threshold <= 0.65 and res.oracle.val_dice == 1.0
    assert res.result.threshold == res.choice.threshold
    assert res.result.summary["subject_mean_dice"] == pytest.approx(2 * 2 / (2 + 4))  # 2 of 4 tumour pixels found
    other = threshold_protocol(val, [_slice(scores[::-1], scores > 0.1, "T9")])  # any test set: same choice
    assert other.choice.threshold == res.choice.threshold


def test_parse_pair():
    assert parse_pair("FLAIR:t2")[:2] == ("flair", "t2")
    assert parse_pair("t2:flair=mmccd,dae") == ("t2", "flair", ("mmccd", "dae"))
    for bad in ("flair", "flair:flair", "t3:t2", "flair:t2:t1"):
        with pytest.raises(Exception, match="SOURCE:TARGET"):
            parse_pair(bad)


def test_scoring_choice_is_part_of_the_evaluation_and_the_command(bench):
    """--scoring changes what an evaluation depends on (so a cached one is not reused) and is written down."""
    root, entries = bench
    run = root / "out" / "runs" / "cyclic-unet_flair-t2"
    cfg, store = read_run_config(run), run_store(run)
    splits = {"val": (store, store.splits()["val"]), "test": (store, store.splits()["test"])}

    def key(scoring: str) -> str:
        return evaluation_key(run, cfg, resolve_scoring(cfg, scoring), "max_tumour", benchmark.NO_POSTPROCESS,
                              splits).digest

    assert key("auto") == key("run")  # auto keeps a Cyclic UNet run's own settings ...
    assert key("reference") != key("run")  # ... another preset's do not
    cmd = benchmark.benchmark_command(root / "cases", root / "out", "cpu", ["mmccd"], ["flair:t2"], None,
                                      benchmark.NO_POSTPROCESS, benchmark.PROTOCOLS, "reference")
    assert cmd.endswith("--scoring reference")
    assert "--scoring" not in benchmark.benchmark_command(root / "cases", root / "out", "cpu", ["mmccd"], ["flair:t2"],
                                                          None, benchmark.NO_POSTPROCESS, benchmark.PROTOCOLS)


def test_mmccd_scoring_is_described_in_words():
    from mmccd.config import load_score_preset, to_dict
    from mmccd.pipeline.benchmark.report import describe_scoring

    assert describe_scoring("mmccd", to_dict(load_score_preset("fast"))) == \
        "16 stripes × 1 DDIM step, trailing, composite backward"
    assert describe_scoring("mmccd", to_dict(load_score_preset("reference"))).endswith("× 100 DDIM steps, leading")
    assert describe_scoring("ae", to_dict(load_score_preset("fast"))) == "–"


def test_results_name_the_code_of_the_call_and_of_each_run(bench):
    root, entries = bench
    doc = json.loads((root / "out" / "results.json").read_text())
    assert doc["code_version"] == doc["meta"]["code_version"]  # taken when the call started
    trained = {e["method"]: e["trained_with_code"] for e in entries}
    assert trained["cyclic-unet"] and trained["threshold"]  # every run records the code it was made with


def test_score_finds_the_benchmark_threshold_of_a_run(bench, tmp_path):
    """A run trained by the benchmark has no RUN/metrics.json: `mmccd score` takes the threshold the benchmark
    chose on validation volumes (eval-all), for maps scored the same way."""
    from mmccd.pipeline.score import score_cases

    root, entries = bench
    run = root / "out" / "runs" / "cyclic-unet_flair-t2"
    assert not (run / "metrics.json").exists()
    case = sorted((root / "cases").iterdir())[0]
    summary = score_cases(run, [case], tmp_path / "maps", view=False)
    assert any(p.name.endswith("_pred_mask.nii.gz") for p in summary.written[case.name])
    info = json.loads((tmp_path / "maps" / "score_info.json").read_text())
    assert info["threshold"] == entries[0]["threshold_volume"] and info["threshold_from"].endswith(
        "eval-all/metrics.json")
