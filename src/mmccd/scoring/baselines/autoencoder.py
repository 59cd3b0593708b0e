"""Reconstruction baselines: a convolutional autoencoder (AE) and a denoising autoencoder (DAE).

Both score anomaly_map = (source - reconstruction)^2 inside the brain: what the network cannot
reconstruct from what it learned on healthy slices is anomalous.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmccd.config import ExperimentConfig, ScoreConfig
from mmccd.data.batch import SliceBatch
from mmccd.errors import ConfigError
from mmccd.models import LossFn, translation_unet
from mmccd.scoring.base import AnomalyMethod, Nets, ScoreOutput, masked_error, residual_side
from mmccd.scoring.baselines.noise import coarse_noise, make_generator


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 32), channels)


def conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """Conv 3x3 (optionally strided) -> GroupNorm -> SiLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), _norm(c_out), nn.SiLU())


class ConvEncoder(nn.Module):
    """(B, C_in, H, W) -> (B, widths[-1], H / 2^(L-1), W / 2^(L-1)), L = len(widths): one stride-2 conv per level."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], blocks_per_level: int = 1):
        super().__init__()
        layers: list[nn.Module] = [conv_block(in_channels, widths[0])]
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(conv_block(widths[i - 1], width, stride=2))
            layers += [conv_block(width, width) for _ in range(blocks_per_level)]
        self.body = nn.Sequential(*layers)
        self.out_channels = widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class ConvAutoEncoder(nn.Module):
    """Autoencoder without skip connections and with a spatial bottleneck.

    (B, 1, H, W) -> latent (B, latent_channels, H / 2^(L-1), W / 2^(L-1)) -> (B, 1, H, W).
    With the default network config (channel_mult of length 5) a 128-px slice becomes an 8 x 8 latent.
    """

    def __init__(self, widths: tuple[int, ...], latent_channels: int, blocks_per_level: int = 1):
        super().__init__()
        self.encoder = ConvEncoder(1, widths, blocks_per_level)
        self.to_latent = nn.Conv2d(widths[-1], latent_channels, 1)
        layers: list[nn.Module] = [conv_block(latent_channels, widths[-1])]
        for i in reversed(range(len(widths))):
            layers += [conv_block(widths[i], widths[i]) for _ in range(blocks_per_level)]
            if i > 0:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv_block(widths[i], widths[i - 1])]
        layers.append(nn.Conv2d(widths[0], 1, 3, padding=1))
        self.decoder = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> ConvAutoEncoder:
        net = cfg.network
        widths = tuple(net.base_channels * m for m in net.channel_mult)
        factor = 2 ** (len(widths) - 1)
        if cfg.prepare.size % factor:
            raise ConfigError(f"prepare.size {cfg.prepare.size} is not divisible by {factor} "
                              f"(2^(len(network.channel_mult) - 1)): choose a size or channel_mult that fits")
        return cls(widths, cfg.baseline.latent_channels, net.num_res_blocks)

    def encode(self, x: Tensor) -> Tensor:
        return self.to_latent(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encode(x))


class AutoEncoder(AnomalyMethod):
    """Convolutional AE (net key "ae"): loss MSE(recon(source), source); anomaly (source - recon)^2 in the brain."""

    name = "ae"
    net_key = "ae"

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        self.nets[self.net_key] = self.build_net(cfg)

    def build_net(self, cfg: ExperimentConfig) -> nn.Module:
        return ConvAutoEncoder.from_config(cfg)

    def losses(self) -> dict[str, LossFn]:
        return {self.net_key: self.loss}

    def loss(self, net: nn.Module, batch: SliceBatch, generator: torch.Generator) -> Tensor:
        """Scalar MSE between net(source) and source over the whole image."""
        return F.mse_loss(net(batch.source), batch.source)

    def score_with(self, nets: Nets, batch: SliceBatch, settings: ScoreConfig,
                   generator: torch.Generator | None) -> ScoreOutput:
        """anomaly_map (B, 1, H, W) = (source - recon)^2 in the brain; reconstruction (B, 1, H, W).

        Deterministic: `generator` is unused."""
        recon = nets[self.net_key](batch.source)
        side = residual_side(settings, self.cfg.source)
        return ScoreOutput(masked_error(batch.source, recon, batch.brain_mask, side), reconstruction=recon)


class DenoisingAutoEncoder(AutoEncoder):
    """DAE (net key "dae"): a UNet without time input trained to remove coarse noise from healthy slices.

    Kascenas et al., "Denoising autoencoders for unsupervised anomaly detection in brain MRI",
    MIDL 2022 (https://proceedings.mlr.press/v172/kascenas22a.html). Training input: source +
    coarse noise inside the brain; scoring input: the clean source.
    """

    name = "dae"
    net_key = "dae"

    def build_net(self, cfg: ExperimentConfig) -> nn.Module:
        return translation_unet(cfg.network, cfg.prepare.size)  # a plain 1 -> 1 UNet (here: noisy -> clean)

    def loss(self, net: nn.Module, batch: SliceBatch, generator: torch.Generator) -> Tensor:
        """Scalar MSE between net(source + coarse noise) and source over the whole image."""
        x = batch.source
        g = make_generator(self.cfg.train.seed, generator)  # training always passes one
        noise = coarse_noise(tuple(x.shape), self.cfg.baseline.dae_noise_resolution,
                             self.cfg.baseline.dae_noise_std, g, x.device)
        noisy = x + noise * batch.brain_mask.to(x.dtype)  # noise only inside the brain, as in the paper
        return F.mse_loss(net(noisy), x)
