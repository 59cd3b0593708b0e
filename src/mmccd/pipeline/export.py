"""`mmccd export`: a trained run as one self-describing model file, and `mmccd score --model FILE` to use it.

The file (gzip of a `torch.save` of tensors and plain values only, read back with weights_only=True) holds:
the resolved config, the EMA weights of every network (float32, or float16 with `half`), the score settings
the threshold belongs to, the validation threshold and where it came from, the healthy calibration table when
the settings use one, the contrast pair, the preprocessing settings, a description of the training data (and
its terms), the code version and when it was made. Built-in models ship inside the package
(`builtin:<name>`, src/mmccd/builtin/<name>.mmccd).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gzip
import io
import logging
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mmccd
from mmccd.atomic import atomic_write_bytes
from mmccd.checkpoints import check_format, load_state_checked
from mmccd.config import ExperimentConfig, ScoreConfig, from_dict, merge, to_dict
from mmccd.errors import CheckpointError, ConfigError, DataError
from mmccd.evaluation.protocol import records_from_arrays
from mmccd.evaluation.thresholds import choose_threshold
from mmccd.pipeline.calibrate import fit_calibration
from mmccd.pipeline.calibrate import scorer as pipeline_scorer
from mmccd.pipeline.runs import load_method, read_run_info, run_split, run_store
from mmccd.pipeline.score import find_threshold
from mmccd.provenance import code_version
from mmccd.runtime import resolve_device
from mmccd.scoring import build_method, resolve_scoring
from mmccd.scoring.base import AnomalyMethod
from mmccd.scoring.calibration import Calibrated, IntensityCalibration, MultiTarget
from mmccd.scoring.slices import score_split

log = logging.getLogger("mmccd")
MODEL_FORMAT = "mmccd-model-v1"
BUILTIN = "builtin:"
BRATS_TERMS = ("Trained on BraTS cases: BraTS terms apply. Cite Menze et al., IEEE TMI 2015; Bakas et al., "
               "Sci. Data 2017; Baid et al., arXiv 2107.02314; and for MMCCD Liang et al., MMMI 2023 (arXiv 2308.16150).")


@dataclass
class Model:
    """A loaded model file: the method (weights on `device`), how it scores, its threshold, and what it is."""

    method: AnomalyMethod  # calibrated when the settings use calibration
    settings: ScoreConfig
    threshold: float | None
    info: dict[str, Any]  # everything else the file says (training data, threshold source, versions, ...)
    path: Path


def validation_threshold(run_dir: Path, method: AnomalyMethod, settings: ScoreConfig) -> tuple[float, str]:
    """The run's threshold for `settings`: from an evaluation made with them (`find_threshold`), else chosen now
    on its validation subjects' whole volumes (what `mmccd score` writes), as `mmccd evaluate --slices all` does."""
    threshold, source = find_threshold(run_dir, settings, warn=False)
    if threshold is not None:
        return threshold, str(source)
    store, split = run_store(run_dir), run_split(run_dir)
    if not split.val:
        raise DataError("the run has no validation subjects to choose a threshold on", file=run_dir / "run_info.json",
                        fix="train the run on a split with validation subjects, or pass --threshold")
    cfg = method.cfg
    scored = score_split(method, settings, store, list(split.val), cfg.source, cfg.target, "all",
                         desc="threshold on validation volumes")
    choice = choose_threshold(records_from_arrays(scored.subject_ids, scored.slice_indices, scored.maps, scored.gt,
                                                  scored.brain), n=cfg.eval.threshold_quantiles)
    return choice.threshold, f"chosen at export on the whole volumes of {len(split.val)} validation subjects " \
                             f"({', '.join(split.val)}): {choice.describe()}"


def export_run(run_dir: Path, out: Path, scoring: str | Path | None = "auto", *, half: bool = False,
               threshold: float | None = None, description: str | None = None, overwrite: bool = False) -> Path:
    """Write the run as one model file at `out` (refusing to replace an existing file unless `overwrite`)."""
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    run_store(run_dir)  # the store the run was trained on, checked (its validation subjects choose the threshold)
    method = load_method(run_dir, "cpu")
    cfg = method.cfg
    settings = resolve_scoring(cfg, scoring)
    single = dataclasses.replace(settings, extra_targets=())
    table = fit_calibration(run_dir, method, single) if settings.calibration != "none" else None
    scoring_method = pipeline_scorer(run_dir, method, settings)
    if threshold is None:
        threshold, threshold_from = validation_threshold(run_dir, scoring_method, settings)
    else:
        threshold_from = "given at export (--threshold)"
    info = read_run_info(run_dir)
    split = run_split(run_dir)
    dtype = torch.float16 if half else torch.float32
    payload = {
        "format": MODEL_FORMAT, "mmccd_version": mmccd.__version__, "code_version": code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "method": cfg.method, "source": cfg.source, "target": cfg.target,
        "config": to_dict(cfg), "score": to_dict(settings), "prepare": to_dict(cfg.prepare),
        "threshold": float(threshold), "threshold_from": threshold_from,
        "weights": _weights(method, dtype),
        "weights_dtype": "float16" if half else "float32",
        "calibration": None if table is None else {k: torch.from_numpy(np.asarray(v)) for k, v in
                                                   table.to_arrays().items() if k != "fitted_on"},
        "calibration_fitted_on": None if table is None else table.fitted_on,
        "extra_members": {t: _member(m) for t, m in getattr(scoring_method, "members", {}).items() if t != cfg.target},
        "training_data": {"description": description or f"the {len(split.train)} training subjects of {split.name} "
                                                        f"of the prepared store {info.get('prepared')}",
                          "train_subjects": list(split.train), "val_subjects": list(split.val),
                          "train_slices": info.get("train_slices"), "terms": BRATS_TERMS},
        "train_seconds": info.get("train_seconds"), "trained_with_code": info.get("code_version"),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(out, gzip.compress(buf.getvalue(), compresslevel=9, mtime=0))
    log.info("exported %s -> %s (%.1f MB)", run_dir, out, out.stat().st_size / 1e6)
    return out


def _weights(method: AnomalyMethod, dtype: torch.dtype) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
                   for k, v in net.state_dict().items()} for name, net in method.nets.items()}


def _member(member: Calibrated) -> dict[str, Any]:
    """One more target of a multi-target model: its config, float32 weights and calibration table."""
    return {"config": to_dict(member.base.cfg), "weights": _weights(member.base, torch.float32),
            "calibration": {k: torch.from_numpy(np.asarray(v)) for k, v in member.table.to_arrays().items()
                            if k != "fitted_on"}, "calibration_fitted_on": member.table.fitted_on}


def _load_member(payload: dict[str, Any], path: Path, device: str | None) -> Calibrated:
    cfg = from_dict(payload["config"], where=f"{path}: config")
    method = build_method(cfg)
    for name, net in method.nets.items():
        load_state_checked(net, {k: v.float() for k, v in payload["weights"][name].items()}, path,
                           f"{cfg.method} {cfg.source}->{cfg.target} {name} network")
    method = method.to(resolve_device(device or "auto")).eval()
    arrays = {k: v.numpy() for k, v in payload["calibration"].items()}
    return Calibrated(method, IntensityCalibration.from_arrays({**arrays, "fitted_on": payload["calibration_fitted_on"]}))


def builtin_path(name: str) -> Path:
    """The file of a built-in model, e.g. "flair-t2" (src/mmccd/builtin/flair-t2.mmccd)."""
    folder = resources.files("mmccd") / "builtin"
    path = Path(str(folder / f"{name}.mmccd"))
    if not path.is_file():
        known = sorted(p.name.removesuffix(".mmccd") for p in Path(str(folder)).glob("*.mmccd")) \
            if Path(str(folder)).is_dir() else []
        raise ConfigError(f"unknown built-in model '{name}'; built in: {', '.join(known) or 'none'}")
    return path


def resolve_model_path(model: str | Path) -> Path:
    text = str(model)
    return builtin_path(text[len(BUILTIN):]) if text.startswith(BUILTIN) else Path(model)


def load_model(model: str | Path, device: str | None = "auto") -> Model:
    """A model file (or "builtin:<name>") ready to score; clear errors for a missing, truncated, foreign or newer
    file and for weights that do not fit the architecture its config describes."""
    path = resolve_model_path(model)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist: make one with `mmccd export --run RUN --out {path}`")
    try:
        raw = gzip.decompress(path.read_bytes())
        payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (OSError, EOFError, zlib.error, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"model file {path} cannot be read ({type(exc).__name__}): it is truncated or not an "
                              "mmccd model file (made by `mmccd export`); export it again") from None
    except Exception as exc:  # noqa: BLE001 — torch raises many types for foreign pickles
        raise CheckpointError(f"model file {path} is not an mmccd model file ({type(exc).__name__}); mmccd reads only "
                              "plain tensors (weights_only)") from None
    check_format(payload.get("format") if isinstance(payload, dict) else None, path, MODEL_FORMAT, "model file")
    try:
        cfg: ExperimentConfig = from_dict(payload["config"], where=f"{path}: config")
        settings = merge(ScoreConfig(), payload["score"], where=f"{path}: score")
    except KeyError as exc:
        raise CheckpointError(f"model file {path} lacks its {exc} entry: export it again") from None
    method = build_method(cfg)
    for name, net in method.nets.items():
        weights = payload["weights"].get(name)
        if weights is None:
            raise CheckpointError(f"model file {path} has no weights for network '{name}' of {cfg.method}")
        load_state_checked(net, {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, path,
                           f"{cfg.method} {name} network")
    method = method.to(resolve_device(device or "auto")).eval()
    if payload.get("calibration") is not None:
        arrays = {k: v.numpy() for k, v in payload["calibration"].items()}
        method = Calibrated(method, IntensityCalibration.from_arrays(
            {**arrays, "fitted_on": payload.get("calibration_fitted_on") or ""}))
    if payload.get("extra_members"):
        method = MultiTarget({cfg.target: method, **{t: _load_member(m, path, device)
                                                      for t, m in payload["extra_members"].items()}})
    info = {k: v for k, v in payload.items() if k not in ("weights", "calibration", "extra_members")}
    return Model(method, settings, payload.get("threshold"), info, path)


__all__ = ["BUILTIN", "MODEL_FORMAT", "Model", "builtin_path", "export_run", "load_model", "validation_threshold"]
