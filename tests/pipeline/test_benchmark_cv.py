"""`mmccd benchmark --folds K` on a tiny SYNTHETIC phantom: every subject tested once, each fold's threshold from
that fold's validation subjects only, paired comparisons, lesion numbers, --test-data in another layout, and a
killed benchmark that resumes without training anything again."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from mmccd.data.phantom import write_phantom_dataset
from mmccd.evaluation.protocol import records_from_arrays
from mmccd.evaluation.thresholds import choose_threshold
from mmccd.pipeline.benchmark import jobs, run_benchmark
from mmccd.scoring.slices import load_cache

PRESET = """\
name: cv-test
prepare: {size: 32, min_brain_fraction: 0.15, workers: 1}
network: {base_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_resolutions: [],
          num_head_channels: 8, dropout: 0.0}
diffusion: {stripe_width: 32}
train: {iterations: 6, batch_size: 4, lr: 0.001, checkpoint_every: 3, log_every: 3}
score: {num_masks: 8, ddim_steps: 2, mask_batch: 8}
eval: {figure_slices: 0}
"""


@pytest.fixture(scope="module")
def cv(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    write_phantom_dataset(root / "cases", n_cases=8, seed=2, shape=(48, 48, 32))
    (root / "preset.yaml").write_text(PRESET)
    (root / "cal.yaml").write_text("extends: preset.yaml\nscore: {calibration: intensity, calibration_bins: 8}\n")
    entries = run_benchmark(root / "cases", root / "out", preset=root / "preset.yaml", folds=2,
                            methods=["cyclic-unet", "threshold", f"threshold@{root / 'cal.yaml'}"],
                            pairs=["flair:t2", "t2:flair=threshold"], profiles=["field"])
    return root, entries


def test_every_subject_is_tested_once_and_folds_are_reused(cv):
    root, entries = cv
    folds = json.loads((root / "out" / "prepared" / "folds.json").read_text())
    tested = sorted(s for f in folds["folds"] for s in f["test"])
    assert tested == sorted(folds["case_ids"]) and len(tested) == 8
    for e in entries:
        assert e["folds"] == 2 and e["n_test_subjects"] == 8 and e["n_test_subjects_volume"] == 8
        assert sorted(e["per_subject_dice"]["max_tumour"]) == tested
        assert [r["n"] for r in e["per_fold"]["max_tumour"]] == [len(f["test"]) for f in folds["folds"]]
    # (cyclic-unet, threshold, its calibrated variant) on flair:t2 and threshold on t2:flair, raw and post-processed
    assert {(e["method"], e["pair"]) for e in entries} == {("cyclic-unet", "flair:t2"), ("threshold", "flair:t2"),
                                                           ("threshold@cal", "flair:t2"), ("threshold", "t2:flair")}
    assert len({e["postprocess"] for e in entries}) == 2


def test_each_fold_chooses_its_threshold_on_its_own_validation_subjects(cv):
    root, entries = cv
    folds = json.loads((root / "out" / "prepared" / "folds.json").read_text())["folds"]
    entry = next(e for e in entries if e["method"] == "cyclic-unet" and e["postprocess"] == "none")
    for k, fold in enumerate(folds):
        run = root / "out" / "runs" / f"fold-{k}" / "cyclic-unet_flair-t2"
        info = json.loads((run / "run_info.json").read_text())
        assert info["split"]["val"] == fold["val"] and info["train_subjects"] == fold["train"]
        metrics = json.loads((run / "eval-max_tumour" / "metrics.json").read_text())
        assert metrics["evaluation_settings"]["splits"]["val"]["ids"] == fold["val"]
        assert metrics["evaluation_settings"]["splits"]["test"]["ids"] == fold["test"]

        def records(split, run=run):
            (path,) = (run / "maps").glob(f"{split}_max_tumour_*.npz")  # one scoring of this run
            z = load_cache(path, str(np.load(path)["signature"]))
            return records_from_arrays(z.subject_ids, z.slice_indices, z.maps, z.gt, z.brain)

        val, test = records("val"), records("test")
        assert {r.subject_id for r in val} == set(fold["val"]) and {r.subject_id for r in test} == set(fold["test"])
        chosen = choose_threshold(val).threshold
        assert metrics["threshold"] == pytest.approx(chosen) == pytest.approx(entry["threshold"][k])
        test_optimal = choose_threshold(test, thresholds=np.unique(np.r_[choose_threshold(val).thresholds,
                                                                         choose_threshold(test).thresholds]))
        if test_optimal.val_dice > choose_threshold(test, thresholds=np.array([chosen])).val_dice:
            assert metrics["threshold"] != pytest.approx(test_optimal.threshold)  # the test optimum is not taken


def test_a_scoring_variant_evaluates_the_plain_run_with_its_own_calibrated_scores(cv):
    root, entries = cv
    run = root / "out" / "runs" / "fold-0" / "threshold_flair-t2"
    assert not (root / "out" / "runs" / "fold-0" / "threshold@cal_flair-t2").exists()  # no run of its own
    metrics = json.loads((run / "eval-max_tumour@cal" / "metrics.json").read_text())
    assert metrics["score_config"]["calibration"] == "intensity" and list((run / "calibration").glob("*.npz"))
    variant = next(e for e in entries if e["method"] == "threshold@cal" and e["postprocess"] == "none")
    plain = next(e for e in entries if e["method"] == "threshold" and e["pair"] == "flair:t2" and e["postprocess"] == "none")
    assert variant["per_subject_dice"]["max_tumour"] != plain["per_subject_dice"]["max_tumour"]
    c = variant["vs_base"]["max_tumour"]
    assert c["base"] == "threshold" and c["n"] == 8
    assert c["mean_diff"] == pytest.approx(variant["dice_val_threshold"] - plain["dice_val_threshold"])


def test_tables_compare_with_the_best_and_report_lesions(cv):
    root, entries = cv
    raw = [e for e in entries if e["pair"] == "flair:t2" and e["postprocess"] == "none"]
    best = [e for e in raw if e["vs_best"]["max_tumour"].get("is_best")]
    other = [e for e in raw if not e["vs_best"]["max_tumour"].get("is_best")]
    assert len(raw) == 3 and len(best) == 1 and len(other) == 2  # the variant is a row of its table too
    c = other[0]["vs_best"]["max_tumour"]
    diffs = [other[0]["per_subject_dice"]["max_tumour"][s] - best[0]["per_subject_dice"]["max_tumour"][s]
             for s in best[0]["per_subject_dice"]["max_tumour"]]
    assert c["n"] == 8 and c["mean_diff"] == pytest.approx(np.mean(diffs)) and c["mean_diff"] <= 0
    assert c["p_value"] is None or 0 < c["p_value"] <= 1
    for e in raw:
        assert 0 <= e["lesion_sensitivity"] <= 1 and e["fp_per_volume"] >= 0 and e["n_lesions"] >= 8
    report = (root / "out" / "report.html").read_text()
    for e in raw:  # each method's worst and best subject, browsable, linked from the report
        assert len(e["views"]) == 2 and all((root / "out" / p).stat().st_size > 1e6 for p in e["views"].values())
        assert all(p in report for p in e["views"].values())
    md = (root / "out" / "results.md").read_text()
    for text in ("FLAIR input — raw maps", "T2 input — raw maps", "post-processed: field@32px", "vs best (Δ, p)",
                 "lesion sensitivity", "Per fold", "2-fold cross-validation", "0.609", "0.738"):
        assert text in md, text


def test_a_killed_benchmark_resumes_without_training_again(tmp_path, monkeypatch):
    write_phantom_dataset(tmp_path / "cases", n_cases=6, seed=5, shape=(48, 48, 32))
    (tmp_path / "preset.yaml").write_text(PRESET)
    args = dict(preset=tmp_path / "preset.yaml", folds=2, methods=["cyclic-unet", "mmccd"])
    real = jobs.run_spec
    done = []

    def killed_after_two(prepared, spec, plan):
        if len(done) == 2:
            raise KeyboardInterrupt  # the benchmark is stopped here
        done.append(spec.run)
        return real(prepared, spec, plan)

    monkeypatch.setattr(jobs, "run_spec", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(tmp_path / "cases", tmp_path / "out", **args)
    monkeypatch.undo()
    finished = {p: p.stat().st_mtime_ns for run in done for p in (run / "checkpoints").glob("*.pt")}
    assert len(done) == 2 and finished
    trained = []
    import mmccd.pipeline.runs as runs

    real_train = runs.train_network

    def counting(net, loss_fn, dataset, cfg, checkpoint, *a, **k):
        result = real_train(net, loss_fn, dataset, cfg, checkpoint, *a, **k)
        if result.trained_now:
            trained.append(checkpoint)
        return result

    monkeypatch.setattr(runs, "train_network", counting)
    entries = run_benchmark(tmp_path / "cases", tmp_path / "out", **args)
    assert len(entries) == 2
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # nothing finished was trained again
    assert trained and not set(trained) & set(finished)
    # the two runs left: fold 1's Cyclic UNet (2 networks) and MMCCD (its forward net; the backward is copied)
    assert sorted(p.parent.parent.name for p in trained) == ["cyclic-unet_flair-t2", "cyclic-unet_flair-t2",
                                                              "mmccd_flair-t2"]


def test_test_data_in_another_layout_with_a_binary_lesion_mask(cv, tmp_path):
    root, _ = cv
    ext = tmp_path / "ms"
    for case in sorted((root / "cases").iterdir())[:2]:  # a "lesion dataset": custom names, 0/1 masks
        sub = ext / f"sub-{case.name[-2:]}"
        sub.mkdir(parents=True)
        flair = nib.load(case / f"{case.name}_flair.nii.gz")
        nib.save(flair, sub / "FLAIR.nii.gz")
        seg = nib.load(case / f"{case.name}_seg.nii.gz")
        nib.save(nib.Nifti1Image((np.asarray(seg.dataobj) > 0).astype(np.uint8), seg.affine), sub / "lesions.nii.gz")
    layout = tmp_path / "layout.yaml"
    layout.write_text("flair: FLAIR.nii.gz\nseg: lesions.nii.gz\n")
    out = tmp_path / "bench"
    shutil.copytree(root / "out" / "prepared", out / "prepared")  # the same training data, nothing else
    entries = run_benchmark(root / "cases", out, preset=root / "preset.yaml", folds=2, methods=["threshold"],
                            test_data=ext, test_layout=layout)
    external = [e for e in entries if e["test_set"] == "test-data"]
    assert len(external) == 1 and external[0]["n_test_subjects"] == 2
    rows = json.loads((out / "runs" / "fold-0" / "threshold_flair-t2" / "eval-test-data-max_tumour" /
                       "metrics.json").read_text())
    assert rows["n_test_subjects"] == 2 and rows["n_val_subjects"] == len(
        json.loads((out / "prepared" / "folds.json").read_text())["folds"][0]["val"])
    # the same through `mmccd evaluate` on one trained run
    from mmccd.cli import main

    run = root / "out" / "runs" / "fold-0" / "cyclic-unet_flair-t2"
    assert main(["evaluate", "--run", str(run), "--test-data", str(ext), "--layout", str(layout),
                 "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_test_subjects"] == 2 and metrics["evaluation_settings"]["splits"]["test"]["ids"] == [
        "sub-00", "sub-01"]


def test_a_multi_target_variant_trains_its_other_targets_and_compares_with_plain_mmccd(tmp_path):
    write_phantom_dataset(tmp_path / "cases", n_cases=6, seed=6, shape=(48, 48, 32))
    (tmp_path / "preset.yaml").write_text(PRESET)
    (tmp_path / "multi.yaml").write_text("extends: preset.yaml\nscore: {num_masks: 8, ddim_steps: 1, timestep_spacing: "
                                         "trailing, composite: true, calibration: intensity, calibration_bins: 8, "
                                         "extra_targets: [t1]}\n")
    entries = run_benchmark(tmp_path / "cases", tmp_path / "out", preset=tmp_path / "preset.yaml", folds=2,
                            methods=["mmccd", f"mmccd@{tmp_path / 'multi.yaml'}"], protocols=["max_tumour"])
    assert [e["method"] for e in entries] == ["mmccd", "mmccd@multi"]  # the FLAIR -> T1 runs are no row
    for k in range(2):
        fold = tmp_path / "out" / "runs" / f"fold-{k}"
        assert (fold / "mmccd_flair-t1" / "checkpoints" / "source_to_target.pt").exists()
        assert len(list((fold / "mmccd_flair-t1" / "calibration").glob("*.npz"))) == 1  # its own healthy table
        metrics = json.loads((fold / "mmccd_flair-t2" / "eval-max_tumour@multi" / "metrics.json").read_text())
        assert metrics["score_config"]["extra_targets"] == ["t1"]
    variant = entries[1]
    assert variant["vs_base"]["max_tumour"]["base"] == "mmccd" and variant["vs_base"]["max_tumour"]["n"] == 6
