"""A method over many slices, in one place: batching, the generator, progress, the map cache.

`score_batches` is the loop every caller uses (an evaluation split, a whole volume): one generator seeded
from `settings.seed` for the whole sequence, so a split's maps are reproducible; the inference context
(AMP, channels-last, compile) is the method's own `score`. `score_split` scores the evaluation slices
of a split into numpy arrays (what `mmccd.evaluation` reads), with a cache of the maps on disk.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmccd.atomic import atomic_write_bytes
from mmccd.config import ScoreConfig
from mmccd.data.batch import SliceBatch, collate_slices
from mmccd.data.dataset import SliceDataset
from mmccd.data.store import PreparedStore
from mmccd.memory import score_batch
from mmccd.progress import progress as progress_bar
from mmccd.scoring.base import AnomalyMethod, ScoreOutput

SPLIT_BATCH = 8  # slices per scoring call for an evaluation split
VOLUME_BATCH = 16  # ... and for a whole volume (the DDPM baselines' noise depends on the batching)


def score_batches(method: AnomalyMethod, settings: ScoreConfig, batches: Iterable[SliceBatch], *,
                  desc: str = "score", total: int | None = None, progress: bool = True,
                  leave: bool = True) -> Iterator[tuple[SliceBatch, ScoreOutput]]:
    """Score `batches` in order on the method's device with one generator for all of them (settings.seed)."""
    device = method.device
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    for batch in progress_bar(batches, desc=desc, unit="batch", total=total, disable=not progress,
                      leave=leave):
        batch = batch.to(device)
        yield batch, score_batch(method, batch, settings, generator)  # out of memory: names the settings to lower


@dataclass
class ScoredSplit:
    """The scored evaluation slices of a split, N of them, in dataset order (subject by subject)."""

    subject_ids: list[str]  # N
    slice_indices: list[int]  # N, original axial index
    maps: np.ndarray  # (N, S, S) float32 anomaly maps
    gt: np.ndarray  # (N, S, S) bool, tumour
    brain: np.ndarray  # (N, S, S) bool
    seconds_per_slice: float
    figures: list[dict[str, np.ndarray]]  # a few slices with intermediate images, for the report

    def __len__(self) -> int:
        return len(self.subject_ids)


def score_split(method: AnomalyMethod, settings: ScoreConfig, store: PreparedStore, ids: list[str], source: str,
                target: str, slices: str, keep_figures: int = 0, desc: str = "score") -> ScoredSplit:
    """Score the evaluation slices (`slices`: "max_tumour" or "all") of subjects `ids`."""
    dataset = SliceDataset(store, ids, source, target, slices=slices)
    loader = DataLoader(dataset, batch_size=SPLIT_BATCH, shuffle=False, collate_fn=collate_slices)
    ids, positions, maps, gts, brains = [], [], [], [], []
    figures: list[dict[str, np.ndarray]] = []
    start = time.perf_counter()
    for batch, out in score_batches(method, settings, loader, desc=desc):
        amap = out.anomaly_map.float().cpu().numpy()[:, 0]
        brain = batch.brain_mask.cpu().numpy()[:, 0].astype(bool)
        gt = batch.gt_mask.cpu().numpy()[:, 0].astype(bool) if batch.gt_mask is not None else np.zeros_like(brain)
        ids += list(batch.subject_id)
        positions += [int(k) for k in batch.slice_index]
        maps.append(amap)
        gts.append(gt)
        brains.append(brain)
        for i in range(len(batch)):
            if len(figures) < keep_figures:
                fig = {"source": batch.source[i, 0].float().cpu().numpy(), "target": batch.target[i, 0].float().cpu().numpy(),
                       "anomaly_map": amap[i], "gt": gt[i].astype(bool), "brain": brain[i].astype(bool),
                       "title": f"{batch.subject_id[i]} z={int(batch.slice_index[i])}"}
                for k in ("translation", "reconstruction"):
                    value = getattr(out, k)
                    if value is not None:
                        fig[k] = value[i, 0].float().cpu().numpy()
                figures.append(fig)
    seconds = time.perf_counter() - start
    size = method.cfg.prepare.size
    return ScoredSplit(ids, positions, _stack(maps, np.float32, size), _stack(gts, bool, size),
                       _stack(brains, bool, size), seconds / max(1, len(ids)), figures)


def _stack(parts: list[np.ndarray], dtype: type, size: int) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros((0, size, size), dtype)


# ---------------------------------------------------------------- the map cache


def cache_path(run_dir: Path, split: str, slices: str, signature: str) -> Path:
    """RUN/maps/<split>_<slices>_<digest of the signature>.npz: maps scored otherwise never replace these."""
    digest = hashlib.sha256(signature.encode()).hexdigest()[:10]
    return run_dir / "maps" / f"{split}_{slices}_{digest}.npz"


def find_cache(run_dir: Path, split: str, slices: str, signature: str) -> ScoredSplit | None:
    """The cached maps of a split made with `signature` (also under the name of earlier versions), or None."""
    for path in (cache_path(run_dir, split, slices, signature), run_dir / "maps" / f"{split}_{slices}.npz"):
        cached = load_cache(path, signature)
        if cached is not None:
            return cached
    return None


def save_cache(path: Path, scored: ScoredSplit, signature: str) -> None:
    buf = io.BytesIO()
    figures = {f"fig{i}__{k}": np.asarray(v) for i, fig in enumerate(scored.figures) for k, v in fig.items()}
    np.savez_compressed(
        buf, **figures,
        maps=scored.maps.astype(np.float32), gt=scored.gt, brain=scored.brain,
        subject_id=np.array(scored.subject_ids), slice_index=np.array(scored.slice_indices),
        seconds_per_slice=np.array(scored.seconds_per_slice), signature=np.array(signature))
    atomic_write_bytes(path, buf.getvalue())


def load_cache(path: Path, signature: str) -> ScoredSplit | None:
    """The cached split if `path` holds maps made with `signature`, else None (a damaged cache too)."""
    if not path.exists():
        return None
    try:
        z = np.load(path, allow_pickle=False)
        if str(z["signature"]) != signature:
            return None
        figures: dict[int, dict] = {}
        for key in z.files:
            if key.startswith("fig") and "__" in key:
                i, name = key[3:].split("__", 1)
                value = z[key]
                figures.setdefault(int(i), {})[name] = str(value) if value.dtype.kind == "U" else value
        return ScoredSplit([str(s) for s in z["subject_id"]], [int(k) for k in z["slice_index"]], z["maps"],
                           z["gt"], z["brain"], float(z["seconds_per_slice"]), [figures[i] for i in sorted(figures)])
    except Exception:  # an unreadable cache is recomputed, never trusted
        return None


__all__ = ["SPLIT_BATCH", "VOLUME_BATCH", "ScoredSplit", "cache_path", "find_cache", "load_cache", "save_cache",
           "score_batches",
           "score_split"]
