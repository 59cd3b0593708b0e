"""Deterministic contrast translation with a plain (time-free) UNet, and its loss.

The backward model of MMCCD (target -> source) and both directions of the Cyclic UNet
(arXiv 2308.16150, Sec. 3): x (B, 1, H, W) -> (B, 1, H, W), trained with MSE.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmccd.config import NetworkConfig
from mmccd.models.unet import UNet


def translation_unet(net_cfg: NetworkConfig, image_size: int) -> UNet:
    """A plain UNet mapping one contrast to another: (B, 1, S, S) -> (B, 1, S, S), no time or latent input."""
    return UNet.from_config(net_cfg, in_channels=1, out_channels=1, image_size=image_size, time_conditioning=False)


def translation_loss(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Scalar MSE between net(x) and y over the whole image, both (B, 1, H, W)."""
    return F.mse_loss(net(x), y)


__all__ = ["translation_loss", "translation_unet"]
