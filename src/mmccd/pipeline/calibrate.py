"""The scorer of a run for some score settings: the method itself, or the method with its healthy calibration.

`score.calibration: intensity` needs a table fitted on the run's validation subjects' healthy (tumour-free)
slices, scored with the same settings; it is fitted once and kept in RUN/calibration/<key>.npz, keyed by the
weights, the settings and the validation subjects' data, so every entry point (evaluate, score, benchmark,
export) uses the same table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np

from mmccd.atomic import atomic_write_bytes
from mmccd.config import ScoreConfig, to_dict
from mmccd.scoring.base import AnomalyMethod
from mmccd.scoring.calibration import Calibrated, IntensityCalibration, MultiTarget
from mmccd.scoring.slices import score_split

log = logging.getLogger("mmccd")


def uncalibrated(settings: ScoreConfig) -> ScoreConfig:
    """The same settings without the calibration (what the table is fitted on)."""
    return dataclasses.replace(settings, calibration="none", extra_targets=())


def fit_calibration(run_dir: Path, method: AnomalyMethod, settings: ScoreConfig) -> IntensityCalibration:
    """The run's calibration table for `settings` (fitted now on its validation subjects' healthy slices, or
    read back from RUN/calibration/)."""
    from mmccd.pipeline.evaluate import checkpoint_digests
    from mmccd.pipeline.runs import run_split, run_store

    store, split = run_store(run_dir), run_split(run_dir)
    base = dataclasses.replace(uncalibrated(settings), extra_targets=())
    key = hashlib.sha256(json.dumps({"checkpoints": checkpoint_digests(run_dir), "score": to_dict(base),
                                     "mode": settings.calibration, "bins": settings.calibration_bins,
                                     "edge_bins": settings.calibration_edge_bins, "val": store.identity(split.val)},
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(run_dir) / "calibration" / f"{settings.calibration}-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return IntensityCalibration.from_arrays(dict(z))
    cfg = method.cfg
    healthy = score_split(method, base, store, list(split.val), cfg.source, cfg.target, "train",
                          desc="calibrate on healthy validation slices")
    sources = np.stack([np.asarray(store.images(sid)[p, store.modalities.index(cfg.source)], dtype=np.float32)
                        for sid, p in _positions(store, healthy)])
    edge_bins = settings.calibration_edge_bins if settings.calibration == "intensity-edge" else 1
    table = IntensityCalibration.fit(healthy.maps, sources, healthy.brain, settings.calibration_bins, edge_bins,
                                     fitted_on=f"{len(healthy)} tumour-free slices of {len(split.val)} validation "
                                               f"subjects ({', '.join(split.val)})")
    buf = io.BytesIO()
    np.savez_compressed(buf, **table.to_arrays())
    atomic_write_bytes(path, buf.getvalue())
    log.info("calibration: %s fitted on %s", path, table.fitted_on)
    return table


def _positions(store, split) -> list[tuple[str, int]]:  # noqa: ANN001 — (PreparedStore, ScoredSplit)
    """(subject, stored position) of each scored slice (the split holds original axial indices)."""
    out = []
    for sid, k in zip(split.subject_ids, split.slice_indices, strict=True):
        out.append((sid, store.meta(sid)["slice_indices"].index(int(k))))
    return out


def sibling_run(run_dir: Path, target: str) -> Path:
    """The run beside `run_dir` of the same method and source with another target contrast."""
    from mmccd.pipeline.runs import read_run_config

    cfg = read_run_config(run_dir)
    return Path(run_dir).parent / f"{cfg.method}_{cfg.source}-{target}"


def scorer(run_dir: Path, method: AnomalyMethod, settings: ScoreConfig) -> AnomalyMethod:
    """What scores with `settings`: the method, the method with its calibration table, or with
    `extra_targets` the calibrated methods of every target (the sibling runs beside this one) combined."""
    if settings.calibration == "none":
        return method
    single = dataclasses.replace(settings, extra_targets=())
    own = Calibrated(method, fit_calibration(run_dir, method, single))
    if not settings.extra_targets:
        return own
    from mmccd.errors import ConfigError
    from mmccd.pipeline.runs import load_method

    members = {method.cfg.target: own}
    for target in settings.extra_targets:
        other = sibling_run(run_dir, target)
        if not (other / "config.yaml").exists():
            raise ConfigError(f"score.extra_targets: {target} needs the run {other} ({method.cfg.method} "
                              f"{method.cfg.source} -> {target}, trained on the same subjects) beside {run_dir}")
        sibling = load_method(other, str(method.device))
        members[target] = Calibrated(sibling, fit_calibration(other, sibling, single))
    return MultiTarget(members)


__all__ = ["fit_calibration", "scorer", "uncalibrated"]
