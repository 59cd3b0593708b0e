"""`mmccd preprocess` for one case: raw scans -> a BraTS-layout case folder (record.py lists its files).

Steps (`preprocess_case`; the seconds of each go into the record):

1. read every contrast (NIfTI file or DICOM series folder; reading.py);
2. the fixed contrast is T1 when present, else `source`, else the first present (t1ce, t2, flair);
   the output grid is 1 mm isotropic, voxel axes L, P, S (BraTS's orientation), covering the fixed
   scan's field of view (geometry.py); the fixed scan is resampled onto it (trilinear);
3. every other contrast is rigidly registered to the fixed scan (SimpleITK, register.py), checked
   (NMI >= min_similarity, else a DataError naming both files) and resampled onto the grid;
4. the brain is extracted on the fixed contrast (brain.py), and the same mask applied to every contrast;
5. the contrasts, the mask, the QC montage (qc.py) and preprocess.json are written into a hidden
   temporary folder next to the output, renamed to the output only at the end: a failed or killed
   run leaves no half-written case.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mmccd.atomic import atomic_write_text
from mmccd.config import MODALITIES
from mmccd.data.raw.brain import BACKENDS, PLAUSIBLE_ML, brain_volume_ml, extract_brain, stripped_mask
from mmccd.data.raw.extra import versions
from mmccd.data.raw.geometry import OUTPUT_AXCODES, Grid, output_grid, resample
from mmccd.data.raw.qc import qc_montage
from mmccd.data.raw.reading import RawImage, find_contrasts, read_case
from mmccd.data.raw.record import FORMAT, RECORD, PreprocessedCase, read_record
from mmccd.data.raw.register import METHOD, MIN_NMI, check_similarity, nmi_on_grid, register_rigid
from mmccd.errors import MmccdError, OutputExistsError
from mmccd.provenance import code_version

log = logging.getLogger("mmccd")
RESUME_IGNORES = ("threads", "device")  # settings that do not change what is written


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of `mmccd preprocess` (recorded in preprocess.json; a finished case is reused only when they match).

    spacing:        output voxel size in mm (isotropic)
    brain:          brain-extraction backend: "deepbet", "hd-bet" or "none" (input already skull-stripped)
    init:           registration start: "scanner" (the scans' own world coordinates) or "moments"
    min_similarity: NMI below which a registration is refused
    qc:             write the QC montage
    threads:        threads for registration and brain extraction (None: all CPUs)
    device:         "cpu" or "cuda" for brain extraction
    """

    spacing: float = 1.0
    brain: str = "deepbet"
    init: str = "scanner"
    min_similarity: float = MIN_NMI
    qc: bool = True
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.brain not in BACKENDS:
            raise MmccdError(f"unknown brain-extraction backend {self.brain!r}: expected one of {', '.join(BACKENDS)}")
        if self.init not in ("scanner", "moments"):
            raise MmccdError(f"unknown registration start {self.init!r}: expected 'scanner' or 'moments'")
        if not self.spacing > 0:
            raise MmccdError(f"the output spacing must be positive, found {self.spacing}")


def fixed_contrast(present: Sequence[str], source: str | None = None) -> str:
    """T1 when present, else `source` when present, else the first present contrast in MODALITIES order."""
    if "t1" in present:
        return "t1"
    if source is not None and source in present:
        return source
    return next(c for c in MODALITIES if c in present)


def _set_threads(threads: int | None) -> None:
    """Threads for SimpleITK (if loaded) and torch (if loaded); None keeps their defaults."""
    if not threads:
        return
    import sys

    if "SimpleITK" in sys.modules:
        sys.modules["SimpleITK"].ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))


def _raw_entry(raw: RawImage) -> dict[str, Any]:
    return {"source": str(raw.source.resolve()), "kind": raw.kind, "files": [str(f.resolve()) for f in raw.files],
            "series_uid": raw.series_uid,
            "raw_grid": {"shape": [int(s) for s in raw.data.shape], "affine": np.asarray(raw.affine).tolist(),
                         "axcodes": "".join(nib.aff2axcodes(raw.affine)),
                         "zooms_mm": [round(float(z), 6) for z in np.linalg.norm(raw.affine[:3, :3], axis=0)]}}


def _settings(cfg: PreprocessConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(cfg).items() if k not in RESUME_IGNORES}


def preprocess_case(raw_case: str | Path, out_dir: str | Path, cfg: PreprocessConfig | None = None,
                    required: Sequence[str] = MODALITIES, source: str | None = None,
                    layout: Mapping[str, str] | None = None, overwrite: bool = False,
                    contrasts: Sequence[str] | None = None) -> PreprocessedCase:
    """Preprocess the raw case folder `raw_case` into the case folder `out_dir` (its name is the case id).

    required: contrasts the case must have; contrasts: those to process (None: every one present), e.g.
    ("t1", "flair") to score FLAIR with T1, when there is one, as the registration and brain reference.

    A finished `out_dir` made with the same settings is reused (returned as it is); one made with other
    settings raises OutputExistsError unless `overwrite`. Raises DataError for bad inputs (naming the file)
    and for a registration whose similarity is poor (naming both files); nothing is written then."""
    cfg = cfg or PreprocessConfig()
    raw_case, out_dir = Path(raw_case), Path(out_dir)
    wanted = [c for c in find_contrasts(raw_case, layout) if contrasts is None or c in contrasts or c in required]
    done = _finished(out_dir, cfg, overwrite, wanted)
    if done is not None:
        return done
    case_id = out_dir.name
    _set_threads(cfg.threads)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    raws = read_case(raw_case, required, layout, contrasts)
    seconds["read"] = time.perf_counter() - t

    t = time.perf_counter()
    fixed = fixed_contrast(list(raws), source)
    f_raw = raws[fixed]
    grid = output_grid(f_raw.data.shape, f_raw.affine, cfg.spacing)
    on_grid = {fixed: resample(f_raw.data, f_raw.affine, grid.shape, grid.affine, order=1)}
    seconds["resample"] = time.perf_counter() - t

    entries: dict[str, dict[str, Any]] = {c: _raw_entry(r) for c, r in raws.items()}
    entries[fixed].update(fixed_to_raw=np.eye(4).tolist(), similarity_nmi=None)
    for c, raw in raws.items():
        if c == fixed:
            continue
        t = time.perf_counter()
        reg = register_rigid(f_raw.data, f_raw.affine, raw.data, raw.affine, init=cfg.init, threads=cfg.threads)
        seconds[f"register_{c}"] = time.perf_counter() - t
        t = time.perf_counter()
        moved = resample(raw.data, raw.affine, grid.shape, grid.affine, reg.transform, order=1, cval=np.nan)
        value = nmi_on_grid(on_grid[fixed], moved)
        check_similarity(value, f_raw.source, raw.source, case_id, cfg.min_similarity)
        on_grid[c] = np.nan_to_num(moved, nan=0.0, copy=False)
        seconds["resample"] += time.perf_counter() - t
        entries[c].update(fixed_to_raw=reg.transform.tolist(), similarity_nmi=round(value, 4),
                          optimiser={"mattes_mi": reg.metric, "iterations": reg.iterations})

    t = time.perf_counter()
    if cfg.brain == "none":
        mask = stripped_mask(f_raw.data, f_raw.affine, grid)
    else:
        mask = extract_brain(on_grid[fixed], grid.affine, cfg.brain, cfg.device)
    volume_ml = brain_volume_ml(mask, grid.affine)
    seconds["brain"] = time.perf_counter() - t
    plausible = PLAUSIBLE_ML[0] <= volume_ml <= PLAUSIBLE_ML[1]
    if not plausible:
        log.warning("case %s: the brain mask holds %.0f ml, outside the usual %.0f-%.0f ml: check %s_qc.png",
                    case_id, volume_ml, *PLAUSIBLE_ML, case_id)

    record = {
        "format": FORMAT, "case_id": case_id, "fixed": fixed,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "grid": {"shape": list(grid.shape), "affine": grid.affine.tolist(), "axcodes": "".join(OUTPUT_AXCODES),
                 "spacing_mm": cfg.spacing},
        "contrasts": entries,
        "brain": {"backend": cfg.brain, "volume_ml": round(volume_ml, 1), "plausible": plausible,
                  "mask": f"{case_id}_brainmask.nii.gz"},
        "registration": {"library": "SimpleITK", "init": cfg.init, "min_similarity": cfg.min_similarity,
                         "method": METHOD},
        "settings": _settings(cfg), "mmccd": code_version(), "versions": versions(), "seconds": seconds,
        "qc": f"{case_id}_qc.png" if cfg.qc else None,
    }
    _write_case(out_dir, on_grid, mask, grid, record, cfg)
    return PreprocessedCase(out_dir, record)


def reusable(out_dir: str | Path, cfg: PreprocessConfig, wanted: Sequence[str] = ()) -> bool:
    """True when `out_dir` holds a finished case made with the settings of `cfg` holding the `wanted` contrasts."""
    record = read_record(out_dir) if Path(out_dir).is_dir() else None
    return (record is not None and record.get("settings") == _settings(cfg)
            and set(wanted) <= set(record.get("contrasts", {})))


def _finished(out_dir: Path, cfg: PreprocessConfig, overwrite: bool, wanted: Sequence[str]
              ) -> PreprocessedCase | None:
    """The finished case in `out_dir` when it can be reused; None when it must be (re)made."""
    if not out_dir.exists():
        return None
    record = read_record(out_dir) if out_dir.is_dir() else None
    if record is None:
        if overwrite or (out_dir.is_dir() and not any(out_dir.iterdir())):
            return None
        raise OutputExistsError(f"{out_dir} exists and is not a preprocessed case folder: choose a new --out "
                                f"(or --overwrite to replace it)")
    if overwrite:
        return None
    old = record.get("settings", {})
    diff = {k: (old.get(k), v) for k, v in _settings(cfg).items() if old.get(k) != v}
    if diff:
        found = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise OutputExistsError(f"{out_dir} was preprocessed with other settings ({found}): use the same settings, "
                                "another --out, or --overwrite")
    missing = [c for c in wanted if c not in record.get("contrasts", {})]
    if missing:
        raise OutputExistsError(f"{out_dir} was preprocessed without {', '.join(missing)} "
                                f"(it holds {', '.join(record.get('contrasts', {}))}): use --overwrite to redo it")
    log.info("case %s: already preprocessed in %s (reused)", out_dir.name, out_dir)
    return PreprocessedCase(out_dir, record)


def _write_case(out_dir: Path, on_grid: Mapping[str, np.ndarray], mask: np.ndarray, grid: Grid,
                record: dict[str, Any], cfg: PreprocessConfig) -> None:
    """Write every file into a hidden temporary sibling folder, then rename it to `out_dir`."""
    case_id = record["case_id"]
    t = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{out_dir.name}"
    tmp.mkdir()
    try:
        affine = grid.affine
        for c, volume in on_grid.items():
            name = f"{case_id}_{c}.nii.gz"
            record["contrasts"][c]["output"] = name
            img = nib.Nifti1Image(np.where(mask, volume, 0).astype(np.float32), affine)
            img.set_qform(affine, code=1)
            nib.save(img, str(tmp / name))
        m = nib.Nifti1Image(mask.astype(np.uint8), affine)
        m.set_qform(affine, code=1)
        nib.save(m, str(tmp / record["brain"]["mask"]))
        record["seconds"]["write"] = time.perf_counter() - t
        if cfg.qc:
            t = time.perf_counter()
            qc_montage(on_grid, mask, record["fixed"], tmp / record["qc"],
                       title=f"{case_id}: brain {record['brain']['volume_ml']:.0f} ml ({record['brain']['backend']})")
            record["seconds"]["qc"] = time.perf_counter() - t
        record["seconds"] = {k: round(v, 2) for k, v in record["seconds"].items()}
        atomic_write_text(tmp / RECORD, _json(record))
        old = None
        if out_dir.exists():  # --overwrite: move the old folder aside first, delete it once the new one is in place
            old = out_dir.parent / f".old-{uuid.uuid4().hex[:8]}-{out_dir.name}"
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _json(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record, indent=1) + "\n"


def describe(case: PreprocessedCase) -> str:
    """One line: case, fixed contrast, brain volume, similarity per contrast, seconds."""
    r = case.record
    sims = ", ".join(f"{c} {e['similarity_nmi']:.3f}" for c, e in r["contrasts"].items() if e.get("similarity_nmi"))
    total = sum(r.get("seconds", {}).values())
    return (f"{r['case_id']}: fixed {r['fixed']}, brain {r['brain']['volume_ml']:.0f} ml ({r['brain']['backend']})"
            + (f", NMI {sims}" if sims else "") + f", {total:.1f} s -> {case.root}")

