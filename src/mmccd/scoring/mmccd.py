"""MMCCD: masked conditional diffusion forward, plain UNet backward, mask-ensemble cyclic error.

Liang, Anthony, Wagner, Kamnitsas, "Modality Cycles with Masked Conditional Diffusion for
Unsupervised Anomaly Segmentation in MRI", MMMI @ MICCAI 2023, arXiv 2308.16150.

Notation: source s (input contrast), target y, stripe mask m (1 visible, 0 masked),
generated target y_hat = DDIM(x_T; c = m*s + (1-m)*n), cyclic reconstruction s_hat = B(y_hat).

Scoring a slice, step by step:
  1. build the ensemble of M stripe masks (mmccd.masks.stripe_ensemble);
  2. draw one initial noise x_T per slice, shared by all its masks;
  3. for masks in chunks of `score.mask_batch`: DDIM-sample y_hat, refilling the masked part of the
     condition with fresh noise at every step; s_hat = B(y_hat); err = (s - s_hat)^2;
  4. anomaly map = sum over masks of err*(1-m) / number of masks covering the pixel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmccd.config import ExperimentConfig
from mmccd.data.batch import SliceBatch
from mmccd.masks import random_stripe_masks, stripe_ensemble, stripe_width_for
from mmccd.models.masked_diffusion import MaskedConditionalDiffusion
from mmccd.models.noise_schedule import NoiseSchedule
from mmccd.models.unet import UNet
from mmccd.scoring.base import AnomalyMethod, LossFn
from mmccd.scoring.cyclic_unet import backward_translation_loss, translation_unet


def build_forward_model(cfg: ExperimentConfig) -> MaskedConditionalDiffusion:
    net = UNet.from_config(cfg.network, in_channels=2, out_channels=1, image_size=cfg.prepare.size,
                           time_conditioning=True)
    d = cfg.diffusion
    return MaskedConditionalDiffusion(net, NoiseSchedule(d.num_timesteps, d.beta_start, d.beta_end))


class MMCCD(AnomalyMethod):
    name = "mmccd"

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        self.nets["source_to_target"] = build_forward_model(cfg)
        self.nets["target_to_source"] = translation_unet(cfg)
        self.stripe_width = stripe_width_for(cfg.prepare.size, cfg.diffusion.stripe_width)

    # ------------------------------------------------------------------ training
    def _forward_loss(self, net: nn.Module, batch: SliceBatch, generator: torch.Generator) -> Tensor:
        mask = random_stripe_masks(len(batch), self.cfg.prepare.size, self.stripe_width, generator,
                                   per_batch=self.cfg.diffusion.mask_per_batch, device=batch.source.device)
        return net.loss(batch.source, batch.target, mask, generator)

    def losses(self) -> dict[str, LossFn]:
        return {"source_to_target": self._forward_loss, "target_to_source": backward_translation_loss}

    # ------------------------------------------------------------------ scoring
    def masks(self) -> Tensor:
        """The inference ensemble (M, 1, S, S), 1 visible / 0 masked."""
        sc = self.cfg.score
        size = self.cfg.prepare.size
        stride = max(1, round(sc.mask_stride * size / 128))
        return stripe_ensemble(size, self.stripe_width, stride, num_masks=sc.num_masks)

    @torch.inference_mode()
    def score(self, batch: SliceBatch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        sc = self.cfg.score
        device = batch.source.device
        if generator is None:
            generator = torch.Generator(device=device).manual_seed(sc.seed)
        masks = self.masks().to(device)  # (M, 1, S, S)
        hidden = 1.0 - masks
        coverage = hidden.sum(0)  # (1, S, S)
        forward: MaskedConditionalDiffusion = self.nets["source_to_target"]  # type: ignore[assignment]
        backward = self.nets["target_to_source"]
        maps, translations, reconstructions = [], [], []
        for i in range(len(batch)):
            s = batch.source[i: i + 1]
            x_T = torch.randn(s.shape, generator=generator, device=generator.device).to(device)
            err_sum = torch.zeros_like(s[0])
            y_sum = torch.zeros_like(s[0])
            r_sum = torch.zeros_like(s[0])
            for j in range(0, len(masks), sc.mask_batch):
                m = masks[j: j + sc.mask_batch]
                y_hat = forward.sample(s.expand(len(m), -1, -1, -1), m, num_steps=sc.ddim_steps, eta=sc.eta,
                                       generator=generator, x_T=x_T.expand(len(m), -1, -1, -1))
                s_hat = backward(y_hat)
                h = hidden[j: j + sc.mask_batch]
                err_sum += ((s - s_hat).pow(2) * h).sum(0)
                y_sum += (y_hat * h).sum(0)
                r_sum += (s_hat * h).sum(0)
            cov = coverage.clamp_min(1)
            maps.append(err_sum / cov)
            translations.append(y_sum / cov)
            reconstructions.append(r_sum / cov)
        brain = batch.brain_mask.to(batch.source.dtype)
        return {
            "anomaly_map": torch.stack(maps) * brain,
            "translation": torch.stack(translations),
            "reconstruction": torch.stack(reconstructions),
        }


__all__ = ["MMCCD", "build_forward_model"]
