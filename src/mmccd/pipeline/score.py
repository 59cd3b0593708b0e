"""`mmccd score`: anomaly maps for new cases, written on the input's voxel grid.

For each case: <case>_anomaly.nii.gz (float32 map), <case>_pred_mask.nii.gz (uint8, map >= threshold),
<case>_view.html (the map over the scan in three planes, in any browser, offline)
and <case>_montage.png, all on the input's exact grid (same shape and affine) so they overlay the
input in ITK-SNAP or 3D Slicer. Only the source contrast is needed.

Under torchrun each rank scores the cases `cases[rank::world]` on its own GPU; every output file
belongs to one case, so ranks never write the same file; the summaries are merged on every rank.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import nibabel as nib
import numpy as np

from mmccd.atomic import DiskFullError, atomic_write_text, disk_full_error
from mmccd.config import SPEED_ONLY_SCORE_KEYS, ExperimentConfig, ScoreConfig, to_dict
from mmccd.data.discovery import Case, case_from_path, find_cases
from mmccd.data.io import load_nifti, save_nifti_like
from mmccd.distributed import dist_info, gather_objects, progress_kwargs, shard
from mmccd.errors import ConfigError, DataError, MmccdError, OutputExistsError
from mmccd.evaluation.figures import montage
from mmccd.evaluation.viewer import case_view_name, write_case_view
from mmccd.locks import holds_folder_lock
from mmccd.memory import OutOfMemoryError
from mmccd.pipeline.calibrate import scorer
from mmccd.pipeline.runs import load_method
from mmccd.progress import progress
from mmccd.provenance import run_info
from mmccd.scoring import resolve_scoring
from mmccd.scoring.volume import score_case

log = logging.getLogger("mmccd")
SCORE_INFO = "score_info.json"


@dataclass
class ScoreSummary:
    written: dict[str, list[Path]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _expand_inputs(paths: list[Path], source: str) -> list[Case]:
    cases: list[Case] = []
    for p in paths:
        p = Path(p)
        if p.is_dir() and not any(c.is_file() and ".nii" in c.name for c in p.iterdir()):
            cases.extend(find_cases(p))  # a folder of case folders
        elif p.is_file():
            cases.append(_file_case(p, source))
        else:
            cases.append(case_from_path(p))
    return cases


def _file_case(path: Path, source: str) -> Case:
    """A single NIfTI file: its contrast from the name (_flair, -t2f, ...) when the name says one, so that a T2
    image is never scored as FLAIR (the loop then reports the missing source); otherwise the run's source."""
    try:
        return case_from_path(path)
    except DataError:
        return case_from_path(path, modality=source)


def find_threshold(run_dir: Path, settings: ScoreConfig, warn: bool = True) -> tuple[float | None, str | None]:
    """The validation threshold chosen for maps scored with `settings`: (threshold, the metrics.json it is from).

    Looked up in RUN/metrics.json (`mmccd evaluate`), then the benchmark's evaluations RUN/eval-all/ (whole
    volumes, what `mmccd score` writes) and RUN/eval-max_tumour/; a threshold chosen on maps scored with other
    settings (speed-only keys aside) does not fit and is not used. (None, None) with a warning that names
    the command giving one when there is none."""
    wanted = {k: v for k, v in to_dict(settings).items() if k not in SPEED_ONLY_SCORE_KEYS}
    mismatched = []
    for folder in (run_dir, run_dir / "eval-all", run_dir / "eval-max_tumour"):
        path = folder / "metrics.json"
        if not path.exists():
            continue
        try:
            chosen = json.loads(path.read_text())
            threshold, scored_with = float(chosen["threshold"]), chosen.get("score_config") or {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is unreadable ({type(exc).__name__}: {exc}); run `mmccd evaluate "
                              f"--run {run_dir}` again or pass --threshold") from None
        if all(scored_with.get(k, v) == v for k, v in wanted.items()):
            return threshold, str(path.resolve())
        mismatched.append(path)
    how = f"`mmccd evaluate --run {run_dir}` (with the same --scoring) or pass --threshold"
    if not warn:
        return None, None
    if mismatched:
        log.warning("the thresholds in %s were chosen on maps scored with other settings, so they do not fit these "
                    "maps: writing float maps only; for a threshold run %s", ", ".join(map(str, mismatched)), how)
    else:
        log.warning("no validation threshold for %s: writing float maps only; for one run %s", run_dir, how)
    return None, None


@holds_folder_lock("out_dir", "score")  # one writer per output folder (locks.py)
def score_cases(run_dir: Path | None, inputs: list[Path], out_dir: Path, threshold: float | None = None,
                device: str | None = None, overwrite: bool = False, on_error: str = "skip",
                scoring: str | Path | None = "auto", view: bool = True, model: str | Path | None = None,
                preprocess: bool = False) -> ScoreSummary:
    """Score case folders / single NIfTI files with a trained run, or with a model file (`model`, e.g. an
    `mmccd export` file or "builtin:flair-t2"); one bad case is reported and skipped.

    `scoring`: "auto" (the method's default: `fast` for MMCCD; a model file's own settings), "run" (the run's
    own) or a preset whose `score` section is used; the threshold is the validation threshold for maps scored
    that way. view: also write <case>_view.html, the map over the scan in a browser (three planes, NiiVue)."""
    out_dir = Path(out_dir)
    if (run_dir is None) == (model is None):
        raise ConfigError("score with a trained run (--run RUN) or a model file (--model FILE), one of the two")
    if model is not None:
        method, settings, own, threshold_from, origin = _from_model(model, device, scoring)
    else:
        run_dir = Path(run_dir)
        method = load_method(run_dir, device)
        settings = resolve_scoring(method.cfg, scoring)
        method = scorer(run_dir, method, settings)  # with its healthy calibration, when the settings ask
        own, threshold_from = find_threshold(run_dir, settings) if threshold is None else (None, None)
        origin = run_dir
    cfg = method.cfg
    threshold, threshold_from = (threshold, "argument") if threshold is not None else (own, threshold_from)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = ScoreSummary()
    raw: dict[str, Any] = {}  # case id -> its PreprocessedCase (with --preprocess)
    cases = _expand_inputs(inputs, cfg.source) if not preprocess else _preprocess(inputs, out_dir, cfg.source, raw,
                                                                                   summary)
    for case in _rank_cases(cases):
        writing = False  # from a case's first file on, a failure removes the files of that case: all or none
        try:
            outputs = [out_dir / f"{case.case_id}_anomaly.nii.gz", out_dir / f"{case.case_id}_pred_mask.nii.gz",
                       out_dir / f"{case.case_id}_montage.png", out_dir / case_view_name(case.case_id)]
            existing = [p for p in outputs if p.exists()]
            if existing and not overwrite:
                raise OutputExistsError(f"{existing[0]} exists; pass --overwrite to replace it")
            result = score_case(method, settings, case, threshold)
            if case.case_id in raw:  # back onto the raw scan's grid
                result = _to_raw(result, raw[case.case_id], cfg.source)
            writing = True
            written = [outputs[0]]
            save_nifti_like(result.anomaly_map, result.reference, outputs[0])
            if result.pred_mask is not None:
                save_nifti_like(result.pred_mask.astype(np.uint8), result.reference, outputs[1])
                written.append(outputs[1])
            else:  # never leave a mask from an earlier scoring next to the new map
                outputs[1].unlink(missing_ok=True)
            prepared = result.prepared
            images = prepared.images[:, prepared.meta["modalities"].index(cfg.source)]
            montage(images, result.stored_maps, outputs[2], threshold=threshold,
                    indices=None, title=f"{case.case_id}: {cfg.method} anomaly map ({cfg.source})")
            written.append(outputs[2])
            if view:
                gt = _ground_truth(case, result.anomaly_map.shape) if case.case_id not in raw else None
                write_case_view(outputs[3], result.reference, result.anomaly_map, threshold, result.pred_mask, gt,
                                f"{case.case_id}: {cfg.method} anomaly map, {cfg.source} → {cfg.target}",
                                input_label=f"{cfg.source} (input)")
                written.append(outputs[3])
            summary.written[case.case_id] = written
        except MmccdError as exc:
            if writing:
                _discard(outputs)
            if on_error == "stop" or isinstance(exc, (DiskFullError, OutOfMemoryError)):  # the next cases would fail too
                _stop(exc, out_dir, origin, cfg, settings, threshold, threshold_from, summary)
            log.error("%s", exc)
            summary.skipped.append((case.case_id, str(exc)))
        except BaseException:  # Ctrl-C, a bug: no case is left half-written either
            if writing:
                _discard(outputs)
            raise
    summary = _merge_ranks(summary)
    if dist_info()[0] == 0 and summary.written:
        write_score_info(out_dir, origin, cfg, settings, threshold, threshold_from, summary)
    return summary


def _discard(outputs: list[Path]) -> None:
    for path in outputs:
        path.unlink(missing_ok=True)


def _stop(exc: MmccdError, out_dir: Path, origin: Path, cfg: ExperimentConfig, settings: ScoreConfig,
          threshold: float | None, threshold_from: str | None, summary: ScoreSummary) -> NoReturn:
    """Stop scoring at `exc`: the cases finished before it are recorded in score_info.json (one process); a full
    disk or memory says which they are."""
    if not summary.written:
        raise exc
    if dist_info()[1] == 1:
        try:
            write_score_info(out_dir, origin, cfg, settings, threshold, threshold_from, summary)
        except MmccdError as again:  # the disk is still full: the error above says what to do
            log.warning("%s", again)
    if not isinstance(exc, (DiskFullError, OutOfMemoryError)):
        raise exc
    done = list(summary.written)
    kept = (f"the {len(done)} case(s) scored before it ({', '.join(done[:3])}{' ...' if len(done) > 3 else ''}) are "
            "kept: the same command lists them as existing and scores the others")
    if isinstance(exc, DiskFullError):
        raise disk_full_error(exc.path, exc.needed, exc.at_least, then=f"run the same command again; {kept}") from exc
    raise OutOfMemoryError(f"{exc}; {kept}") from exc
def _from_model(model: str | Path, device: str | None, scoring: str | Path | None):  # noqa: ANN202
    """(scorer, settings, threshold, its source, the file) of a model file. Its threshold belongs to its own
    score settings: other settings (--scoring PRESET) are refused unless a threshold is given."""
    from mmccd.pipeline.export import load_model

    loaded = load_model(model, device)
    if scoring not in (None, "auto", "run"):
        settings = resolve_scoring(loaded.method.cfg, scoring)
        log.warning("scoring %s with the %s preset's settings, not the ones its threshold was chosen for: writing "
                    "float maps only (pass --threshold to write a mask)", loaded.path, scoring)
        return loaded.method, settings, None, None, loaded.path
    return loaded.method, loaded.settings, loaded.threshold, f"{loaded.path}: {loaded.info.get('threshold_from')}", \
        loaded.path


def _preprocess(inputs: list[Path], out_dir: Path, source: str, raw: dict[str, Any],
                summary: ScoreSummary) -> list[Case]:
    """Each input a raw case folder -> `mmccd preprocess` into OUT/preprocessed/<case>/ (reused when done); the
    BraTS-like cases to score. A case that fails is skipped and listed."""
    from mmccd.data.raw.pipeline import preprocess_case

    cases = []
    for path in map(Path, inputs):
        try:
            pre = preprocess_case(path, out_dir / "preprocessed" / path.name, required=(source,),
                                  contrasts=("t1", source), source=source)
        except MmccdError as exc:
            log.error("%s", exc)
            summary.skipped.append((path.name, str(exc)))
            continue
        case = case_from_path(pre.root)
        raw[case.case_id] = pre
        cases.append(case)
    return cases


def _to_raw(result: Any, pre: Any, source: str) -> Any:  # (VolumeScore, PreprocessedCase) -> VolumeScore
    """The scored volume on the raw source scan's grid (the inverse of the co-registration and resampling)."""
    amap = pre.to_raw(result.anomaly_map, source)
    mask = None if result.pred_mask is None else pre.to_raw(result.pred_mask.astype(bool), source)
    raw_file = pre.raw_source(source)
    reference = nib.load(raw_file) if raw_file.is_file() else pre.raw_image(source)  # a DICOM series: its grid only
    return dataclasses.replace(result, anomaly_map=amap, pred_mask=mask, reference=reference)


def _ground_truth(case: Case, shape: tuple[int, ...]) -> np.ndarray | None:
    """The case's segmentation (label > 0) on its grid, for the view's second contour; None without one."""
    if case.seg is None:
        return None
    try:
        seg, _ = load_nifti(case.seg, case.case_id)
    except DataError as exc:
        log.warning("%s; the case view shows no ground truth", exc)
        return None
    return seg.reshape(shape) > 0 if seg.size == int(np.prod(shape)) else None


def write_score_info(out_dir: Path, run_dir: Path, cfg: ExperimentConfig, settings: ScoreConfig,
                     threshold: float | None, threshold_from: str | None, summary: ScoreSummary) -> None:
    """OUT/score_info.json: what produced the maps of each case (run, threshold, config, code and package versions).

    Cases scored earlier into the same folder (by this or another run) keep their entries."""
    path = out_dir / SCORE_INFO
    try:
        previous = json.loads(path.read_text()).get("cases", {}) if path.exists() else {}
    except (OSError, ValueError, AttributeError):
        previous = {}
    run = str(Path(run_dir).resolve())
    cases = {**previous, **{case_id: {"run": run, "method": cfg.method, "source": cfg.source, "threshold": threshold,
                                      "files": [p.name for p in files]}
                            for case_id, files in summary.written.items()}}
    info = {"run": run, "threshold": threshold, "threshold_from": threshold_from,
            "config": to_dict(cfg), "score_config": to_dict(settings), **run_info(), "cases": dict(sorted(cases.items()))}
    atomic_write_text(path, json.dumps(info, indent=2, default=str) + "\n")


# ---------------------------------------------------------------- several processes (torchrun)


def _rank_cases(cases: list[Case]) -> Iterable[Case]:
    """This rank's cases `cases[rank::world]`, with a progress bar labelled by rank; all cases in one process."""
    if dist_info()[1] == 1:
        return cases
    return progress(shard(cases), unit="case", **progress_kwargs("score"))


def _merge_ranks(summary: ScoreSummary) -> ScoreSummary:
    """Every rank's written and skipped cases (waits for all ranks); the summary itself in one process."""
    parts = gather_objects(summary)
    return ScoreSummary(written=dict(sorted((k, v) for p in parts for k, v in p.written.items())),
                        skipped=sorted(s for p in parts for s in p.skipped))
