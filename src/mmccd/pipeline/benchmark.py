"""`mmccd benchmark`: every method on every contrast pair, trained and evaluated under one protocol.

    OUT/
      prepared/                       the training data's store; splits.json (subject level) written once
      prepared-test/                  with --test-data: every case with a segmentation is a test subject
      runs/<method>_<source>-<target>/  one run per method and pair (`train_run`), holding one folder per protocol:
        eval-max_tumour/              the reference protocol: each test subject's max-tumour slice
        eval-all/                     whole volumes: every slice with brain; threshold on validation volumes
        eval-test-data-<slices>/      the same on --test-data (threshold from the training data's validation)
      results.md  results.csv  results.json  report.html  figures/     (benchmark_report.py)

It resumes where it stopped: prepared cases are reused; a run whose networks are all finished is
not trained again (`train_run` is not called); maps are cached in RUN/maps/; an evaluation whose
inputs are unchanged (the fingerprint in eval-*/metrics.json) is read back, not recomputed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmccd.atomic import atomic_write_text
from mmccd.checkpoints import load_checkpoint
from mmccd.config import (
    METHODS,
    MODALITIES,
    ExperimentConfig,
    PrepareConfig,
    ScoreConfig,
    load_config,
    to_dict,
)
from mmccd.data.prepare import PrepareSummary, prepare_dataset
from mmccd.data.store import PREPARE_JSON, SPLITS_JSON, PreparedStore
from mmccd.errors import ConfigError, DataError, OutputExistsError
from mmccd.evaluation.postprocess import PostProcess
from mmccd.pipeline.benchmark_report import make_entry, write_results
from mmccd.pipeline.evaluate import Evaluation, evaluate_run
from mmccd.pipeline.runs import read_run_config, read_run_info, train_run
from mmccd.provenance import code_version
from mmccd.scoring import build_method, method_class, resolve_scoring

log = logging.getLogger("mmccd")

DEFAULT_METHODS = ("cyclic-unet", "mmccd", "threshold")
DEFAULT_PAIRS = ("flair:t2",)
PROTOCOLS = ("max_tumour", "all")  # per max-tumour slice (reference), per whole volume
INTERNAL, EXTERNAL = "held-out test split", "test-data"
NO_POSTPROCESS = PostProcess()


def parse_pair(text: str) -> tuple[str, str]:
    """'flair:t2' -> ('flair', 't2'): source (the input at inference) and target contrast."""
    parts = text.strip().lower().split(":")
    if len(parts) != 2 or any(p not in MODALITIES for p in parts) or parts[0] == parts[1]:
        raise ConfigError(f"contrast pair '{text}': expected SOURCE:TARGET with two different contrasts of "
                          f"{', '.join(MODALITIES)}, e.g. flair:t2")
    return parts[0], parts[1]


def run_name(method: str, source: str, target: str) -> str:
    return f"{method}_{source}-{target}"


def benchmark_command(data: Path, out: Path, preset: str | Path, methods: Sequence[str], pairs: Sequence[str],
                      test_data: Path | None, postprocess: PostProcess, protocols: Sequence[str],
                      scoring: str = "auto") -> str:
    """The `mmccd benchmark` command line that reproduces these results (written into results.md)."""
    parts = ["mmccd", "benchmark", "--data", str(data), "--preset", str(preset), "--out", str(out),
             "--methods", *methods, "--pairs", *pairs]
    if test_data is not None:
        parts += ["--test-data", str(test_data)]
    for flag, value in (("--erode", postprocess.erode), ("--median", postprocess.median),
                        ("--min-component", postprocess.min_component)):
        if value:
            parts += [flag, str(value)]
    if tuple(protocols) != PROTOCOLS:
        parts += ["--protocols", *protocols]
    if scoring != "auto":
        parts += ["--scoring", str(scoring)]
    return shlex.join(parts)


def run_benchmark(data: str | Path, out: str | Path, preset: str | Path = "cpu",
                  methods: Sequence[str] = DEFAULT_METHODS, pairs: Sequence[str] = DEFAULT_PAIRS,
                  test_data: str | Path | None = None, postprocess: PostProcess = NO_POSTPROCESS,
                  overwrite: bool = False, protocols: Sequence[str] = PROTOCOLS,
                  device: str | None = None, scoring: str = "auto") -> list[dict[str, Any]]:
    """Prepare (or reuse), train (or reuse), evaluate every method on every pair; write the results in `out`.

    pairs:     "source:target" contrast pairs, e.g. ("flair:t2", "t1:t2")
    test_data: a second folder of cases; every case with a segmentation is also evaluated as test,
               with the threshold chosen on the training data's validation subjects
    protocols: "max_tumour" (one slice per subject, the reference) and/or "all" (whole volumes)
    device:    for scoring only (training uses the preset's, so runs stay resumable)
    scoring:   the score settings: "auto" (the `fast` preset's for MMCCD, each run's own for the others),
               "run" (each run's own), or a preset name/YAML whose `score` section is used for every method
    Returns one entry per method, pair and test set (the rows of results.json)."""
    t0 = time.perf_counter()
    version = code_version()  # the code this call runs (the files may change while it does)
    data, out = Path(data), Path(out)
    test_data = Path(test_data) if test_data is not None else None
    methods = list(dict.fromkeys(methods))
    pair_list = [parse_pair(p) for p in pairs]
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise ConfigError(f"protocols {bad or '(none)'}: expected one or more of {', '.join(PROTOCOLS)}")
    for m in methods:  # an unknown method or scoring preset fails now, not after hours
        build_method(load_config(preset, {"method": m}))
        resolve_scoring(load_config(preset, {"method": m}), scoring)
    _prepare_out(out, overwrite)

    base = load_config(preset)
    contrasts = sorted({c for pair in pair_list for c in pair}, key=MODALITIES.index)
    log.info("benchmark: preparing %s -> %s", data, out / "prepared")
    prepared = prepare_dataset(data, out / "prepared", base.prepare, required=contrasts)
    store = PreparedStore.open(out / "prepared")
    splits = store.splits()
    test_sets: list[tuple[str, Path | None, list[str] | None]] = [(INTERNAL, None, None)]
    external: dict[str, Any] | None = None
    if test_data is not None:
        sources = sorted({s for s, _ in pair_list}, key=MODALITIES.index)
        ids, ext_summary = prepare_test_store(test_data, out / "prepared-test", store.config, sources)
        overlap = sorted(set(ids) & set(splits["train"] + splits["val"]))
        if overlap:
            log.warning("%d --test-data case(s) share an id with training/validation cases: %s",
                        len(overlap), ", ".join(overlap[:5]))
        test_sets.append((EXTERNAL, out / "prepared-test", ids))
        external = {"path": str(test_data), "n_test_subjects": len(ids), "skipped": ext_summary.skipped,
                    "overlapping_ids": overlap}

    entries: list[dict[str, Any]] = []
    evaluations: dict[tuple[str, str], dict[str, Evaluation]] = {}  # (run, test set) -> {slices: evaluation}
    for source, target in pair_list:
        for method in sorted(methods, key=_providers_first):  # a network another method reuses is trained first
            cfg = load_config(preset, {"method": method, "source": source, "target": target})
            run = out / "runs" / run_name(method, source, target)
            reuse = shared_run(out / "runs", method, source, target)
            log.info("benchmark: %s %s -> %s", method, source, target)
            ensure_trained(out / "prepared", run, cfg, reuse)
            settings = resolve_scoring(read_run_config(run), scoring)
            for label, t_store, t_ids in test_sets:
                evals = {slices: evaluate_protocol(run, settings, slices, postprocess, t_store, t_ids, device)
                         for slices in protocols}
                evaluations[(run.name, label)] = evals
                entries.append(make_entry(cfg, run, out, label, evals, training_time(run, reuse)))
    order = {(m, p): i for i, (m, p) in enumerate((m, p) for p in pair_list for m in methods)}
    entries.sort(key=lambda e: (order[(e["method"], (e["source"], e["target"]))], e["test_set"] != INTERNAL))
    meta = {
        "command": benchmark_command(data, out, preset, methods, [f"{s}:{t}" for s, t in pair_list], test_data,
                                     postprocess, protocols, scoring),
        "preset": str(preset), "scoring": scoring, "code_version": version, "config": to_dict(base), "data": str(data), "protocols": list(protocols),
        "splits": {k: splits[k] for k in ("train", "val", "test")}, "split_seed": splits.get("seed"),
        "n_prepared": len(prepared.prepared) + len(prepared.reused), "skipped": prepared.skipped,
        "pairs": [list(p) for p in pair_list], "methods": methods, "postprocess": postprocess.describe(),
        "test_data": external, "wall_seconds_this_call": round(time.perf_counter() - t0, 1),
    }
    write_results(out, entries, meta, evaluations)
    return entries


def _prepare_out(out: Path, overwrite: bool) -> None:
    if overwrite and out.exists() and any(out.iterdir()):
        if not ((out / "prepared" / PREPARE_JSON).exists() or (out / "results.json").exists()):
            raise OutputExistsError(f"{out} does not look like a benchmark folder (no prepared/{PREPARE_JSON} or "
                                    "results.json); refusing to delete it: choose another --out")
        log.warning("removing %s (overwrite)", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def prepare_test_store(test_data: Path, root: Path, cfg: PrepareConfig,
                       required: Sequence[str]) -> tuple[list[str], PrepareSummary]:
    """Prepare `test_data` like the training data into `root`; every case with a segmentation is a test subject.

    Its splits.json says so (train and val empty); it is derived from the prepared cases, so rewritten each call."""
    (root / SPLITS_JSON).unlink(missing_ok=True)
    summary = prepare_dataset(test_data, root, cfg, required=required)
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


def is_trained(prepared: Path, run: Path, cfg: ExperimentConfig) -> bool:
    """True when `run` was trained with `cfg` (on this store's prepare settings) and every network finished."""
    cfg = dataclasses.replace(cfg, prepare=PreparedStore.open(prepared).config)
    if not (run / "config.yaml").exists() or not (run / "run_info.json").exists() or read_run_config(run) != cfg:
        return False
    for name in build_method(cfg).losses():
        path = run / "checkpoints" / f"{name}.pt"
        if not path.exists() or not load_checkpoint(path).get("finished", False):
            return False
    return True


def ensure_trained(prepared: Path, run: Path, cfg: ExperimentConfig, reuse: Path | None) -> bool:
    """Train what is missing in `run` (resuming unfinished networks); True if anything was trained."""
    if is_trained(prepared, run, cfg):
        log.info("benchmark: %s is trained; reusing it", run)
        return False
    train_run(prepared, run, cfg, resume=True, reuse_backward_from=reuse)
    return True


def training_time(run: Path, reuse: Path | None) -> dict[str, Any]:
    """Wall-clock training seconds per network of `run` (from run_info.json); a network copied from
    `reuse` (MMCCD's backward UNet from Cyclic UNet) counts with the time it took there."""
    own = read_run_info(run).get("train_seconds", {})
    shared = read_run_info(reuse).get("train_seconds", {}) if reuse is not None else {}
    by_net: dict[str, float | None] = {}
    notes = []
    for name in sorted(p.stem for p in (run / "checkpoints").glob("*.pt")):
        if name in own:
            by_net[name] = own[name]
        elif name in shared:
            by_net[name] = shared[name]
            notes.append(f"{name} shared with {reuse.name if reuse else ''}")
        else:
            by_net[name] = None
            notes.append(f"{name}: time not recorded")
    known = [v for v in by_net.values() if v is not None]
    total = round(sum(known), 1) if len(known) == len(by_net) else None
    return {"train_seconds": total, "train_seconds_by_net": by_net, "train_note": "; ".join(notes)}


def shared_run(runs: Path, method: str, source: str, target: str) -> Path | None:
    """The run in `runs` whose network `method` reuses (`AnomalyMethod.shared_networks`), if any."""
    shared = method_class(method).shared_networks
    return runs / run_name(next(iter(shared.values())), source, target) if shared else None


def _providers_first(method: str) -> bool:
    """Sort key: methods whose networks others share (Cyclic UNet for MMCCD) before the others."""
    return not any(method in method_class(m).shared_networks.values() for m in METHODS)


def evaluate_protocol(run: Path, settings: ScoreConfig, slices: str, postprocess: PostProcess,
                      test_store: Path | None = None, test_ids: list[str] | None = None,
                      device: str | None = None) -> Evaluation:
    """Evaluate `run` with one slice protocol into RUN/eval-[test-data-]<slices>/, or reuse it when it was
    made with the same settings (the evaluation's fingerprint)."""
    folder = run / (f"eval-{slices}" if test_store is None else f"eval-test-data-{slices}")
    return evaluate_run(run, settings, slices=slices, device=device, postprocess=postprocess, out_dir=folder,
                        test_store=test_store, test_ids=test_ids, overwrite=True, reuse=True)
