"""Running a benchmark's runs: train what is missing, then evaluate every protocol, in order or in parallel.

With `jobs` > 1 each run is a job in its own process (`torch` threads = `threads`); a run that reuses another
run's network (MMCCD reusing Cyclic UNet's backward UNet) starts when that run has finished. Everything a job
writes lands in its run folder, so a killed benchmark resumes: finished networks and evaluations are reused.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch

from mmccd.checkpoints import load_checkpoint
from mmccd.config import ScoreConfig
from mmccd.data.store import PreparedStore
from mmccd.evaluation.postprocess import PostProcess
from mmccd.pipeline.benchmark.plan import RunSpec
from mmccd.pipeline.evaluate import Evaluation, evaluate_run
from mmccd.pipeline.runs import read_run_config, train_run
from mmccd.progress import progress
from mmccd.scoring import build_method, resolve_scoring

log = logging.getLogger("mmccd")


@dataclass(frozen=True)
class TestSet:
    """Where a run is evaluated: its own test subjects (store None), or every labelled case of another store."""

    label: str
    store: Path | None = None
    ids: tuple[str, ...] | None = None

    @property
    def folder_prefix(self) -> str:
        return "eval-" if self.store is None else "eval-test-data-"


def eval_folder(run: Path, slices: str, postprocess: str | None = None, variant: str | None = None,
                prefix: str = "eval-") -> Path:
    """Where one evaluation of a run lives: RUN/eval-SLICES[-PROFILE][@VARIANT] (prefix eval-test-data- for
    another store's cases); postprocess None for the raw maps."""
    return run / f"{prefix}{slices}{'-' + postprocess if postprocess else ''}{'@' + variant if variant else ''}"


@dataclass(frozen=True)
class EvalPlan:
    """The evaluations of every run: slice protocols x post-processings x test sets."""

    protocols: tuple[str, ...]
    postprocess: tuple[PostProcess, ...]  # the first is the raw (or the user's) setting
    test_sets: tuple[TestSet, ...]
    scoring: str | Path
    device: str | None = None

    def folder(self, run: Path, test_set: TestSet, slices: str, pp: PostProcess, variant: str | None = None) -> Path:
        tag = None if pp is self.postprocess[0] else (pp.name or "pp")
        return eval_folder(run, slices, tag, variant, test_set.folder_prefix)


def is_trained(prepared: Path, spec: RunSpec) -> bool:
    """True when the run was trained with its config on its split and every network finished."""
    run, cfg = spec.run, dataclasses.replace(spec.cfg, prepare=PreparedStore.open(prepared).config)
    if not (run / "config.yaml").exists() or not (run / "run_info.json").exists() or read_run_config(run) != cfg:
        return False
    for name in build_method(cfg).losses():
        path = run / "checkpoints" / f"{name}.pt"
        if not path.exists() or not load_checkpoint(path).get("finished", False):
            return False
    return True


def ensure_trained(prepared: Path, spec: RunSpec) -> bool:
    """Train what is missing in the run (resuming unfinished networks); True if anything was trained. A variant
    that shares the plain method's run trains nothing (that run is trained by its own job, first)."""
    if spec.shares_run:
        return False
    if is_trained(prepared, spec):
        log.info("benchmark: %s is trained; reusing it", spec.run)
        return False
    train_run(prepared, spec.run, spec.cfg, resume=True, reuse_backward_from=spec.reuse, mirror_from=spec.mirror,
              split=spec.split)
    return True


def evaluate_spec(spec: RunSpec, plan: EvalPlan) -> dict[tuple[str, str, str], Evaluation]:
    """Every evaluation of one trained run, reused when made with the same settings.

    Returns {(test set label, slices, postprocess description): Evaluation}."""
    # a variant scores with its own preset's score section; the others as the benchmark's --scoring says
    settings: ScoreConfig = (spec.cfg.score if spec.variant else resolve_scoring(read_run_config(spec.run), plan.scoring))
    out = {}
    for test_set in plan.test_sets:
        for slices in plan.protocols:
            for pp in plan.postprocess:
                out[(test_set.label, slices, pp.describe())] = evaluate_run(
                    spec.run, settings, slices=slices, device=plan.device, postprocess=pp,
                    out_dir=plan.folder(spec.run, test_set, slices, pp, spec.variant_tag if spec.shares_run else None),
                    test_store=test_set.store,
                    test_ids=list(test_set.ids) if test_set.ids is not None else None, overwrite=True, reuse=True,
                    views="none")  # the benchmark writes its own views, from these evaluations' cached maps
    return out


def run_spec(prepared: Path, spec: RunSpec, plan: EvalPlan) -> str:
    """One job: train (or reuse) then evaluate (or reuse; a supporting run is not evaluated). Returns its label."""
    ensure_trained(prepared, spec)
    if not spec.support:
        evaluate_spec(spec, plan)
    return spec.label


def _after(spec: RunSpec, specs: Sequence[RunSpec]) -> set[Path]:
    """The runs of `specs` that must be finished first: the ones whose networks `spec` reuses or mirrors, and the
    plain method's run that a scoring-only variant evaluates."""
    planned = {s.run for s in specs if not s.shares_run}
    need = {r for r in (spec.reuse, spec.mirror) if r is not None} | set(spec.after)
    if spec.shares_run:
        need.add(spec.run)
    return need & planned


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """End this worker process once `parent` is gone (a `kill` of the benchmark, not only Ctrl-C of its terminal,
    must not leave workers training into the run folders that the next benchmark resumes)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(3)  # what it was writing is under a temporary name (atomic.py); the rerun resumes

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_init(threads: int, parent: int | None = None) -> None:
    if parent is not None:
        _exit_with_parent(parent)
    torch.set_num_threads(threads)
    os.environ["MMCCD_PROGRESS"] = "log"  # no bars from several processes on one terminal
    logging.basicConfig(level=logging.INFO, format="%(levelname)s [worker %(process)d] %(message)s", force=True)


def run_all(prepared: Path, specs: Sequence[RunSpec], plan: EvalPlan, jobs: int = 1, threads: int | None = None,
            job: Callable[[Path, RunSpec, EvalPlan], str] | None = None) -> None:
    """Every spec's job (default `run_spec`); with jobs > 1 in a pool of processes, each run after the run it
    reuses a network of."""
    job = job or run_spec
    bar = progress(total=len(specs), desc="benchmark runs", unit="run")
    if jobs <= 1:
        for spec in specs:
            log.info("benchmark: %s", spec.label)
            job(prepared, spec, plan)
            bar.update(1)
        bar.close()
        return
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    waiting = list(specs)
    running: dict[Future, RunSpec] = {}
    done: set[Path] = set()  # runs whose job finished (a shared run: its plain method's job)
    failed: list[tuple[RunSpec, BaseException]] = []
    ctx = multiprocessing.get_context("spawn")  # torch and fork do not mix
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads, os.getpid())) as pool:
        while waiting or running:
            ready = [s for s in waiting if _after(s, specs) <= done]
            for spec in ready[: max(0, jobs - len(running))] if not failed else []:
                waiting.remove(spec)
                running[pool.submit(job, prepared, spec, plan)] = spec
                log.info("benchmark: started %s", spec.label)
            if not running:
                break  # nothing can start: a run it depends on failed
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                spec = running.pop(future)
                try:
                    future.result()
                    if not spec.shares_run:
                        done.add(spec.run)
                    bar.update(1)
                    log.info("benchmark: finished %s", spec.label)
                except BaseException as exc:  # the others finish (they resume later); this one is reported
                    failed.append((spec, exc))
                    log.error("benchmark: %s failed: %s", spec.label, exc)
    bar.close()
    if failed:
        raise failed[0][1]


__all__ = ["EvalPlan", "TestSet", "ensure_trained", "evaluate_spec", "is_trained", "run_all", "run_spec"]
