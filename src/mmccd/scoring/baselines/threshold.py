"""Intensity threshold: the simplest baseline — tumour is brighter (FLAIR, T2) or darker (T1) than tissue.

Thresholding the map (evaluation/) gives the segmentation; the map itself is just the source
intensity, oriented so that "more anomalous" is larger, and zero outside the brain.
"""

from __future__ import annotations

import torch

from mmccd.config import BRIGHT_CONTRASTS, ExperimentConfig, ScoreConfig
from mmccd.data.batch import SliceBatch
from mmccd.scoring.base import AnomalyMethod, Nets, ScoreOutput


def resolve_sign(threshold_sign: str, contrast: str) -> str:
    """"bright" or "dark" from `cfg.baseline.threshold_sign` ("auto" reads the contrast)."""
    if threshold_sign == "auto":
        return "bright" if contrast in BRIGHT_CONTRASTS else "dark"
    return threshold_sign


class IntensityThreshold(AnomalyMethod):
    """No networks. anomaly_map = (source + 1) / 2 ("bright") or (1 - source) / 2 ("dark") inside the brain.

    Source intensities in [-1, 1] map to [0, 1]; percentile-normalised values beyond the range
    stay positive-monotone (clamped at 0 from below so the map is never negative).
    """

    name = "threshold"

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        self.sign = resolve_sign(cfg.baseline.threshold_sign, cfg.source)

    def score_with(self, nets: Nets, batch: SliceBatch, settings: ScoreConfig,
                   generator: torch.Generator | None) -> ScoreOutput:
        """batch.source (B, 1, H, W) -> anomaly_map (B, 1, H, W); `settings` and `generator` are unused."""
        x = batch.source
        value = (x + 1) / 2 if self.sign == "bright" else (1 - x) / 2
        return ScoreOutput(value.clamp_min(0) * batch.brain_mask.to(x.dtype))
