"""`mmccd evaluate`: the protocol on a trained run — threshold from validation, applied once to test.

1. score the evaluation slices (max-tumour slice per subject, or every slice with brain) of the
   validation and test subjects in `splits.json` (or of another prepared store as test); maps are
   cached in RUN/maps/ and reused;
2. choose the threshold maximising mean subject Dice on VALIDATION maps;
3. apply it once to the test maps: Dice, AUROC, AUPRC inside the brain, per slice, per subject
   (volume) and pooled; the test-optimal ("oracle") Dice is reported separately, labelled;
4. write metrics.json, per_slice.csv, per_subject.csv, dice_curve.csv, figures/ and report.html into
   the run (or `out_dir`, so several protocols can share one run); return an `Evaluation`.

One fingerprint (`EvaluationKey`) decides "the same evaluation": the map cache uses its per-split part,
the refusal to replace an evaluation made otherwise and the benchmark's reuse use the whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmccd.atomic import atomic_write_text
from mmccd.config import (
    SPEED_ONLY_SCORE_KEYS,
    ExperimentConfig,
    PrepareConfig,
    ScoreConfig,
    read_yaml,
    to_dict,
)
from mmccd.data.prepare import PrepareSummary, prepare_dataset
from mmccd.data.store import SPLITS_JSON, PreparedStore
from mmccd.errors import DataError, OutputExistsError
from mmccd.evaluation.figures import dice_threshold_plot, figure_grid
from mmccd.evaluation.lesions import evaluate_lesions, summarise_lesions
from mmccd.evaluation.postprocess import PostProcess
from mmccd.evaluation.protocol import postprocess_records, records_from_arrays, threshold_protocol
from mmccd.evaluation.report import write_report
from mmccd.pipeline.calibrate import scorer
from mmccd.pipeline.runs import load_method, read_run_config, read_run_info, run_split, run_store
from mmccd.pipeline.views import subject_view, worst_and_best
from mmccd.scoring import resolve_scoring
from mmccd.scoring.base import AnomalyMethod
from mmccd.scoring.slices import ScoredSplit, cache_path, find_cache, save_cache, score_split

log = logging.getLogger("mmccd")
METRICS_JSON = "metrics.json"
LESION_KEYS = ("lesion_sensitivity", "n_lesions", "n_detected", "fp_components", "hd95_mm", "pred_volume_ml",
               "gt_volume_ml")


@dataclass(frozen=True)
class EvaluationKey:
    """What an evaluation's numbers depend on. `maps(split)` keys the map cache; `digest` the whole."""

    checkpoints: tuple[tuple[str, str], ...]  # (file, sha256) of the run's networks
    score: dict[str, Any]  # the score settings
    slices: str
    postprocess: str
    eval: dict[str, Any]  # threshold search settings
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> {"store", "ids"}

    def maps(self, split: str) -> str:
        """The map cache's signature of one split (the maps do not depend on post-processing or the search)."""
        return json.dumps({"checkpoints": self.checkpoints, "score": self.score, "slices": self.slices,
                           **self.splits[split]}, sort_keys=True, default=str)

    def as_dict(self) -> dict[str, Any]:
        return {"checkpoints": [list(c) for c in self.checkpoints], "score": self.score, "slices": self.slices,
                "postprocess": self.postprocess, "eval": self.eval, "splits": self.splits}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvaluationKey:
        """The key an evaluation recorded (metrics.json "evaluation_settings")."""
        return cls(tuple(tuple(c) for c in d["checkpoints"]), d["score"], d["slices"], d["postprocess"], d["eval"],
                   d["splits"])

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Evaluation:
    """An evaluation's results: `summary` holds metrics.json's scalar keys; the curves are (K,) arrays."""

    summary: dict[str, Any]
    per_subject: list[dict[str, Any]]
    thresholds: np.ndarray
    val_curve: np.ndarray
    test_curve: np.ndarray
    folder: Path
    fingerprint: str

    @classmethod
    def load(cls, folder: Path) -> Evaluation | None:
        """The evaluation written in `folder`, or None when it is missing or unreadable."""
        try:
            metrics = json.loads((folder / METRICS_JSON).read_text())
            lines = (folder / "dice_curve.csv").read_text().splitlines()
            cols = np.array([[float(v) for v in line.split(",")] for line in lines[1:]]).reshape(-1, 3).T
            summary = {k: v for k, v in metrics.items() if k not in ("per_subject", "pooled", "notes", "summary")}
            return cls(summary, metrics["per_subject"], cols[0], cols[1], cols[2], folder, metrics["fingerprint"])
        except (OSError, ValueError, KeyError, IndexError):
            return None


def checkpoint_digests(run_dir: Path) -> tuple[tuple[str, str], ...]:
    """(name, sha256 of the content) of every checkpoint of the run: the same weights wherever the run lies."""
    out = []
    for p in sorted((Path(run_dir) / "checkpoints").glob("*.pt")):
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out.append((p.name, h.hexdigest()))
    return tuple(out)


def evaluation_key(run_dir: Path, cfg: ExperimentConfig, settings: ScoreConfig, slices: str, pp: PostProcess,
                   splits: dict[str, tuple[PreparedStore, list[str]]]) -> EvaluationKey:
    score = {k: v for k, v in to_dict(settings).items() if k not in SPEED_ONLY_SCORE_KEYS}
    return EvaluationKey(checkpoint_digests(run_dir), score, slices, pp.describe(), to_dict(cfg.eval),
                         {name: {"store": store.identity(ids), "ids": list(ids)}
                          for name, (store, ids) in splits.items()})


def evaluate_run(run_dir: Path, settings: ScoreConfig | None = None, *, slices: str | None = None,
                 device: str | None = None, postprocess: PostProcess | None = None,
                 method: AnomalyMethod | None = None, out_dir: Path | None = None, test_store: Path | None = None,
                 test_ids: list[str] | None = None, overwrite: bool = False, reuse: bool = False,
                 views: str = "auto") -> Evaluation:
    """Run the protocol on a trained run and write its report.

    settings:   how to score (`mmccd.scoring.resolve_scoring`); None: the method's default ("auto")
    out_dir:    where metrics.json, the CSVs, dice_curve.csv, figures/ and report.html go (default: the run)
    test_store: another prepared store whose subjects `test_ids` (default: its split "test") are the test
                set, e.g. another site; the threshold still comes from the run's validation subjects
    overwrite:  replace an evaluation in `out_dir` made with other settings; without it that is an
                OutputExistsError (the same settings are evaluated again from the cached maps)
    reuse:      return the evaluation already in `out_dir` when it was made with the same settings
    views:      case views of the worst and best test subject in OUT/views/: "auto" (from the cached maps of the
                whole-volume protocol, else by scoring those two volumes), "cached" (whole-volume protocol only),
                "none"
    Maps are cached in RUN/maps/; the method is loaded only when a split must be scored."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    cfg = read_run_config(run_dir)
    settings = settings if settings is not None else resolve_scoring(cfg, "auto")
    slices = slices or cfg.eval.eval_slices
    pp = postprocess or PostProcess()
    store, split = run_store(run_dir), run_split(run_dir)
    val_ids = list(split.val)
    t_store = PreparedStore.open(test_store) if test_store is not None else store
    if test_ids is None:
        test_ids = t_store.splits()["test"] if test_store is not None else list(split.test)
    for name, ids in (("validation", val_ids), ("test", test_ids)):
        if not ids:
            raise DataError(f"no {name} subjects in the split, so no threshold can be chosen and applied",
                            file=store.root / "splits.json",
                            expected="at least 1 validation and 1 test subject with a segmentation",
                            found=f"{len(val_ids)} validation, {len(test_ids)} test",
                            fix="prepare at least 3 labelled cases")
    key = evaluation_key(run_dir, cfg, settings, slices, pp, {"val": (store, val_ids), "test": (t_store, list(test_ids))})
    previous = Evaluation.load(out_dir) if (out_dir / METRICS_JSON).exists() else None
    if previous is not None and previous.fingerprint == key.digest and reuse:
        log.info("%s is evaluated with these settings; reusing it", out_dir)
        return previous
    if not overwrite:
        _refuse_other_settings(out_dir, key)
    out_dir.mkdir(parents=True, exist_ok=True)

    test_name = "test" if test_store is None else f"test@{t_store.root.name}"
    splits = {"val": (store, val_ids, "val"), "test": (t_store, list(test_ids), test_name)}
    scored: dict[str, ScoredSplit] = {}
    scoring: AnomalyMethod | None = None
    for split, (split_store, ids, name) in splits.items():
        path = cache_path(run_dir, name, slices, key.maps(split))
        cached = find_cache(run_dir, name, slices, key.maps(split))
        keep = cfg.eval.figure_slices if split == "test" else 0
        if cached is not None and len(cached.figures) >= min(keep, len(cached)):
            scored[split] = cached
            continue
        method = method or load_method(run_dir, device)
        scoring = scoring or scorer(run_dir, method, settings)  # with its healthy calibration, when asked
        scored[split] = score_split(scoring, settings, split_store, ids, cfg.source, cfg.target, slices,
                                    keep_figures=keep, desc=f"score {split}")
        save_cache(path, scored[split], key.maps(split))

    val = postprocess_records(_records(scored["val"]), pp)
    raw_test = _records(scored["test"])
    test = postprocess_records(raw_test, pp)
    pred_filter = pp.apply_mask if pp.min_component else None  # component removal acts on the binary mask
    protocol_result = threshold_protocol(val, test, n=cfg.eval.threshold_quantiles, pred_filter=pred_filter)
    choice, oracle, result = protocol_result.choice, protocol_result.oracle, protocol_result.result
    lesions = _lesion_numbers(raw_test, t_store, choice.threshold, pp) if slices == "all" else {}

    figures = out_dir / "figures"
    figures.mkdir(exist_ok=True)
    dice_threshold_plot(choice.thresholds, choice.val_curve, protocol_result.test_curve, choice.threshold,
                        figures / "dice_vs_threshold.png", oracle=oracle.threshold)
    atomic_write_text(out_dir / "dice_curve.csv", "threshold,val_dice,test_dice\n" + "".join(
        f"{t!r},{v!r},{d!r}\n" for t, v, d in zip(choice.thresholds.tolist(), choice.val_curve.tolist(),
                                                protocol_result.test_curve.tolist(), strict=True)))
    _example_figure(scored["test"].figures, pp, choice.threshold, figures / "examples.png")

    summary: dict[str, Any] = {
        "method": cfg.method, "source": cfg.source, "target": cfg.target, "slices": slices,
        "threshold": float(choice.threshold), "threshold_source": "validation subjects (best mean Dice)",
        "threshold_search_range": choice.search_range, "val_dice_at_threshold": float(choice.val_dice),
        **result.summary,
        "oracle_threshold": float(oracle.threshold), "oracle_dice_test": float(oracle.val_dice),
        "threshold_at_search_edge": bool(choice.at_edge),
        "n_val_subjects": len(val_ids), "n_test_subjects": len(test_ids),
        "test_store": str(t_store.root.resolve()),  # not RUN/../../prepared
        "n_test_slices": len(test), "seconds_per_slice": scored["test"].seconds_per_slice,
        "postprocess": pp.describe(), **lesions,
        "score_config": to_dict(settings),  # the threshold belongs to maps scored this way
        "fingerprint": key.digest, "evaluation_settings": key.as_dict(),
    }
    where = "" if test_store is None else f" of {t_store.root}"
    protocol = (f"{cfg.method}, {cfg.source} -> {cfg.target}. Threshold chosen on {len(val_ids)} validation "
                f"subjects, applied once to {len(test_ids)} test subjects{where} ({slices} slices). "
                "Oracle = test-optimal threshold, for comparison with papers only.")
    info = read_run_info(run_dir)
    for row in summary.pop("lesion_rows", []):  # lesion numbers beside each subject's Dice
        match = next(r for r in result.per_subject if r["subject_id"] == row["subject_id"])
        match.update({k: row[k] for k in LESION_KEYS})
    made = {}
    if views == "auto" or (views == "cached" and slices == "all"):
        if slices != "all":
            method = method or load_method(run_dir, device)
            scoring = scoring or scorer(run_dir, method, settings)
        made = _views(out_dir, t_store, scored["test"] if slices == "all" else None, result.per_subject, cfg,
                      choice.threshold, pp, scoring, settings)
    write_report(out_dir, result, extra={**summary, "protocol": protocol, "train_seconds": info.get("train_seconds")},
                 views=made)
    return Evaluation(summary, result.per_subject, choice.thresholds, choice.val_curve, protocol_result.test_curve,
                      out_dir, key.digest)


def prepare_test_store(test_data: Path, root: Path, cfg: PrepareConfig, required: Sequence[str],
                       layout: Path | None = None) -> tuple[list[str], PrepareSummary]:
    """Prepare `test_data` like the training data into `root`; every case with a segmentation is a test subject.

    `layout`: a YAML file mapping modality (and seg) to a file pattern, for other datasets (MS lesions, stroke):
    any lesion label other than 0 counts as anomaly. Its splits.json says so (train and val empty); it is
    derived from the prepared cases, so rewritten each call."""
    (root / SPLITS_JSON).unlink(missing_ok=True)
    pattern = {str(k): str(v) for k, v in read_yaml(layout).items()} if layout else None
    summary = prepare_dataset(test_data, root, cfg, required=required, layout=pattern)
    store = PreparedStore.open(root)
    ids = sorted(c for c in summary.prepared + summary.reused if store.meta(c)["has_seg"])
    if not ids:
        raise DataError("no case of --test-data has a segmentation, so none can be evaluated", file=test_data,
                        fix="give a folder of cases with segmentations (use `mmccd score` for unlabelled scans)")
    splits = {"train": [], "val": [], "test": ids, "seed": cfg.split_seed, "val_fraction": cfg.val_fraction,
              "test_fraction": cfg.test_fraction,
              "note": "mmccd benchmark --test-data: every case with a segmentation is a test subject"}
    atomic_write_text(root / SPLITS_JSON, json.dumps(splits, indent=2) + "\n")
    return ids, summary



def evaluate_on_test_data(run_dir: Path, data: Path, settings: ScoreConfig | None = None, *,
                          layout: Path | None = None, slices: str | None = None, device: str | None = None,
                          postprocess: PostProcess | None = None, out_dir: Path | None = None,
                          overwrite: bool = False) -> Evaluation:
    """Evaluate a trained run on another labelled dataset (another site, another disease) in any file layout.

    The cases of `data` are prepared like the run's training data into RUN/prepared-test-<name>/; every case
    with a segmentation is a test subject (anomaly = label > 0); the threshold is still chosen on the run's
    own validation subjects. Written to `out_dir` (default RUN/eval-test-data-<name>-<slices>/)."""
    run_dir, data = Path(run_dir), Path(data)
    cfg = read_run_config(run_dir)
    slices = slices or cfg.eval.eval_slices
    root = run_dir / f"prepared-test-{data.resolve().name}"
    ids, _ = prepare_test_store(data, root, run_store(run_dir).config, [cfg.source], layout)
    return evaluate_run(run_dir, settings, slices=slices, device=device, postprocess=postprocess,
                        out_dir=out_dir or run_dir / f"eval-test-data-{data.resolve().name}-{slices}",
                        test_store=root, test_ids=ids, overwrite=overwrite)


def _lesion_numbers(records: list, store: PreparedStore, threshold: float, pp: PostProcess) -> dict[str, Any]:
    """Whole volumes: lesion sensitivity, false-positive components and HD95 per test subject (3D connected
    components at the validation threshold, in the stored slices' mm); the per-subject values are added to the
    rows of `records`' evaluation by the caller through the returned "lesion_rows"."""
    spacing = {sid: store.spacing(sid) for sid in dict.fromkeys(r.subject_id for r in records)}
    rows = evaluate_lesions(records, threshold, spacing, postprocess=pp if pp.active else None)
    summary = summarise_lesions(rows)
    return {"lesion_rows": rows, **{k if "lesion" in k else f"lesion_{k}": v
                                    for k, v in summary.items() if k != "n_subjects"}}


def _views(out_dir: Path, store: PreparedStore, test: ScoredSplit | None, per_subject: list[dict[str, Any]],
           cfg: ExperimentConfig, threshold: float, pp: PostProcess, method: AnomalyMethod | None,
           settings: ScoreConfig) -> dict[str, str]:
    """Case views of the worst and the best test subject: {subject: path relative to out_dir}. `test`: the
    whole-volume protocol's scored slices (the views use them), or None to score the two volumes."""
    made = {}
    for sid in worst_and_best(per_subject):
        cached = None
        if test is not None:
            rows = [i for i, s in enumerate(test.subject_ids) if s == sid]
            cached = (np.asarray([test.slice_indices[i] for i in rows]), test.maps[rows])
        dice = next(r["dice"] for r in per_subject if r["subject_id"] == sid)
        title = f"{sid} — {cfg.method}, {cfg.source} → {cfg.target}, Dice {dice:.3f} at the validation threshold"
        path = subject_view(out_dir / "views", store, sid, cfg.source, threshold, title, pp, cached, method, settings)
        if path is not None:
            made[sid] = str(path.relative_to(out_dir))
    return made


def _records(split: ScoredSplit) -> list:
    return records_from_arrays(split.subject_ids, split.slice_indices, split.maps, split.gt, split.brain)


def _example_figure(figs: list[dict[str, np.ndarray]], pp: PostProcess, threshold: float, path: Path) -> None:
    """figures/examples.png: input, translation, cyclic reconstruction, map, pred_mask, ground truth per row."""
    rows, titles = [], []
    for fig in figs:
        amap, brain = pp.apply_map(fig["anomaly_map"], fig["brain"])
        row = {"input": fig["source"], "anomaly map": amap,
               "pred_mask": pp.apply_mask((amap >= threshold) & brain), "ground truth": fig["gt"]}
        if "translation" in fig:
            row["translation"] = fig["translation"]
            row["cyclic reconstruction"] = fig["reconstruction"]
        rows.append(row)
        titles.append(fig["title"])
    if rows:
        columns = [c for c in ("input", "translation", "cyclic reconstruction", "anomaly map", "pred_mask",
                               "ground truth") if c in rows[0]]
        figure_grid(rows, columns, path, titles)


def _refuse_other_settings(out_dir: Path, key: EvaluationKey) -> None:
    """OutputExistsError if out_dir/metrics.json holds an evaluation made with other settings."""
    path = out_dir / METRICS_JSON
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # unreadable: nothing worth keeping
    then = old.get("evaluation_settings")
    if not isinstance(then, dict):  # written by an earlier version: compare what it recorded
        then = {"slices": old.get("slices"), "postprocess": old.get("postprocess"),
                "score": {k: v for k, v in (old.get("score_config") or {}).items() if k not in SPEED_ONLY_SCORE_KEYS}}
    now = key.as_dict()
    differ = [k for k in ("slices", "score", "postprocess", "eval", "splits") if k in then and then[k] != now[k]]
    if differ:
        shown = {"slices": "slices", "postprocess": "postprocess", "score": "another score config",
                 "eval": "other threshold-search settings", "splits": "other subjects or another store"}
        raise OutputExistsError(
            f"{path} holds an evaluation with other settings ("
            + "; ".join(f"{shown[k]}: {then[k]!r} there, {now[k]!r} now" if k in ("slices", "postprocess")
                        else shown[k] for k in differ)
            + "); pass --overwrite to replace it (the run's threshold for `mmccd score` changes with it) "
              "or --out to write this evaluation elsewhere")


__all__ = ["Evaluation", "EvaluationKey", "checkpoint_digests", "evaluate_on_test_data", "evaluate_run",
           "evaluation_key", "prepare_test_store"]
