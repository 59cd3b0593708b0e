"""Cyclic UNet: source -> target -> source with two plain UNets; anomaly = cyclic reconstruction error.

The ablation of MMCCD (arXiv 2308.16150, Sec. 3): both directions are deterministic translations.
Training needs both contrasts; scoring needs only the source.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmccd.config import ExperimentConfig
from mmccd.data.batch import SliceBatch
from mmccd.models.unet import UNet
from mmccd.scoring.base import AnomalyMethod, LossFn, masked_error


def translation_unet(cfg: ExperimentConfig) -> UNet:
    """A plain (time-free) UNet mapping one contrast to another: (B, 1, S, S) -> (B, 1, S, S)."""
    return UNet.from_config(cfg.network, in_channels=1, out_channels=1, image_size=cfg.prepare.size,
                            time_conditioning=False)


def forward_translation_loss(net: nn.Module, batch: SliceBatch, generator: torch.Generator) -> Tensor:
    return F.mse_loss(net(batch.source), batch.target)


def backward_translation_loss(net: nn.Module, batch: SliceBatch, generator: torch.Generator) -> Tensor:
    return F.mse_loss(net(batch.target), batch.source)


class CyclicUNet(AnomalyMethod):
    name = "cyclic-unet"

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        self.nets["source_to_target"] = translation_unet(cfg)
        self.nets["target_to_source"] = translation_unet(cfg)

    def losses(self) -> dict[str, LossFn]:
        return {"source_to_target": forward_translation_loss, "target_to_source": backward_translation_loss}

    @torch.inference_mode()
    def score(self, batch: SliceBatch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        translation = self.nets["source_to_target"](batch.source)
        reconstruction = self.nets["target_to_source"](translation)
        return {
            "anomaly_map": masked_error(batch.source, reconstruction, batch.brain_mask),
            "translation": translation,
            "reconstruction": reconstruction,
        }
