"""`mmccd evaluate`: the protocol on a trained run — threshold from validation, applied once to test.

1. score the evaluation slices (max-tumour slice per subject, or every slice with brain) of the
   validation and test subjects in `splits.json` (or of another prepared store as test); maps are
   cached in RUN/maps/ and reused;
2. choose the threshold maximising mean subject Dice on VALIDATION maps;
3. apply it once to the test maps: Dice, AUROC, AUPRC inside the brain, per slice, per subject
   (volume) and pooled; the test-optimal ("oracle") Dice is reported separately, labelled;
4. write metrics.json, per_slice.csv, per_subject.csv, dice_curve.csv, figures/ and report.html into
   the run (or `out_dir`, so several protocols can share one run).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mmccd.config import to_dict, with_scoring
from mmccd.data.io import atomic_write_text
from mmccd.data.store import PreparedStore
from mmccd.errors import DataError, OutputExistsError
from mmccd.evaluation.figures import dice_threshold_plot, figure_grid
from mmccd.evaluation.postprocess import PostProcess
from mmccd.evaluation.protocol import (
    ScoredSplit,
    cache_path,
    load_cache,
    postprocess_records,
    save_cache,
    score_split,
    threshold_protocol,
)
from mmccd.evaluation.report import write_report
from mmccd.pipeline.runs import load_method, read_run_config, read_run_info
from mmccd.scoring.base import AnomalyMethod


def evaluate_run(run_dir: Path, slices: str | None = None, device: str | None = None,
                 postprocess: PostProcess | None = None, method: AnomalyMethod | None = None, *,
                 out_dir: Path | None = None, test_store: Path | None = None,
                 test_ids: list[str] | None = None, scoring: str | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Run the protocol on a trained run and write its report. Returns the summary dict.

    scoring:    a preset whose `score` section replaces the run's (e.g. "fast", "reference"); None = the run's
    overwrite:  replace an evaluation in `out_dir` made with other settings (slices, scoring, post-processing);
                without it that is an OutputExistsError (the same settings are simply evaluated again)

    out_dir:    where metrics.json, the CSVs, dice_curve.csv, figures/ and report.html go (default: the run)
    test_store: another prepared store whose subjects `test_ids` (default: its split "test") are the test
                set, e.g. another site; the threshold still comes from the run's validation subjects.
    Maps are cached in RUN/maps/ either way; the method is loaded only when a split must be scored."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = with_scoring(read_run_config(run_dir), scoring)
    info = read_run_info(run_dir)
    slices = slices or cfg.eval.eval_slices
    pp = postprocess or PostProcess()
    if not overwrite:
        _refuse_other_settings(out_dir, {"slices": slices, "score_config": to_dict(cfg.score),
                                         "postprocess": pp.describe()})
    store = PreparedStore.open(Path(info["prepared"]))
    val_ids = store.splits()["val"]
    t_store = PreparedStore.open(test_store) if test_store is not None else store
    if test_ids is None:
        test_ids = t_store.splits()["test"]
    test_name = "test" if test_store is None else f"test@{t_store.root.name}"
    for name, ids in (("validation", val_ids), ("test", test_ids)):
        if not ids:
            raise DataError(f"no {name} subjects in the split, so no threshold can be chosen and applied",
                            file=Path(info["prepared"]) / "splits.json",
                            expected="at least 1 validation and 1 test subject with a segmentation",
                            found=f"{len(val_ids)} validation, {len(test_ids)} test",
                            fix="prepare at least 3 labelled cases")
    splits = {"val": (store, val_ids, "val"), "test": (t_store, list(test_ids), test_name)}

    scored: dict[str, ScoredSplit] = {}
    for split, (split_store, ids, name) in splits.items():
        signature = json.dumps({"code": _checkpoint_signature(run_dir), "score": cfg.score.__dict__,
                                "store": str(split_store.root.resolve()), "ids": ids}, sort_keys=True, default=str)
        path = cache_path(run_dir, name, slices)
        cached = load_cache(path, signature)
        keep = cfg.eval.figure_slices if split == "test" else 0
        if cached is not None and len(cached.figures) >= min(keep, len(cached.records)):
            scored[split] = cached
            continue
        method = method or load_method(run_dir, device)
        method.cfg = dataclasses.replace(method.cfg, score=cfg.score)
        scored[split] = score_split(method, split_store, ids, cfg.source, cfg.target, slices,
                                    seed=cfg.score.seed, keep_figures=keep, desc=f"score {split}")
        save_cache(path, scored[split], signature)

    val = postprocess_records(scored["val"].records, pp)
    test = postprocess_records(scored["test"].records, pp)
    pred_filter = pp.apply_mask if pp.min_component else None  # component removal acts on the binary mask
    protocol_result = threshold_protocol(val, test, n=cfg.eval.threshold_quantiles, pred_filter=pred_filter)
    choice, oracle, result = protocol_result.choice, protocol_result.oracle, protocol_result.result

    figures = out_dir / "figures"
    figures.mkdir(exist_ok=True)
    dice_threshold_plot(choice.thresholds, choice.val_curve, protocol_result.test_curve, choice.threshold,
                        figures / "dice_vs_threshold.png", oracle=oracle.threshold)
    atomic_write_text(out_dir / "dice_curve.csv", "threshold,val_dice,test_dice\n" + "".join(
        f"{t!r},{v!r},{d!r}\n" for t, v, d in zip(choice.thresholds.tolist(), choice.val_curve.tolist(),
                                                protocol_result.test_curve.tolist(), strict=True)))
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
        "n_val_subjects": len(val_ids), "n_test_subjects": len(test_ids),
        "test_store": str(t_store.root),
        "n_test_slices": len(test), "seconds_per_slice": scored["test"].seconds_per_slice,
        "postprocess": pp.describe(),
        "score_config": to_dict(cfg.score),  # the threshold belongs to maps scored this way
    }
    where = "" if test_store is None else f" of {t_store.root}"
    protocol = (f"{cfg.method}, {cfg.source} -> {cfg.target}. Threshold chosen on {len(val_ids)} validation "
                f"subjects, applied once to {len(test_ids)} test subjects{where} ({slices} slices). "
                "Oracle = test-optimal threshold, for comparison with papers only.")
    write_report(out_dir, result, extra={**summary, "protocol": protocol, "train_seconds": info.get("train_seconds")})
    return summary


def _refuse_other_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """OutputExistsError if out_dir/metrics.json holds an evaluation made with other `settings`."""
    path = out_dir / "metrics.json"
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # unreadable: nothing worth keeping
    differ = [k for k in ("slices", "score_config", "postprocess") if k in old and old[k] != settings[k]]
    if differ:
        raise OutputExistsError(
            f"{path} holds an evaluation with other settings ({', '.join(differ)}: "
            + "; ".join(f"{old[k]!r} there, {settings[k]!r} now" for k in differ if k != "score_config")
            + ("; another score config" if "score_config" in differ else "")
            + "); pass --overwrite to replace it (the run's threshold for `mmccd score` changes with it) "
              "or --out to write this evaluation elsewhere")


def _checkpoint_signature(run_dir: Path) -> list[tuple[str, int]]:
    ckpts = sorted((run_dir / "checkpoints").glob("*.pt"))
    return [(p.name, p.stat().st_mtime_ns) for p in ckpts]
