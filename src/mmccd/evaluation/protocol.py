"""Scoring the evaluation slices of a split, with a cache of the maps (used by `mmccd evaluate`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmccd.data.batch import collate_slices
from mmccd.data.dataset import SliceDataset
from mmccd.data.store import PreparedStore
from mmccd.evaluation.metrics import MapRecord
from mmccd.evaluation.postprocess import PostProcess
from mmccd.scoring.base import AnomalyMethod

log = logging.getLogger("mmccd")
FIGURE_KEYS = ("source", "translation", "reconstruction", "anomaly_map")


@dataclass
class ScoredSplit:
    records: list[MapRecord]
    seconds_per_slice: float
    figures: list[dict[str, np.ndarray]]  # a few slices with intermediate images, for the report


def score_split(method: AnomalyMethod, store: PreparedStore, ids: list[str], source: str, target: str,
                slices: str, batch_size: int = 8, seed: int = 0, keep_figures: int = 0,
                desc: str = "score") -> ScoredSplit:
    """Score the evaluation slices of subjects `ids`; one generator for the whole split (reproducible)."""
    dataset = SliceDataset(store, ids, source, target, slices=slices)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_slices)
    device = method.device
    generator = torch.Generator(device=device).manual_seed(seed)
    records: list[MapRecord] = []
    figures: list[dict[str, np.ndarray]] = []
    start = time.perf_counter()
    for batch in tqdm(loader, desc=desc, unit="batch", dynamic_ncols=True):
        batch = batch.to(device)
        out = method.score(batch, generator)
        amap = out["anomaly_map"].float().cpu().numpy()[:, 0]
        brain = batch.brain_mask.cpu().numpy()[:, 0]
        gt = batch.gt_mask.cpu().numpy()[:, 0] if batch.gt_mask is not None else np.zeros_like(brain)
        for i in range(len(batch)):
            records.append(MapRecord(subject_id=batch.subject_id[i], slice_index=int(batch.slice_index[i]),
                                     anomaly_map=amap[i], gt=gt[i].astype(bool), brain=brain[i].astype(bool)))
            if len(figures) < keep_figures:
                fig = {"source": batch.source[i, 0].float().cpu().numpy(), "target": batch.target[i, 0].float().cpu().numpy(),
                       "anomaly_map": amap[i], "gt": gt[i].astype(bool), "brain": brain[i].astype(bool),
                       "title": f"{batch.subject_id[i]} z={int(batch.slice_index[i])}"}
                for k in ("translation", "reconstruction"):
                    if k in out:
                        fig[k] = out[k][i, 0].float().cpu().numpy()
                figures.append(fig)
    seconds = time.perf_counter() - start
    return ScoredSplit(records, seconds / max(1, len(records)), figures)


def cache_path(run_dir: Path, split: str, slices: str) -> Path:
    return run_dir / "maps" / f"{split}_{slices}.npz"


def save_cache(path: Path, scored: ScoredSplit, signature: str) -> None:
    import io

    from mmccd.data.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        maps=np.stack([r.anomaly_map for r in scored.records]).astype(np.float32),
        gt=np.stack([r.gt for r in scored.records]), brain=np.stack([r.brain for r in scored.records]),
        subject_id=np.array([r.subject_id for r in scored.records]),
        slice_index=np.array([r.slice_index for r in scored.records]),
        seconds_per_slice=np.array(scored.seconds_per_slice), signature=np.array(signature))
    atomic_write_bytes(path, buf.getvalue())


def load_cache(path: Path, signature: str) -> ScoredSplit | None:
    if not path.exists():
        return None
    try:
        z = np.load(path, allow_pickle=False)
        if str(z["signature"]) != signature:
            return None
        records = [MapRecord(str(s), int(k), m, g, b) for s, k, m, g, b in
                   zip(z["subject_id"], z["slice_index"], z["maps"], z["gt"], z["brain"], strict=True)]
        return ScoredSplit(records, float(z["seconds_per_slice"]), [])
    except Exception:  # an unreadable cache is recomputed, never trusted
        return None


def postprocess_records(records: list[MapRecord], pp: PostProcess) -> list[MapRecord]:
    out = []
    for r in records:
        amap, brain = pp.apply_map(r.anomaly_map, r.brain)
        out.append(replace(r, anomaly_map=amap, brain=brain))
    return out
