"""`mmccd evaluate`: the protocol on a trained run — threshold from validation, applied once to test.

1. score the evaluation slices (max-tumour slice per subject, or every slice with brain) of the
   validation and test subjects in `splits.json`; maps are cached in RUN/maps/ and reused;
2. choose the threshold maximising mean subject Dice on VALIDATION maps;
3. apply it once to the test maps: Dice, AUROC, AUPRC inside the brain, per slice, per subject
   (volume) and pooled; the test-optimal ("oracle") Dice is reported separately, labelled;
4. write metrics.json, per_slice.csv, per_subject.csv, figures/ and report.html into the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmccd.data.store import PreparedStore
from mmccd.evaluation.figures import dice_threshold_plot, figure_grid
from mmccd.evaluation.metrics import evaluate_maps
from mmccd.evaluation.postprocess import PostProcess
from mmccd.evaluation.protocol import (
    ScoredSplit,
    cache_path,
    load_cache,
    postprocess_records,
    save_cache,
    score_split,
)
from mmccd.evaluation.report import write_report
from mmccd.evaluation.thresholds import choose_threshold, dice_curve, oracle_threshold
from mmccd.pipeline.runs import load_method, read_run_config, read_run_info
from mmccd.scoring.base import AnomalyMethod


def evaluate_run(run_dir: Path, slices: str | None = None, device: str | None = None,
                 postprocess: PostProcess | None = None, method: AnomalyMethod | None = None) -> dict[str, Any]:
    """Run the protocol on a trained run and write its report. Returns the summary dict."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    info = read_run_info(run_dir)
    slices = slices or cfg.eval.eval_slices
    pp = postprocess or PostProcess()
    store = PreparedStore.open(Path(info["prepared"]))
    splits = store.splits()
    method = method or load_method(run_dir, device)
    signature = json.dumps({"code": _checkpoint_signature(run_dir), "score": cfg.score.__dict__}, sort_keys=True, default=str)

    scored: dict[str, ScoredSplit] = {}
    for split in ("val", "test"):
        cached = load_cache(cache_path(run_dir, split, slices), signature)
        keep = cfg.eval.figure_slices if split == "test" else 0
        if cached is not None and keep == 0:
            scored[split] = cached
            continue
        scored[split] = score_split(method, store, splits[split], cfg.source, cfg.target, slices,
                                    seed=cfg.score.seed, keep_figures=keep, desc=f"score {split}")
        save_cache(cache_path(run_dir, split, slices), scored[split], signature)

    val = postprocess_records(scored["val"].records, pp)
    test = postprocess_records(scored["test"].records, pp)
    pred_filter = pp.apply_mask if pp.min_component else None  # component removal acts on the binary mask
    choice = choose_threshold(val, n=cfg.eval.threshold_quantiles, pred_filter=pred_filter)
    oracle = oracle_threshold(test, n=cfg.eval.threshold_quantiles, pred_filter=pred_filter)
    result = evaluate_maps(test, choice.threshold, pred_filter=pred_filter)
    test_curve = dice_curve(test, choice.thresholds, pred_filter=pred_filter)

    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    dice_threshold_plot(choice.thresholds, choice.val_curve, test_curve, choice.threshold,
                        figures / "dice_vs_threshold.png", oracle=oracle.threshold)
    rows, titles = [], []
    for fig in scored["test"].figures:
        amap, brain = pp.apply_map(fig["anomaly_map"], fig["brain"])
        row = {"input": fig["source"], "anomaly map": amap,
               "prediction": pp.apply_mask((amap >= choice.threshold) & brain), "ground truth": fig["gt"]}
        if "translation" in fig:
            row["translation"] = fig["translation"]
            row["cyclic reconstruction"] = fig["reconstruction"]
        rows.append(row)
        titles.append(fig["title"])
    if rows:
        columns = [c for c in ("input", "translation", "cyclic reconstruction", "anomaly map", "prediction", "ground truth")
                   if c in rows[0]]
        figure_grid(rows, columns, figures / "examples.png", titles)

    summary: dict[str, Any] = {
        "method": cfg.method, "source": cfg.source, "target": cfg.target, "slices": slices,
        "threshold": float(choice.threshold), "threshold_source": "validation subjects (best mean Dice)",
        "threshold_search_range": choice.search_range, "val_dice_at_threshold": float(choice.val_dice),
        **result.summary,
        "oracle_threshold": float(oracle.threshold), "oracle_dice_test": float(oracle.val_dice),
        "threshold_at_search_edge": bool(choice.at_edge),
        "n_val_subjects": len(splits["val"]), "n_test_subjects": len(splits["test"]),
        "n_test_slices": len(test), "seconds_per_slice": scored["test"].seconds_per_slice,
        "postprocess": pp.describe(),
    }
    protocol = (f"{cfg.method}, {cfg.source} -> {cfg.target}. Threshold chosen on {len(splits['val'])} validation "
                f"subjects, applied once to {len(splits['test'])} test subjects ({slices} slices). "
                "Oracle = test-optimal threshold, for comparison with papers only.")
    write_report(run_dir, result, extra={**summary, "protocol": protocol, "train_seconds": info.get("train_seconds")})
    return summary


def _checkpoint_signature(run_dir: Path) -> list[tuple[str, int]]:
    ckpts = sorted((run_dir / "checkpoints").glob("*.pt"))
    return [(p.name, p.stat().st_mtime_ns) for p in ckpts]
