"""Intensity threshold: the simplest baseline — tumour is brighter (FLAIR, T2) or darker (T1) than tissue.

Thresholding the map (evaluation/) gives the segmentation; the map itself is just the source
intensity, oriented so that "more anomalous" is larger, and zero outside the brain.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmccd.config import ExperimentConfig
from mmccd.data.batch import SliceBatch
from mmccd.errors import ConfigError
from mmccd.scoring.base import AnomalyMethod

#: contrasts in which tumour (oedema, enhancing rim) is hyperintense
BRIGHT_CONTRASTS = ("flair", "t2", "t1ce")


def resolve_sign(threshold_sign: str, contrast: str) -> str:
    """"bright" or "dark" from `cfg.baseline.threshold_sign` ("auto" reads the contrast)."""
    if threshold_sign == "auto":
        return "bright" if contrast in BRIGHT_CONTRASTS else "dark"
    if threshold_sign not in ("bright", "dark"):
        raise ConfigError(f"baseline.threshold_sign: expected 'bright', 'dark' or 'auto', found '{threshold_sign}'")
    return threshold_sign


class IntensityThreshold(AnomalyMethod):
    """No networks. anomaly_map = (source + 1) / 2 ("bright") or (1 - source) / 2 ("dark") inside the brain.

    Source intensities in [-1, 1] map to [0, 1]; percentile-normalised values beyond the range
    stay positive-monotone (clamped at 0 from below so the map is never negative).
    """

    name = "threshold"
    needs_target_for_training = False

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        self.sign = resolve_sign(cfg.baseline.threshold_sign, cfg.source)

    def score(self, batch: SliceBatch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """batch.source (B, 1, H, W) -> {"anomaly_map": (B, 1, H, W)}; `generator` is unused."""
        x = batch.source
        value = (x + 1) / 2 if self.sign == "bright" else (1 - x) / 2
        return {"anomaly_map": value.clamp_min(0) * batch.brain_mask.to(x.dtype)}
