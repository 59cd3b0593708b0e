"""`mmccd score`: anomaly maps for new cases, written on the input's voxel grid.

For each case: <case>_anomaly.nii.gz (float32 map), <case>_mask.nii.gz (uint8, map > threshold)
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

import numpy as np
from tqdm.auto import tqdm

from mmccd.config import SPEED_ONLY_SCORE_KEYS, ExperimentConfig, to_dict, with_scoring
from mmccd.data.discovery import Case, case_from_path, find_cases
from mmccd.data.io import atomic_write_text, load_nifti, save_nifti_like
from mmccd.data.prepare import PreparedCase, prepare_case
from mmccd.distributed import dist_info, gather_objects, progress_kwargs, shard
from mmccd.errors import ConfigError, DataError, MmccdError, OutputExistsError
from mmccd.evaluation.figures import montage
from mmccd.pipeline.runs import load_method
from mmccd.provenance import run_info
from mmccd.scoring.volume import score_prepared_case

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


def _prepare_for_scoring(case: Case, cfg: ExperimentConfig) -> PreparedCase:
    """The case prepared as for training (brain mask from every contrast present); when a file other than
    the source is unusable, a warning and the source image alone: scoring needs only the source."""
    try:
        return prepare_case(case, cfg.prepare)
    except DataError as exc:
        source = case.images[cfg.source]
        if exc.file is None or Path(exc.file) == Path(source):
            raise
        log.warning("%s; scoring %s from its %s image alone (brain mask from that image)", exc, case.case_id,
                    cfg.source)
        alone = dataclasses.replace(case, images={cfg.source: source}, seg=None, problems=())
        return prepare_case(alone, cfg.prepare, required=[cfg.source])


def score_cases(run_dir: Path, inputs: list[Path], out_dir: Path, threshold: float | None = None,
                device: str | None = None, overwrite: bool = False, on_error: str = "skip",
                scoring: str | None = None) -> ScoreSummary:
    """Score case folders / single NIfTI files with a trained run; one bad case is reported and skipped.

    `scoring`: a preset whose `score` section replaces the run's ("fast", "reference", ...; "auto" = fast for
    MMCCD runs); None or "run" = the run's own."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    method = load_method(run_dir, device)
    method.cfg = cfg = with_scoring(method.cfg, scoring)
    threshold_from = "argument" if threshold is not None else None
    if threshold is None:
        metrics = run_dir / "metrics.json"
        if metrics.exists():
            try:
                chosen = json.loads(metrics.read_text())
                threshold = float(chosen["threshold"])
                threshold_from = str(metrics.resolve())
                _warn_if_scored_otherwise(chosen.get("score_config"), cfg, run_dir)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{metrics} is unreadable ({type(exc).__name__}: {exc}); run `mmccd evaluate "
                                  f"--run {run_dir}` again or pass --threshold") from None
        else:
            log.warning("no threshold: run `mmccd evaluate --run %s` first or pass --threshold; "
                        "writing float maps only", run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = ScoreSummary()
    for case in _rank_cases(_expand_inputs(inputs, cfg.source)):
        try:
            if cfg.source not in case.images:
                raise DataError("the source contrast is missing", case=case.case_id, file=case.root,
                                expected=f"a {cfg.source} image (the run's source contrast)",
                                found=", ".join(sorted(case.images)) or "no images")
            outputs = [out_dir / f"{case.case_id}_anomaly.nii.gz", out_dir / f"{case.case_id}_mask.nii.gz",
                       out_dir / f"{case.case_id}_montage.png"]
            existing = [p for p in outputs if p.exists()]
            if existing and not overwrite:
                raise OutputExistsError(f"{existing[0]} exists; pass --overwrite to replace it")
            prepared = _prepare_for_scoring(case, cfg)
            source, reference = load_nifti(case.images[cfg.source], case.case_id)
            result = score_prepared_case(method, prepared, brain=source != 0)
            written = [outputs[0]]
            save_nifti_like(result.anomaly_map, reference, outputs[0])
            mask = None
            if threshold is not None:
                mask = (result.anomaly_map >= threshold).astype(np.uint8)
                save_nifti_like(mask, reference, outputs[1])
                written.append(outputs[1])
            else:  # never leave a mask from an earlier scoring next to the new map
                outputs[1].unlink(missing_ok=True)
            images = prepared.images[:, prepared.meta["modalities"].index(cfg.source)]
            montage(images, result.stored_maps, outputs[2], threshold=threshold,
                    indices=None, title=f"{case.case_id}: {cfg.method} anomaly map ({cfg.source})")
            written.append(outputs[2])
            summary.written[case.case_id] = written
        except MmccdError as exc:
            if on_error == "stop":
                raise
            log.error("%s", exc)
            summary.skipped.append((case.case_id, str(exc)))
    summary = _merge_ranks(summary)
    if dist_info()[0] == 0 and summary.written:
        write_score_info(out_dir, run_dir, cfg, threshold, threshold_from, summary)
    return summary


def _warn_if_scored_otherwise(chosen_with: dict | None, cfg: ExperimentConfig, run_dir: Path) -> None:
    """The validation threshold is only right for maps scored the same way (speed-only keys aside)."""
    if chosen_with is None:
        return
    now = to_dict(cfg.score)
    differ = sorted(k for k in now if k not in SPEED_ONLY_SCORE_KEYS and chosen_with.get(k, now[k]) != now[k])
    if differ:
        log.warning("the threshold in %s/metrics.json was chosen on maps scored with other settings (%s); for a "
                    "matching threshold run `mmccd evaluate --run %s --scoring <the same preset>` or pass --threshold",
                    run_dir, ", ".join(differ), run_dir)


def write_score_info(out_dir: Path, run_dir: Path, cfg: ExperimentConfig, threshold: float | None,
                     threshold_from: str | None, summary: ScoreSummary) -> None:
    """OUT/score_info.json: what produced the maps of each case (run, threshold, config, code and package versions).

    Cases scored earlier into the same folder (by this or another run) keep their entries."""
    path = out_dir / SCORE_INFO
    try:
        previous = json.loads(path.read_text()).get("cases", {}) if path.exists() else {}
    except (OSError, ValueError, AttributeError):
        previous = {}
    run = str(run_dir.resolve())
    cases = {**previous, **{case_id: {"run": run, "method": cfg.method, "source": cfg.source, "threshold": threshold,
                                      "files": [p.name for p in files]}
                            for case_id, files in summary.written.items()}}
    info = {"run": run, "threshold": threshold, "threshold_from": threshold_from,
            "config": to_dict(cfg), **run_info(), "cases": dict(sorted(cases.items()))}
    atomic_write_text(path, json.dumps(info, indent=2, default=str) + "\n")


# ---------------------------------------------------------------- several processes (torchrun)


def _rank_cases(cases: list[Case]) -> Iterable[Case]:
    """This rank's cases `cases[rank::world]`, with a progress bar labelled by rank; all cases in one process."""
    if dist_info()[1] == 1:
        return cases
    return tqdm(shard(cases), unit="case", dynamic_ncols=True, **progress_kwargs("score"))


def _merge_ranks(summary: ScoreSummary) -> ScoreSummary:
    """Every rank's written and skipped cases (waits for all ranks); the summary itself in one process."""
    parts = gather_objects(summary)
    return ScoreSummary(written=dict(sorted((k, v) for p in parts for k, v in p.written.items())),
                        skipped=sorted(s for p in parts for s in p.skipped))
