"""Cyclic UNet: source -> target -> source with two plain UNets; anomaly = cyclic reconstruction error.

The ablation of MMCCD (arXiv 2308.16150, Sec. 3): both directions are deterministic translations.
Training needs both contrasts; scoring needs only the source.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmccd.config import ExperimentConfig, ScoreConfig, TrainConfig
from mmccd.data.batch import SliceBatch
from mmccd.models import LossFn, translation_loss, translation_unet
from mmccd.scoring.base import AnomalyMethod, Nets, ScoreOutput, masked_error, residual_side
from mmccd.scoring.baselines.noise import coarse_noise


def noisy_source(batch: SliceBatch, train: TrainConfig, generator: torch.Generator) -> Tensor:
    """The source with coarse noise inside the brain (train.source_noise_std > 0; as the DAE's input), else as is."""
    x = batch.source
    if train.source_noise_std <= 0:
        return x
    noise = coarse_noise(tuple(x.shape), train.source_noise_resolution, train.source_noise_std, generator, x.device)
    return x + noise * batch.brain_mask.to(x.dtype)


def backward_translation_loss(net: nn.Module, batch: SliceBatch, generator: torch.Generator) -> Tensor:
    """target -> source (the backward network of both cyclic methods)."""
    return translation_loss(net, batch.target, batch.source)


class CyclicUNet(AnomalyMethod):
    name = "cyclic-unet"
    #: two supervised translators: on target:source the forward one is this pair's backward one and vice versa
    mirrored_networks = {"source_to_target": "target_to_source", "target_to_source": "source_to_target"}

    @classmethod
    def mirrors_when(cls, cfg: ExperimentConfig) -> bool:
        """Without coarse source noise both nets are `translation_loss` of one contrast to the other."""
        return cfg.train.source_noise_std <= 0

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        self.nets["source_to_target"] = translation_unet(cfg.network, cfg.prepare.size)
        self.nets["target_to_source"] = translation_unet(cfg.network, cfg.prepare.size)

    def losses(self) -> dict[str, LossFn]:
        return {"source_to_target": self._forward_loss, "target_to_source": backward_translation_loss}

    def _forward_loss(self, net: nn.Module, batch: SliceBatch, generator: torch.Generator) -> Tensor:
        """source (with coarse noise when train.source_noise_std > 0) -> target."""
        return translation_loss(net, noisy_source(batch, self.cfg.train, generator), batch.target)

    def score_with(self, nets: Nets, batch: SliceBatch, settings: ScoreConfig,
                   generator: torch.Generator | None) -> ScoreOutput:
        """Deterministic: `generator` is unused."""
        translation = nets["source_to_target"](batch.source)
        reconstruction = nets["target_to_source"](translation)
        side = residual_side(settings, self.cfg.source)
        return ScoreOutput(masked_error(batch.source, reconstruction, batch.brain_mask, side), translation,
                           reconstruction)
