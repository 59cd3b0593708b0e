"""`mmccd prepare`: NIfTI cases -> prepared store (store.py), one pass over each file.

Per case (`prepare_case`):
  1. load every present modality and the segmentation once; validate the loaded volumes;
  2. brain = any modality != 0; percentile-normalise each modality over the brain (preprocess.py);
  3. axial slices along the axis closest to S-I, original voxel order; keep slices with brain;
  4. crop a square box around the brain (union over slices), resize to S x S
     (bilinear for images, nearest for brain mask and labels);
  5. choose training / evaluation slices (slicing.py).

Per data set (`prepare_dataset`): discover, check every case's headers before any work (all
problems are reported), prepare the rest in worker processes, resume complete cases, then
write splits.json once. Voxel-level problems (NaN, empty volume, labels) are found while
preparing, since that is when the voxels are read. Under torchrun each rank takes the cases
`cases[rank::world]` (with its own worker pool); rank 0 alone writes prepare.json and, after every
rank has finished, splits.json.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmccd.config import MODALITIES, PrepareConfig, to_dict
from mmccd.data.discovery import SEG, Case, find_cases
from mmccd.data.io import load_nifti
from mmccd.data.preprocess import (
    axial_axis,
    bounding_box,
    brain_mask,
    crop,
    normalise,
    percentile_range,
    resize,
    square_box,
    to_slices,
)
from mmccd.data.slicing import select_slices
from mmccd.data.splits import load_or_create_splits
from mmccd.data.store import (
    SPLITS_JSON,
    case_dir,
    is_complete,
    read_prepare_json,
    write_case,
    write_prepare_json,
)
from mmccd.data.validation import check_cases, validate_loaded
from mmccd.distributed import barrier, gather_objects, is_main, local_world_size, progress_kwargs, shard
from mmccd.errors import ConfigError, DataError, MmccdError
from mmccd.locks import clear, contents, holds_folder_lock
from mmccd.progress import progress

log = logging.getLogger("mmccd")

BOX_MARGIN = 4  # px around the brain's bounding box
RESUME_IGNORES = ("workers",)  # PrepareConfig keys that do not change the prepared data


@dataclass
class PreparedCase:
    """One case in the prepared space (what the store holds, in memory).

    images: (n, 4, S, S) float32 in [-1, 1], channels MODALITIES; a missing modality is -1
    brain:  (n, S, S) uint8 0/1
    seg:    (n, S, S) uint8 labels 0..3, or None
    meta:   see `prepare_case`
    """

    images: np.ndarray
    brain: np.ndarray
    seg: np.ndarray | None
    meta: dict[str, Any]


@dataclass
class PrepareSummary:
    prepared: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (case_id, reason)
    reused: list[str] = field(default_factory=list)


def _map_labels(seg: np.ndarray) -> np.ndarray:
    """BraTS labels -> stored 0 bg, 1 necrotic, 2 oedema, 3 enhancing (2021's 4 -> 3)."""
    out = seg.astype(np.uint8) if np.issubdtype(seg.dtype, np.integer) else np.rint(seg).astype(np.uint8)
    out[out == 4] = 3
    return out


def prepare_case(case: Case, cfg: PrepareConfig, required: Sequence[str] | None = None) -> PreparedCase:
    """Load, validate, normalise, slice and crop one case (any subset of modalities, e.g. a single file).

    Raises the first DataError found. meta keys: case_id, source_files, naming, has_seg, modalities,
    modalities_present, original_shape, affine, axial_axis, box (r0, c0, side), size, slice_indices,
    brain_fraction, tumour_voxels, train_slices, eval_slices_all, max_tumour_slice, percentiles."""
    present = [m for m in MODALITIES if m in case.images]
    required = list(required) if required is not None else present
    if not present and not case.problems:
        raise DataError("no image of a known contrast", case=case.case_id, file=case.root,
                        expected=", ".join(MODALITIES), found="none")
    files = case.files
    arrays: dict[str, np.ndarray] = {}
    images = {}
    for key, f in files.items():
        # integer files stay integer until cropped (float32 conversion of the kept voxels only)
        arrays[key], images[key] = load_nifti(f, case.case_id, keep_integers=True)
    result = validate_loaded(case, images, arrays, required, require_seg=False)
    for w in result.warnings:
        log.warning("%s", w)
    if result.errors:
        for e in result.errors[1:]:
            log.error("%s", e)
        raise result.errors[0]

    ref = images[present[0]]
    affine = np.asarray(ref.affine, dtype=float)
    axis = axial_axis(affine)
    shape = arrays[present[0]].shape
    brain3d = brain_mask([arrays[m] for m in present])
    brain = to_slices(brain3d, axis)
    seg = to_slices(_map_labels(arrays[SEG]), axis) if SEG in arrays else None
    box = square_box(brain, BOX_MARGIN)
    sel = select_slices(brain, seg, box[2], cfg.min_brain_fraction, cfg.train_slice_window)
    stored = np.asarray(sel.slice_indices, dtype=np.int64)

    # Everything below works on the stored slices inside the box only (normalisation is elementwise,
    # so normalising the crop equals cropping the normalised volume); the percentiles need the whole brain.
    size = cfg.size
    brain_crop = crop(brain, box, False, stored)
    inside = bounding_box(brain3d)  # the brain's voxels, in the same order, gathered from its box only
    brain_inside = np.ascontiguousarray(brain3d[inside])
    out = np.full((len(stored), len(MODALITIES), size, size), -1.0, dtype=np.float32)
    percentiles: dict[str, list[float]] = {}
    for c, m in enumerate(MODALITIES):
        if m not in arrays:
            continue
        volume = arrays.pop(m)
        lo, hi = percentile_range(volume[inside], brain_inside, cfg.low_percentile, cfg.high_percentile,
                                  case=case.case_id, file=str(files[m]))
        percentiles[m] = [lo, hi]
        norm = normalise(crop(to_slices(volume, axis), box, 0, stored), brain_crop, lo, hi, cfg.normalisation)
        out[:, c] = resize(norm, size, "bilinear")
        del volume, norm
    brain_c = resize(brain_crop.astype(np.float32), size, "nearest").astype(np.uint8)
    seg_c = None if seg is None else resize(crop(seg, box, 0, stored, np.float32), size, "nearest").astype(np.uint8)
    meta = {
        "case_id": case.case_id,
        "source_files": {k: str(v) for k, v in files.items()},
        "naming": case.naming,
        "has_seg": seg is not None,
        "modalities": list(MODALITIES),
        "modalities_present": present,
        "original_shape": [int(s) for s in shape],
        "affine": affine.tolist(),
        "axial_axis": axis,
        "box": list(box),
        "size": size,
        **sel.as_dict(),
        "percentiles": percentiles,
    }
    return PreparedCase(out, brain_c, seg_c, meta)


def _prepare_and_write(case: Case, cfg: PrepareConfig, out_dir: Path,
                       required: Sequence[str]) -> tuple[str, DataError | None]:
    """Worker: prepare one case and write it; returns (case_id, the DataError or None)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one case per process; the processes share the cores
    try:
        pc = prepare_case(case, cfg, required)
        write_case(out_dir, case.case_id, pc.images, pc.brain, pc.seg, pc.meta)
        return case.case_id, None
    except DataError as exc:
        return case.case_id, exc
    finally:
        torch.set_num_threads(threads)  # in-process (one worker) the caller keeps its threads


def _n_workers(cfg: PrepareConfig, n_cases: int) -> int:
    workers = cfg.workers if cfg.workers > 0 else min(4, max(1, (os.cpu_count() or 1) // local_world_size()))
    return max(1, min(workers, n_cases))


def _check_out_dir(out_dir: Path, cfg: PrepareConfig, overwrite: bool) -> None:
    """Refuse a folder prepared with another config (unless overwrite) or a non-store folder."""
    record = read_prepare_json(out_dir) if out_dir.is_dir() else None
    if record is None:
        if out_dir.is_dir() and contents(out_dir):
            raise DataError("the output folder is not empty and not a prepared folder", file=out_dir,
                            fix="choose a new or empty --out folder")
        return
    if overwrite:
        log.warning("removing the prepared folder %s (overwrite)", out_dir)
        clear(out_dir)  # its lock stays: this process holds it
        return
    old = record.get("config") or {}
    diff = {k: (old.get(k), v) for k, v in to_dict(cfg).items() if k not in RESUME_IGNORES and old.get(k) != v}
    if diff:
        raise DataError("the output folder was prepared with another config", file=out_dir,
                        expected="the same prepare settings to resume",
                        found="; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items()),
                        fix="use another --out folder, the same settings, or --overwrite to prepare again")


@holds_folder_lock("out_dir", "prepare")  # one writer per prepared folder (locks.py)
def prepare_dataset(data_dir: str | Path, out_dir: str | Path, cfg: PrepareConfig,
                    layout: dict[str, str] | None = None, on_error: str = "skip", overwrite: bool = False,
                    required: Sequence[str] | None = None) -> PrepareSummary:
    """Prepare every case of `data_dir` into the store `out_dir`, resuming complete cases.

    required: modalities a case must have (default all four); others are stored as -1 when missing.
    on_error: "skip" reports a bad case and continues; "stop" raises the first DataError (after every
    case's header problems have been logged). Returns the ids prepared, reused and skipped (with reasons)."""
    out_dir = Path(out_dir)
    required = list(required) if required is not None else list(MODALITIES)
    unknown = [m for m in required if m not in MODALITIES]
    if unknown:
        raise ConfigError(f"unknown contrast {', '.join(repr(m) for m in unknown)}: expected among "
                          f"{', '.join(MODALITIES)} (other names in the files: pass a layout)")
    cases = find_cases(data_dir, layout)
    if is_main():  # under torchrun: rank 0 sets up the folder, the others wait for it
        _check_out_dir(out_dir, cfg, overwrite)
        out_dir.mkdir(parents=True, exist_ok=True)
        if read_prepare_json(out_dir) is None:
            write_prepare_json(out_dir, cfg, required)
    barrier()

    good, skipped = check_cases(shard(cases), required, require_seg=False, on_error=on_error, read_data=False)
    summary = PrepareSummary(skipped=list(skipped))
    todo = [c for c in good if not is_complete(out_dir, c.case_id)]
    summary.reused = [c.case_id for c in good if is_complete(out_dir, c.case_id)]
    if summary.reused:
        log.info("reusing %d prepared case(s) in %s", len(summary.reused), out_dir)

    workers = _n_workers(cfg, len(todo))
    results: list[tuple[str, DataError | None]] = []
    with progress(total=len(todo), unit="case", disable=not todo, **progress_kwargs("prepare")) as bar:
        if workers == 1:
            for case in todo:
                results.append(_prepare_and_write(case, cfg, out_dir, required))
                bar.update()
                if results[-1][1] is not None and on_error == "stop":
                    break
        else:
            ctx = multiprocessing.get_context("spawn")  # fork after torch/OpenMP init can hang
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = [pool.submit(_prepare_and_write, case, cfg, out_dir, required) for case in todo]
                for fut in as_completed(futures):
                    try:
                        results.append(fut.result())
                    except BrokenProcessPool:  # a worker was killed, most often by the kernel's out-of-memory killer
                        raise MmccdError(
                            f"a prepare worker process died (out of memory?) after {len(results)} of {len(todo)} "
                            f"case(s); the finished ones are kept: run the same command with --workers 1 (or fewer "
                            f"workers) to resume") from None
                    bar.update()
                    if results[-1][1] is not None and on_error == "stop":
                        for f in futures:
                            f.cancel()
                        break

    for case_id, err in results:
        if err is None:
            summary.prepared.append(case_id)
        else:
            log.error("%s", err)
            summary.skipped.append((case_id, str(err)))
            if on_error == "stop":
                raise err

    summary = _merge_ranks(summary)
    if is_main():  # every rank's cases exist now (gathering waited for them)
        complete = sorted(summary.prepared + summary.reused)
        with_seg = [c for c in complete if _has_seg(out_dir, c)]
        if complete:  # splits are written once: never freeze an empty split before any case is fixed
            load_or_create_splits(out_dir / SPLITS_JSON, with_seg, cfg.val_fraction, cfg.test_fraction,
                                  cfg.split_seed)
    barrier()  # no rank returns before splits.json exists
    return summary


def _merge_ranks(summary: PrepareSummary) -> PrepareSummary:
    """Every rank's summary merged, sorted (the summary itself in one process)."""
    parts = gather_objects(summary)
    return PrepareSummary(prepared=sorted(c for p in parts for c in p.prepared),
                          skipped=sorted(s for p in parts for s in p.skipped),
                          reused=sorted(c for p in parts for c in p.reused))


def _has_seg(out_dir: Path, case_id: str) -> bool:
    return bool(json.loads((case_dir(out_dir, case_id) / "meta.json").read_text())["has_seg"])
