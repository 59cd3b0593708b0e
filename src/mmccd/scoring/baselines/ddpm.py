"""Diffusion baselines: AnoDDPM (partial diffusion and denoising) and cDDPM (the same, conditioned).

Notation: x0 = clean source, x_t = noised source at step t, x0_pred = the network's estimate
of x0 (the models predict x0), T = cfg.diffusion.num_timesteps.

Scoring, per noise level L (cfg.baseline.noise_level, or each of cfg.baseline.noise_levels):
  1. x_L = add_noise(x0, noise, L), noise Gaussian or simplex-like (cfg.baseline.noise_type);
  2. DDIM (eta = score.eta) from L down to 0 over score.ddim_steps "linspace" steps; the
     reconstruction is the last x0_pred (ddim_steps = 1 gives the one-step estimate);
  3. error = (x0 - reconstruction)^2 inside the brain, averaged over the levels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmccd.config import ExperimentConfig, ScoreConfig
from mmccd.data.batch import SliceBatch
from mmccd.errors import ConfigError
from mmccd.models import LossFn, NoiseSchedule, UNet, ddim_loop
from mmccd.scoring.base import AnomalyMethod, Nets, ScoreOutput, masked_error, residual_side
from mmccd.scoring.baselines.autoencoder import ConvEncoder
from mmccd.scoring.baselines.noise import diffusion_noise, make_generator, timesteps_uniform

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x_t (B,1,H,W), t (B,) long) -> x0_pred (B,1,H,W)


class LatentEncoder(nn.Module):
    """cDDPM condition: (B, 1, H, W) clean image -> (B, cond_dim): conv encoder, global average pool, linear."""

    def __init__(self, widths: tuple[int, ...], cond_dim: int):
        super().__init__()
        self.features = ConvEncoder(1, widths, blocks_per_level=1)
        self.head = nn.Linear(widths[-1], cond_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(-2, -1)))


class ConditionedDenoiser(nn.Module):
    """cDDPM network: `encoder` embeds the clean image, `unet` denoises x_t conditioned on that embedding."""

    def __init__(self, encoder: LatentEncoder, unet: UNet):
        super().__init__()
        self.encoder = encoder
        self.unet = unet

    def forward(self, x_t: Tensor, t: Tensor, x_clean: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """x_t (B, 1, H, W), t (B,) long, and either x_clean (B, 1, H, W) or its embedding cond (B, cond_dim)
        -> x0_pred (B, 1, H, W). Training passes x_clean (one forward, so DDP sees the encoder)."""
        if cond is None:
            if x_clean is None:
                raise ValueError("ConditionedDenoiser needs x_clean or cond")
            cond = self.encoder(x_clean)
        return self.unet(x_t, t, cond=cond)


class AnoDDPM(AnomalyMethod):
    """Unconditional DDPM on the source contrast (net key "ddpm"), scored by partial diffusion and DDIM denoising.

    Wyatt et al., "AnoDDPM: Anomaly detection with denoising diffusion probabilistic models using
    simplex noise", CVPR Workshops 2022. Training: x0-prediction, MSE, t ~ U{0..T-1}, with the
    same noise type as scoring (as AnoDDPM does).
    """

    name = "ddpm"
    net_key = "ddpm"

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        d, b = cfg.diffusion, cfg.baseline
        self.schedule = NoiseSchedule(d.num_timesteps, d.beta_start, d.beta_end)
        self.levels = tuple(b.noise_levels) or (b.noise_level,)
        for level in self.levels:
            if not 0 <= level < d.num_timesteps:
                raise ConfigError(f"baseline.noise_level(s): {level} is outside 0..{d.num_timesteps - 1} "
                                  f"(diffusion.num_timesteps = {d.num_timesteps})")
        self.nets[self.net_key] = self.build_net(cfg)

    def build_net(self, cfg: ExperimentConfig) -> nn.Module:
        return UNet.from_config(cfg.network, in_channels=1, out_channels=1, image_size=cfg.prepare.size)

    def denoiser(self, net: nn.Module, x0: Tensor) -> Denoiser:
        """The x0-predictor for this batch; `x0` (the clean source) is unused by the unconditional model."""
        return lambda x_t, t: net(x_t, t)

    def noise(self, shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> Tensor:
        return diffusion_noise(self.cfg.baseline.noise_type, shape, g, device)

    # ------------------------------------------------------------------ training
    def losses(self) -> dict[str, LossFn]:
        return {self.net_key: self.loss}

    def noised(self, x0: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Training input: x0 (B, 1, H, W) -> (x_t (B, 1, H, W), t (B,) long), t ~ U{0..T-1}."""
        g = make_generator(self.cfg.train.seed, generator)  # training always passes one
        t = timesteps_uniform(x0.shape[0], self.schedule.num_timesteps, g, x0.device)
        return self.schedule.add_noise(x0, self.noise(tuple(x0.shape), g, x0.device), t), t

    def loss(self, net: nn.Module, batch: SliceBatch, generator: torch.Generator) -> Tensor:
        """Scalar MSE between x0_pred(x_t, t) and x0 = source over the whole image."""
        x_t, t = self.noised(batch.source, generator)
        return F.mse_loss(net(x_t, t), batch.source)

    # ------------------------------------------------------------------ scoring
    def reconstruct(self, net: nn.Module, x0: Tensor, level: int, settings: ScoreConfig, g: torch.Generator) -> Tensor:
        """(B, 1, H, W) source -> (B, 1, H, W) reconstruction after diffusing to `level` and denoising with DDIM."""
        denoise = self.denoiser(net, x0)
        b = x0.shape[0]
        x_t = self.schedule.add_noise(x0, self.noise(tuple(x0.shape), g, x0.device),
                                      torch.full((b,), level, dtype=torch.long, device=x0.device))
        ts = self.schedule.timesteps(settings.ddim_steps, "linspace", start=level)
        return ddim_loop(lambda x, t: denoise(x, torch.full((b,), t, dtype=torch.long, device=x0.device)), x_t, ts,
                         self.schedule, settings.eta, lambda: self.noise(tuple(x0.shape), g, x0.device))

    def score_with(self, nets: Nets, batch: SliceBatch, settings: ScoreConfig,
                   generator: torch.Generator | None) -> ScoreOutput:
        """anomaly_map (B, 1, H, W): mean over levels of (source - recon)^2 in the brain; reconstruction
        (B, 1, H, W): the mean reconstruction over levels."""
        g = make_generator(settings.seed, generator)
        x0 = batch.source
        recons = [self.reconstruct(nets[self.net_key], x0, level, settings, g) for level in self.levels]
        side = residual_side(settings, self.cfg.source)
        errors = [masked_error(x0, r, batch.brain_mask, side) for r in recons]
        return ScoreOutput(torch.stack(errors).mean(0), reconstruction=torch.stack(recons).mean(0))


class ConditionedDDPM(AnoDDPM):
    """cDDPM (net key "cddpm"): AnoDDPM whose denoiser is conditioned on a latent embedding of the clean input.

    Behrendt et al., "Guided reconstruction with conditioned diffusion models for unsupervised
    anomaly detection in brain MRIs", arXiv 2312.04215 (2023). The encoder and the UNet are one
    network, trained jointly end to end; the embedding (cfg.baseline.cond_dim) is added to the
    UNet's time embedding, so it modulates every residual block.
    """

    name = "cddpm"
    net_key = "cddpm"

    def build_net(self, cfg: ExperimentConfig) -> nn.Module:
        net, dim = cfg.network, cfg.baseline.cond_dim
        widths = tuple(net.base_channels * m for m in net.channel_mult)
        unet = UNet.from_config(net, in_channels=1, out_channels=1, image_size=cfg.prepare.size, cond_dim=dim)
        return ConditionedDenoiser(LatentEncoder(widths, dim), unet)

    def loss(self, net: nn.Module, batch: SliceBatch, generator: torch.Generator) -> Tensor:
        """Scalar MSE between x0_pred(x_t, t | encoder(x0)) and x0 = source; encoder and UNet learn jointly."""
        x_t, t = self.noised(batch.source, generator)
        return F.mse_loss(net(x_t, t, x_clean=batch.source), batch.source)

    def denoiser(self, net: nn.Module, x0: Tensor) -> Denoiser:
        """The x0-predictor conditioned on the embedding of the clean source `x0`, computed once per batch."""
        cond = net.encoder(x0)
        return lambda x_t, t: net(x_t, t, cond=cond)
