"""`mmccd preprocess --data RAW_ROOT --out OUT_ROOT`: every raw case folder, in worker processes, resumable.

Each subfolder of RAW_ROOT is one raw case; it becomes OUT_ROOT/<name>/ (a BraTS-layout folder, so
OUT_ROOT can be given to `mmccd prepare --data`). A case whose folder already holds a preprocess.json
made with the same settings is not redone; a case that fails is reported (and the others go on, unless
`stop_on_error`). Each of `workers` processes gets cpu_count / workers threads.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from mmccd.config import MODALITIES
from mmccd.data.raw.pipeline import PreprocessConfig, describe, preprocess_case, reusable
from mmccd.data.raw.reading import find_contrasts
from mmccd.errors import DataError, MmccdError

log = logging.getLogger("mmccd")


@dataclass
class PreprocessSummary:
    done: list[str] = field(default_factory=list)  # preprocessed now
    reused: list[str] = field(default_factory=list)  # finished before, same settings
    failed: list[tuple[str, str]] = field(default_factory=list)  # (case, reason)


def raw_cases(root: str | Path) -> list[Path]:
    """The raw case folders of `root` (its non-hidden subfolders), sorted. DataError when there are none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("the raw data folder does not exist" if not root.exists() else "not a folder", file=root,
                        expected="a folder with one subfolder per raw case", fix="check the --data path")
    cases = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cases:
        raise DataError("no raw case folders", file=root, expected="one subfolder per case",
                        found="no subfolder", fix="to preprocess a single case folder use --case")
    return cases


def _wanted(raw: Path, required: Sequence[str], layout: Mapping[str, str] | None) -> list[str]:
    """The contrasts a finished case must hold to be reused (those present; none when the folder is unreadable)."""
    try:
        return list(find_contrasts(raw, layout))
    except DataError:
        return list(required)


def _one(raw: Path, out: Path, cfg: PreprocessConfig, required: Sequence[str], source: str | None,
         layout: Mapping[str, str] | None, overwrite: bool) -> tuple[str, str | None, str]:
    """Worker: (case, error text or None, one-line description)."""
    try:
        case = preprocess_case(raw, out, cfg, required, source, layout, overwrite)
        return raw.name, None, describe(case)
    except MmccdError as exc:
        return raw.name, str(exc), ""


def preprocess_dataset(data_dir: str | Path, out_root: str | Path, cfg: PreprocessConfig | None = None,
                       required: Sequence[str] = MODALITIES, source: str | None = None,
                       layout: Mapping[str, str] | None = None, workers: int | None = None,
                       overwrite: bool = False, stop_on_error: bool = False) -> PreprocessSummary:
    """Preprocess every raw case folder of `data_dir` into `out_root`/<case>/ (see the module doc).

    workers: processes (default: 1 per 2 CPUs, at most the number of cases to do). Returns the cases done,
    reused and failed (with the reason); with `stop_on_error` the first failure raises instead."""
    cfg = cfg or PreprocessConfig()
    out_root = Path(out_root)
    cases = raw_cases(data_dir)
    summary = PreprocessSummary()
    todo = []
    for raw in cases:
        if not overwrite and reusable(out_root / raw.name, cfg, _wanted(raw, required, layout)):
            summary.reused.append(raw.name)
        else:
            todo.append(raw)
    if summary.reused:
        log.info("reusing %d preprocessed case(s) in %s", len(summary.reused), out_root)
    cpus = os.cpu_count() or 1
    n = max(1, min(workers or max(1, cpus // 2), len(todo))) if todo else 1
    cfg = cfg if cfg.threads else replace(cfg, threads=max(1, cpus // n))
    args = [(raw, out_root / raw.name, cfg, tuple(required), source, dict(layout) if layout else None, overwrite)
            for raw in todo]
    results = []
    with tqdm(total=len(todo), unit="case", dynamic_ncols=True, disable=not todo, desc="preprocess") as bar:
        if n == 1:
            for a in args:
                results.append(_one(*a))
                bar.update()
                if results[-1][1] is not None and stop_on_error:
                    break
        else:
            ctx = multiprocessing.get_context("spawn")  # fork after torch / ITK thread pools can hang
            with ProcessPoolExecutor(n, mp_context=ctx) as pool:
                futures = [pool.submit(_one, *a) for a in args]
                for fut in as_completed(futures):
                    try:
                        results.append(fut.result())
                    except BrokenProcessPool:
                        raise MmccdError(f"a preprocess worker died (out of memory?) after {len(results)} of {len(todo)} "
                                         "case(s); finished cases are kept: run the same command with --workers 1 "
                                         "to resume") from None
                    bar.update()
                    if results[-1][1] is not None and stop_on_error:
                        for f in futures:
                            f.cancel()
                        break
    for name, err, line in sorted(results):
        if err is None:
            summary.done.append(name)
            log.info("%s", line)
        else:
            log.error("%s", err)
            summary.failed.append((name, err))
    if stop_on_error and summary.failed:
        raise MmccdError(summary.failed[0][1])
    return summary
