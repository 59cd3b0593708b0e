"""Healthy-calibrated scores: a method's score relative to its own distribution on healthy tissue.

A cyclic reconstruction error is larger at tissue borders, in bright CSF and wherever the translation is
hard, in healthy tissue too; a threshold on the raw error then flags those first. Calibration learns, on
HEALTHY slices of the VALIDATION subjects (tumour-free slices, the same rule as training slices), the mean
and standard deviation of the score in each bin of source intensity, and reports

    z = (score - mean[bin(source)]) / std[bin(source)]       inside the brain, 0 outside

so that healthy tissue scores about N(0, 1) at every intensity and an anomaly is what is unusually poorly
explained *for its intensity*. With `edge_bins` > 1 ("intensity-edge") the bins are two-dimensional: source
intensity x the source's local gradient magnitude (Sobel), binned at quantiles of the healthy gradients, so a
large error on a tissue border counts against what borders of that intensity usually show.
`IntensityCalibration.fit` makes the table (numpy); `Calibrated` wraps any method so that its maps come out
calibrated (the table is data of the run, like its weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """Per bin (B source-intensity bins over [-1, 1], times G gradient bins): mean and std of healthy scores.

    mean, std, count: (B * G,) flat, intensity-major; edges: (G - 1,) the gradient-magnitude bin edges."""

    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray  # healthy pixels that fell into each bin
    fitted_on: str = ""  # what the table was fitted on, in words
    edges: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def bins(self) -> int:
        """Intensity bins."""
        return len(self.mean) // self.edge_bins

    @property
    def edge_bins(self) -> int:
        return len(self.edges) + 1

    @classmethod
    def fit(cls, scores: np.ndarray, source: np.ndarray, brain: np.ndarray, bins: int = 32, edge_bins: int = 1,
            fitted_on: str = "") -> IntensityCalibration:
        """From healthy slices: scores, source, brain (N, H, W) (brain bool); only brain pixels count."""
        b = np.asarray(brain, dtype=bool)
        src = np.asarray(source, dtype=np.float32)
        s, x = np.asarray(scores, dtype=np.float64)[b], src.astype(np.float64)[b]
        if s.size < MIN_PIXELS:
            raise ValueError(f"calibration needs at least {MIN_PIXELS} healthy brain pixels, found {s.size}")
        edges = np.zeros(0, np.float32)
        if edge_bins > 1:
            grad = gradient_magnitude(src)[b]
            edges = np.quantile(grad, np.arange(1, edge_bins) / edge_bins).astype(np.float32)
        idx = _flat_index(x, grad if edge_bins > 1 else None, bins, edges)
        n = bins * edge_bins
        count = np.bincount(idx, minlength=n)
        total = np.bincount(idx, weights=s, minlength=n)
        total2 = np.bincount(idx, weights=s * s, minlength=n)
        mean = np.divide(total, count, out=np.zeros(n), where=count > 0)
        var = np.divide(total2, count, out=np.zeros(n), where=count > 0) - mean**2
        std = np.sqrt(np.clip(var, 0, None))
        filled = np.flatnonzero(count >= MIN_PIXELS)
        if filled.size == 0:  # every bin is thin: one global bin's statistics everywhere
            mean[:], std[:] = s.mean(), s.std()
        else:  # a thin bin borrows from the nearest filled bin: same gradient bin first, then nearest intensity
            coords = np.stack(np.divmod(np.arange(n), edge_bins), axis=1)  # (intensity bin, gradient bin)
            for k in np.flatnonzero(count < MIN_PIXELS):
                dist = np.abs(coords[filled, 0] - coords[k, 0]) + bins * np.abs(coords[filled, 1] - coords[k, 1])
                near = filled[np.argmin(dist)]
                mean[k], std[k] = mean[near], std[near]
        floor = max(float(np.median(std[filled])) * 1e-3 if filled.size else 0.0, 1e-8)
        return cls(mean.astype(np.float32), np.maximum(std, floor).astype(np.float32), count.astype(np.int64),
                   fitted_on, edges)

    def apply_numpy(self, scores: np.ndarray, source: np.ndarray, brain: np.ndarray) -> np.ndarray:
        """Calibrated maps (same shape as `scores`, (N, H, W) or (H, W)), 0 outside the brain."""
        src = np.asarray(source, dtype=np.float32)
        grad = gradient_magnitude(src) if self.edge_bins > 1 else None
        idx = _flat_index(src.astype(np.float64), grad, self.bins, self.edges)
        z = (np.asarray(scores, dtype=np.float32) - self.mean[idx]) / self.std[idx]
        return np.where(np.asarray(brain, dtype=bool), z, 0.0).astype(np.float32)

    def apply(self, scores: Tensor, source: Tensor, brain: Tensor) -> Tensor:
        """The same on tensors (B, 1, H, W), on their device."""
        src = source.float()
        idx = ((src - LOW) / (HIGH - LOW) * self.bins).floor().long().clamp(0, self.bins - 1) * self.edge_bins
        if self.edge_bins > 1:
            grad = _sobel_torch(src)
            idx = idx + torch.bucketize(grad, torch.as_tensor(self.edges, device=src.device), right=True)
        mean = torch.as_tensor(self.mean, device=scores.device)[idx]
        std = torch.as_tensor(self.std, device=scores.device)[idx]
        return torch.where(brain, (scores.float() - mean) / std, torch.zeros_like(mean))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std, "count": self.count, "edges": self.edges,
                "fitted_on": np.array(self.fitted_on)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> IntensityCalibration:
        return cls(np.asarray(arrays["mean"], np.float32), np.asarray(arrays["std"], np.float32),
                   np.asarray(arrays["count"], np.int64), str(arrays.get("fitted_on", "")),
                   np.asarray(arrays.get("edges", np.zeros(0)), np.float32))


def bin_index(source: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each source intensity in [-1, 1] (values outside go to the end bins)."""
    return np.clip(np.floor((source - LOW) / (HIGH - LOW) * bins), 0, bins - 1).astype(np.int64)


def _flat_index(source: np.ndarray, grad: np.ndarray | None, bins: int, edges: np.ndarray) -> np.ndarray:
    idx = bin_index(source, bins) * (len(edges) + 1)
    return idx if grad is None else idx + np.searchsorted(edges, grad, side="right")


def gradient_magnitude(source: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of each (H, W) slice of `source` ((N, H, W) or (H, W)), per slice."""
    x = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))
    flat = x.reshape(-1, 1, *x.shape[-2:])
    return _sobel_torch(flat).reshape(x.shape).numpy()


def _sobel_torch(x: Tensor) -> Tensor:
    """(B, 1, H, W) -> (B, 1, H, W) Sobel gradient magnitude, replicate padding."""
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=x.device) / 8
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = torch.nn.functional.conv2d(padded, k[None, None])
    gy = torch.nn.functional.conv2d(padded, k.t()[None, None])
    return torch.sqrt(gx * gx + gy * gy)


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


class MultiTarget(AnomalyMethod):
    """Several calibrated members (one source, one target contrast each): the map is the mean of their
    calibrated maps, z = mean_k z_k — each member's score relative to its own healthy distribution, so the maps
    are on one scale before they are combined. Intermediate images are the first member's."""

    def __init__(self, members: dict[str, Calibrated]):
        first = next(iter(members.values()))
        super().__init__(first.cfg)
        self.members = members
        self.name = first.name
        for target, member in members.items():
            for key, net in member.nets.items():
                self.nets[f"{target}__{key}"] = net

    def score_with(self, nets: Nets, batch: SliceBatch, settings: ScoreConfig,
                   generator: torch.Generator | None) -> ScoreOutput:
        outs, state, after = [], None if generator is None else generator.get_state(), None
        for target, member in self.members.items():
            own = {k.split("__", 1)[1]: v for k, v in nets.items() if k.startswith(f"{target}__")}
            g = None
            if generator is not None:  # each member draws what it would draw alone
                g = torch.Generator(device=generator.device)
                g.set_state(state)
            outs.append(member.score_with(own, batch, settings, g))
            after = after if after is not None or g is None else g.get_state()
        if generator is not None and after is not None:
            generator.set_state(after)  # the next batch continues as after one member
        amap = torch.stack([o.anomaly_map for o in outs]).mean(0)
        return ScoreOutput(amap, outs[0].translation, outs[0].reconstruction)


__all__ = ["Calibrated", "IntensityCalibration", "MultiTarget", "bin_index", "gradient_magnitude"]
