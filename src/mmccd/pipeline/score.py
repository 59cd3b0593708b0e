"""`mmccd score`: anomaly maps for new cases, written on the input's voxel grid.

For each case: <case>_anomaly.nii.gz (float32 map), <case>_mask.nii.gz (uint8, map > threshold)
and <case>_montage.png, all on the input's exact grid (same shape and affine) so they overlay the
input in ITK-SNAP or 3D Slicer. Only the source contrast is needed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmccd.data.discovery import Case, case_from_path, find_cases
from mmccd.data.io import load_nifti, save_nifti_like
from mmccd.data.prepare import prepare_case
from mmccd.errors import DataError, MmccdError, OutputExistsError
from mmccd.evaluation.figures import montage
from mmccd.pipeline.runs import load_method
from mmccd.scoring.volume import score_prepared_case

log = logging.getLogger("mmccd")


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
        else:
            cases.append(case_from_path(p, modality=source if p.is_file() else None))
    return cases


def score_cases(run_dir: Path, inputs: list[Path], out_dir: Path, threshold: float | None = None,
                device: str | None = None, overwrite: bool = False, on_error: str = "skip") -> ScoreSummary:
    """Score case folders / single NIfTI files with a trained run; one bad case is reported and skipped."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    method = load_method(run_dir, device)
    cfg = method.cfg
    if threshold is None:
        metrics = run_dir / "metrics.json"
        if metrics.exists():
            threshold = float(json.loads(metrics.read_text())["threshold"])
        else:
            log.warning("no threshold: run `mmccd evaluate --run %s` first or pass --threshold; "
                        "writing float maps only", run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = ScoreSummary()
    for case in _expand_inputs(inputs, cfg.source):
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
            prepared = prepare_case(case, cfg.prepare)
            result = score_prepared_case(method, prepared)
            _, reference = load_nifti(case.images[cfg.source], case.case_id)
            written = [outputs[0]]
            save_nifti_like(result.anomaly_map, reference, outputs[0])
            mask = None
            if threshold is not None:
                mask = (result.anomaly_map >= threshold).astype(np.uint8)
                save_nifti_like(mask, reference, outputs[1])
                written.append(outputs[1])
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
    return summary
