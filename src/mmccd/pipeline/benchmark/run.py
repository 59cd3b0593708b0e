"""`mmccd benchmark`: every method on every contrast pair, trained and evaluated under one protocol.

    OUT/
      prepared/                       the training data's store; splits.json and (--folds K) folds.json, written once
      prepared-test/                  with --test-data: every case with a segmentation is a test subject
      runs/[fold-<k>/[seed-<s>/]]<method>_<source>-<target>/   one run per method, pair, fold (and seed), holding:
        eval-max_tumour/              the reference protocol: each test subject's max-tumour slice
        eval-all/                     whole volumes: every slice with brain; threshold on validation volumes
        eval-<slices>-field/          the same with the field's post-processing (--postprocess field)
        eval-test-data-<slices>/      the same on --test-data (threshold from the run's own validation subjects)
      results.md  results.csv  results.json  report.html  figures/     (report.py)

Without --folds every run uses the store's split (splits.json); with --folds K, run k is trained on fold k's
training subjects, chooses its threshold on fold k's validation subjects and is tested on fold k's test
subjects: every subject is tested once. It resumes where it stopped: prepared cases are reused; a run
whose networks are all finished is not trained again; maps are cached in RUN/maps/; an evaluation whose
inputs are unchanged (the fingerprint in eval-*/metrics.json) is read back, not recomputed.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmccd.config import MODALITIES, ExperimentConfig, load_config, to_dict
from mmccd.data.prepare import PrepareSummary, prepare_dataset
from mmccd.data.splits import FOLDS_JSON, Split, load_or_create_folds
from mmccd.data.store import PREPARE_JSON, PreparedStore
from mmccd.errors import ConfigError, OutputExistsError
from mmccd.evaluation.postprocess import PostProcess
from mmccd.locks import clear, contents, holds_folder_lock
from mmccd.pipeline.benchmark.jobs import EvalPlan, TestSet, evaluate_spec, run_all
from mmccd.pipeline.benchmark.plan import (
    DEFAULT_METHODS,
    DEFAULT_PAIRS,
    default_seed_rows,
    estimate_training,
    parse_pair,
    plan_runs,
    row_name,
    split_variant,
)
from mmccd.pipeline.benchmark.report import describe_scoring, write_results
from mmccd.pipeline.benchmark.results import make_entries, seed_study, write_views
from mmccd.pipeline.evaluate import prepare_test_store
from mmccd.provenance import code_version
from mmccd.scoring import resolve_scoring

log = logging.getLogger("mmccd")

PROTOCOLS = ("max_tumour", "all")  # per max-tumour slice (reference), per whole volume
INTERNAL, EXTERNAL = "held-out test split", "test-data"
NO_POSTPROCESS = PostProcess()
SEED_METHODS = ("mmccd", "cyclic-unet", "dae")


def benchmark_command(data: Path, out: Path, preset: str | Path, methods: Sequence[str], pairs: Sequence[str],
                      test_data: Path | None, postprocess: PostProcess, protocols: Sequence[str],
                      scoring: str = "auto", folds: int | None = None, profiles: Sequence[str] = (),
                      seeds: Sequence[int] = (), jobs: int = 1, test_layout: Path | None = None,
                      seed_methods: Sequence[str] | None = None) -> str:
    """The `mmccd benchmark` command line that reproduces these results (written into results.md)."""
    parts = ["mmccd", "benchmark", "--data", str(data), "--preset", str(preset), "--out", str(out),
             "--methods", *methods, "--pairs", *pairs]
    if folds:
        parts += ["--folds", str(folds)]
    if test_data is not None:
        parts += ["--test-data", str(test_data)] + (["--test-layout", str(test_layout)] if test_layout else [])
    for flag, value in (("--erode", postprocess.erode), ("--median", postprocess.median),
                        ("--min-component", postprocess.min_component)):
        if value:
            parts += [flag, str(value)]
    if profiles:
        parts += ["--postprocess", *profiles]
    if tuple(protocols) != PROTOCOLS:
        parts += ["--protocols", *protocols]
    if scoring != "auto":
        parts += ["--scoring", str(scoring)]
    if seeds:
        parts += ["--seeds", *map(str, seeds)]
        if seed_methods is not None:
            parts += ["--seed-methods", *seed_methods]
    if jobs != 1:
        parts += ["--jobs", str(jobs)]
    return shlex.join(parts)


@holds_folder_lock("out", "benchmark")  # one writer per benchmark folder; its jobs lock their runs
def run_benchmark(data: str | Path, out: str | Path, preset: str | Path = "cpu",
                  methods: Sequence[str] = DEFAULT_METHODS, pairs: Sequence[str] = DEFAULT_PAIRS,
                  test_data: str | Path | None = None, postprocess: PostProcess = NO_POSTPROCESS,
                  overwrite: bool = False, protocols: Sequence[str] = PROTOCOLS,
                  device: str | None = None, scoring: str = "auto", folds: int | None = None,
                  profiles: Sequence[str] = (), seeds: Sequence[int] = (), jobs: int = 1,
                  test_layout: str | Path | None = None, estimate_only: bool = False,
                  seed_methods: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Prepare (or reuse), train (or reuse), evaluate every method on every pair; write the results in `out`.

    pairs:     "source:target" contrast pairs, e.g. ("flair:t2", "t1:t2"); "t2:flair=mmccd,dae" restricts a pair
               to some of `methods`' ... methods (any methods, in fact)
    folds:     K for subject-level K-fold cross-validation (folds.json); None: the store's split
    test_data: a second folder of cases (`test_layout`: its file layout); every case with a segmentation is
               also evaluated as test, with the threshold chosen on the run's own validation subjects
    protocols: "max_tumour" (one slice per subject, the reference) and/or "all" (whole volumes)
    profiles:  named post-processing profiles (e.g. "field") reported beside the raw numbers of every row
    seeds:     extra training seeds for fold 0 (or the single split): training noise
    seed_methods: the rows (of `methods`) the seed study repeats; default mmccd, cyclic-unet, dae and their
               variants that only score differently (evaluated on each seed's networks)
    jobs:      runs trained and evaluated in parallel processes (each with cores / jobs torch threads)
    device:    for scoring only (training uses the preset's, so runs stay resumable)
    scoring:   "auto" (each method's default: `fast` for MMCCD), "run" (each run's own), or a preset
    Returns one entry per method, pair, test set and post-processing (the rows of results.json)."""
    t0 = time.perf_counter()
    version = code_version()  # the code this call runs (the files may change while it does)
    data, out = Path(data), Path(out)
    test_data = Path(test_data) if test_data is not None else None
    methods = list(dict.fromkeys(methods))
    pair_specs = [parse_pair(p, methods) for p in pairs]
    if len({(s, t) for s, t, _ in pair_specs}) != len(pair_specs):
        raise ConfigError(f"contrast pairs {list(pairs)}: a pair is given twice")
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise ConfigError(f"protocols {bad or '(none)'}: expected one or more of {', '.join(PROTOCOLS)}")
    first_methods = pair_specs[0][2]
    seed_rows = [] if not seeds else \
        default_seed_rows(preset, first_methods, SEED_METHODS) if seed_methods is None else list(seed_methods)
    if seeds and (unknown := [m for m in seed_rows if m not in first_methods]):
        raise ConfigError(f"--seed-methods {' '.join(unknown)}: not among the methods of the first pair "
                          f"({' '.join(first_methods)}), the one the seed study repeats")
    base = load_config(preset)
    pps = (postprocess, *(PostProcess.profile(p, base.prepare.size) for p in profiles if p != "none"))
    for _, _, ms in pair_specs:  # an unknown method, variant preset or scoring preset fails now, not after hours
        for m in ms:
            method, variant = split_variant(m)
            resolve_scoring(load_config(variant or preset, {"method": method}), scoring)
    _prepare_out(out, overwrite)

    contrasts = sorted({c for s, t, _ in pair_specs for c in (s, t)}, key=MODALITIES.index)
    prepared, split_list = prepare_and_split(data, out, base, contrasts, folds)
    store = PreparedStore.open(out / "prepared")
    splits = store.splits()
    labelled = sorted(splits["train"] + splits["val"] + splits["test"])
    specs = plan_runs(out, preset, pair_specs, split_list, cv=bool(folds), seeds=seeds, seed_methods=seed_rows)

    test_sets = [TestSet(INTERNAL)]
    external: dict[str, Any] | None = None
    if test_data is not None:
        sources = sorted({s for s, _, _ in pair_specs}, key=MODALITIES.index)
        ids, ext_summary = prepare_test_store(test_data, out / "prepared-test", store.config, sources,
                                              Path(test_layout) if test_layout else None)
        overlap = sorted(set(ids) & set(labelled))
        if overlap:
            log.warning("%d --test-data case(s) share an id with the benchmark's cases: %s",
                        len(overlap), ", ".join(overlap[:5]))
        test_sets.append(TestSet(EXTERNAL, out / "prepared-test", tuple(ids)))
        external = {"path": str(test_data), "n_test_subjects": len(ids), "skipped": ext_summary.skipped,
                    "overlapping_ids": overlap, "layout": str(test_layout) if test_layout else None}
    plan = EvalPlan(tuple(protocols), pps, tuple(test_sets), scoring, device)

    estimate = estimate_training(specs, jobs)
    n_evals = len(specs) * len(protocols) * len(pps) * len(test_sets)
    log.info("benchmark plan: %d runs (%s), %d evaluations; %s", len(specs),
             f"{folds} folds" if folds else "the store's split", n_evals, estimate.describe())
    if estimate_only:
        return []
    run_all(out / "prepared", specs, plan, jobs=jobs)

    reported = [s for s in specs if not s.support]
    evals = {spec: evaluate_spec(spec, plan) for spec in reported}  # all reused: read back from their folders
    main_seed = {f"{s}:{t}": load_config(preset, {"source": s, "target": t}).train.seed for s, t, _ in pair_specs}
    entries = make_entries(reported, evals, out, protocols, [pp.describe() for pp in pps],
                           [t.label for t in test_sets], main_seed, describe_scoring)
    listed = [(row_name(m), f"{s}:{t}") for s, t, ms in pair_specs for m in ms]  # the order the user gave
    entries.sort(key=lambda e: (listed.index((e["method"], e["pair"])), e["test_set"] != INTERNAL,
                                e["postprocess"] != pps[0].describe()))
    seeds_table = seed_study(reported, evals, protocols, INTERNAL, pps[0].describe()) if seeds else []
    write_views(out, entries, reported, evals, INTERNAL, pps[0].describe(), store)
    meta = {
        "command": benchmark_command(data, out, preset, methods, list(pairs), test_data, postprocess, protocols,
                                     scoring, folds, profiles, seeds, jobs, Path(test_layout) if test_layout else None,
                                     seed_methods),
        "preset": str(preset), "scoring": scoring, "code_version": version, "config": to_dict(base),
        "data": str(data), "protocols": list(protocols), "folds": folds,
        "splits": [s.as_dict() for s in split_list], "split_seed": splits.get("seed"),
        "n_prepared": len(prepared.prepared) + len(prepared.reused), "skipped": prepared.skipped,
        "n_labelled": len(labelled),
        "pairs": [[s, t, list(ms)] for s, t, ms in pair_specs], "methods": methods,
        "postprocess": [pp.describe() for pp in pps], "test_data": external, "seeds": list(seeds),
        "seed_methods": seed_rows if seeds else [],
        "jobs": jobs, "estimate": estimate.describe(), "wall_seconds_this_call": round(time.perf_counter() - t0, 1),
    }
    write_results(out, entries, meta, evals, seeds_table)
    return entries


def prepare_and_split(data: Path, out: Path, base: ExperimentConfig, contrasts: Sequence[str],
                      folds: int | None) -> tuple[PrepareSummary, list[Split]]:
    """The benchmark's store (OUT/prepared, resumed) and its splits: the store's own, or K subject-level folds
    over every labelled case (OUT/prepared/folds.json, written once)."""
    log.info("benchmark: preparing %s -> %s", data, out / "prepared")
    prepared = prepare_dataset(data, out / "prepared", base.prepare, required=contrasts)
    splits = PreparedStore.open(out / "prepared").splits()
    labelled = sorted(splits["train"] + splits["val"] + splits["test"])
    split_list = ([Split.of_store(splits)] if not folds else
                  load_or_create_folds(out / "prepared" / FOLDS_JSON, labelled, folds, base.prepare.val_fraction,
                                       base.prepare.split_seed))
    return prepared, split_list


def _prepare_out(out: Path, overwrite: bool) -> None:
    if overwrite and out.exists() and contents(out):
        if not ((out / "prepared" / PREPARE_JSON).exists() or (out / "results.json").exists()):
            raise OutputExistsError(f"{out} does not look like a benchmark folder (no prepared/{PREPARE_JSON} or "
                                    "results.json); refusing to delete it: choose another --out")
        log.warning("removing %s (overwrite)", out)
        clear(out)  # its lock stays: this benchmark holds it
    out.mkdir(parents=True, exist_ok=True)


__all__ = ["EXTERNAL", "INTERNAL", "NO_POSTPROCESS", "PROTOCOLS", "benchmark_command", "prepare_and_split", "prepare_test_store",
           "run_benchmark"]
