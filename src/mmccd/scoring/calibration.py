"""Healthy-calibrated scores: a method's score relative to its own distribution on healthy tissue.

A cyclic reconstruction error is larger at tissue borders, in bright CSF and wherever the translation is
hard, in healthy tissue too; a threshold on the raw error then flags those first. Calibration learns, on
HEALTHY slices of the VALIDATION subjects (tumour-free slices, the same rule as training slices), the mean
and standard deviation of the score in each bin of source intensity, and reports

    z = (score - mean[bin(source)]) / std[bin(source)]       inside the brain, 0 outside

so that healthy tissue scores about N(0, 1) at every intensity and an anomaly is what is unusually poorly
explained *for its intensity*. `IntensityCalibration.fit` makes the table (numpy); `Calibrated` wraps any
method so that its maps come out calibrated (the table is data of the run, like its weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mmccd.config import ScoreConfig
from mmccd.data.batch import SliceBatch
from mmccd.scoring.base import AnomalyMethod, Nets, ScoreOutput

MIN_PIXELS = 50  # a bin with fewer healthy pixels borrows the statistics of its nearest well-filled bin
LOW, HIGH = -1.0, 1.0  # the prepared intensity range


@dataclass(frozen=True)
class IntensityCalibration:
    """Per source-intensity bin (B bins over [-1, 1]): the mean and std of healthy scores, and their pixel counts."""

    mean: np.ndarray  # (B,)
    std: np.ndarray  # (B,)
    count: np.ndarray  # (B,) healthy pixels that fell into each bin
    fitted_on: str = ""  # what the table was fitted on, in words

    @property
    def bins(self) -> int:
        return len(self.mean)

    @classmethod
    def fit(cls, scores: np.ndarray, source: np.ndarray, brain: np.ndarray, bins: int = 32,
            fitted_on: str = "") -> IntensityCalibration:
        """From healthy slices: scores, source, brain (N, H, W) (brain bool); only brain pixels count."""
        b = np.asarray(brain, dtype=bool)
        s, x = np.asarray(scores, dtype=np.float64)[b], np.asarray(source, dtype=np.float64)[b]
        if s.size < MIN_PIXELS:
            raise ValueError(f"calibration needs at least {MIN_PIXELS} healthy brain pixels, found {s.size}")
        idx = bin_index(x, bins)
        count = np.bincount(idx, minlength=bins)
        total = np.bincount(idx, weights=s, minlength=bins)
        total2 = np.bincount(idx, weights=s * s, minlength=bins)
        mean = np.divide(total, count, out=np.zeros(bins), where=count > 0)
        var = np.divide(total2, count, out=np.zeros(bins), where=count > 0) - mean**2
        std = np.sqrt(np.clip(var, 0, None))
        filled = np.flatnonzero(count >= MIN_PIXELS)
        if filled.size == 0:  # every bin is thin: one global bin's statistics everywhere
            mean[:], std[:] = s.mean(), s.std()
        else:
            for k in np.flatnonzero(count < MIN_PIXELS):
                near = filled[np.argmin(np.abs(filled - k))]
                mean[k], std[k] = mean[near], std[near]
        floor = max(float(np.median(std[filled])) * 1e-3 if filled.size else 0.0, 1e-8)
        return cls(mean.astype(np.float32), np.maximum(std, floor).astype(np.float32), count.astype(np.int64),
                   fitted_on)

    def apply_numpy(self, scores: np.ndarray, source: np.ndarray, brain: np.ndarray) -> np.ndarray:
        """Calibrated maps (same shape as `scores`), 0 outside the brain."""
        idx = bin_index(np.asarray(source, dtype=np.float64), self.bins)
        z = (np.asarray(scores, dtype=np.float32) - self.mean[idx]) / self.std[idx]
        return np.where(np.asarray(brain, dtype=bool), z, 0.0).astype(np.float32)

    def apply(self, scores: Tensor, source: Tensor, brain: Tensor) -> Tensor:
        """The same on tensors (B, 1, H, W), on their device."""
        idx = ((source.float() - LOW) / (HIGH - LOW) * self.bins).floor().long().clamp(0, self.bins - 1)
        mean = torch.as_tensor(self.mean, device=scores.device)[idx]
        std = torch.as_tensor(self.std, device=scores.device)[idx]
        return torch.where(brain, (scores.float() - mean) / std, torch.zeros_like(mean))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std, "count": self.count, "fitted_on": np.array(self.fitted_on)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> IntensityCalibration:
        return cls(np.asarray(arrays["mean"], np.float32), np.asarray(arrays["std"], np.float32),
                   np.asarray(arrays["count"], np.int64), str(arrays.get("fitted_on", "")))


def bin_index(source: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each source intensity in [-1, 1] (values outside go to the end bins)."""
    return np.clip(np.floor((source - LOW) / (HIGH - LOW) * bins), 0, bins - 1).astype(np.int64)


class Calibrated(AnomalyMethod):
    """`base`'s scores, calibrated by `table`. The intermediate images are the base method's."""

    def __init__(self, base: AnomalyMethod, table: IntensityCalibration):
        super().__init__(base.cfg)
        self.base, self.table = base, table
        self.nets = base.nets  # the same networks (device, eval mode, inference context)
        self.name = base.name

    def score_with(self, nets: Nets, batch: SliceBatch, settings: ScoreConfig,
                   generator: torch.Generator | None) -> ScoreOutput:
        out = self.base.score_with(nets, batch, settings, generator)
        return ScoreOutput(self.table.apply(out.anomaly_map, batch.source, batch.brain_mask), out.translation,
                           out.reconstruction)


__all__ = ["Calibrated", "IntensityCalibration", "bin_index"]
