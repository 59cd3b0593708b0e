"""Deterministic contrast translation with a plain (time-free) UNet.

The backward model of MMCCD (target -> source) and both directions of the Cyclic UNet
(arXiv 2308.16150, Sec. 3): x (B, 1, H, W) -> (B, 1, H, W), trained with MSE.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmccd.config import NetworkConfig
from mmccd.models.unet import UNet


class TranslationUNet(nn.Module):
    """Wraps a UNet(1 -> 1, time_conditioning=False, cond_dim=None)."""

    def __init__(self, net: UNet):
        super().__init__()
        if net.time_conditioning or net.cond_dim:
            raise ValueError("TranslationUNet needs a plain UNet: time_conditioning=False and cond_dim=None")
        self.net = net

    @classmethod
    def from_config(cls, net_cfg: NetworkConfig, image_size: int, channels: int = 1) -> TranslationUNet:
        return cls(UNet.from_config(net_cfg, in_channels=channels, out_channels=channels, image_size=image_size,
                                    time_conditioning=False))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) source contrast -> (B, C, H, W) translated contrast."""
        return self.net(x)

    def loss(self, source_img: Tensor, target_img: Tensor) -> Tensor:
        """MSE between the translation of source_img and target_img, both (B, C, H, W)."""
        return F.mse_loss(self(source_img), target_img)


__all__ = ["TranslationUNet"]
