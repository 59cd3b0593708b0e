"""Scoring the evaluation slices of a split, with a cache of the maps, and the threshold protocol.

`threshold_protocol` is the one place a threshold is chosen for a reported number: on VALIDATION
records only; the test records give the metrics at that threshold and a labelled oracle.
"""

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
from mmccd.evaluation.metrics import EvalResult, MapRecord, PredFilter, evaluate_maps
from mmccd.evaluation.postprocess import PostProcess
from mmccd.evaluation.thresholds import ThresholdChoice, choose_threshold, dice_curve, oracle_threshold
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
    figures = {f"fig{i}__{k}": np.asarray(v) for i, fig in enumerate(scored.figures) for k, v in fig.items()}
    np.savez_compressed(
        buf, **figures,
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
        figures: dict[int, dict] = {}
        for key in z.files:
            if key.startswith("fig") and "__" in key:
                i, name = key[3:].split("__", 1)
                value = z[key]
                figures.setdefault(int(i), {})[name] = str(value) if value.dtype.kind == "U" else value
        return ScoredSplit(records, float(z["seconds_per_slice"]), [figures[i] for i in sorted(figures)])
    except Exception:  # an unreadable cache is recomputed, never trusted
        return None


def postprocess_records(records: list[MapRecord], pp: PostProcess) -> list[MapRecord]:
    out = []
    for r in records:
        amap, brain = pp.apply_map(r.anomaly_map, r.brain)
        out.append(replace(r, anomaly_map=amap, brain=brain))
    return out


@dataclass(frozen=True)
class ProtocolResult:
    """Threshold chosen on validation, applied once to test; the test-optimal oracle kept apart.

    choice:     the validation choice (its candidates, its curve)
    oracle:     the same search on test records: for a column labelled "oracle" only
    result:     test metrics at choice.threshold
    test_curve: (K,) mean subject Dice of the test records at choice.thresholds, for plots only
    """

    choice: ThresholdChoice
    oracle: ThresholdChoice
    result: EvalResult
    test_curve: np.ndarray


def threshold_protocol(val_records: list[MapRecord], test_records: list[MapRecord], n: int = 200,
                       pred_filter: PredFilter | None = None) -> ProtocolResult:
    """Choose the threshold on `val_records` (best mean subject Dice), evaluate `test_records` at it."""
    choice = choose_threshold(val_records, n=n, pred_filter=pred_filter)
    oracle = oracle_threshold(test_records, n=n, pred_filter=pred_filter)
    result = evaluate_maps(test_records, choice.threshold, pred_filter=pred_filter)
    return ProtocolResult(choice, oracle, result, dice_curve(test_records, choice.thresholds, pred_filter=pred_filter))
