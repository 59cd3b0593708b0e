"""Guided-diffusion-style UNet (Dhariwal & Nichol, arXiv 2105.05233; openai/guided-diffusion `unet.py`).

One network for every model of the toolkit:
  - the MMCCD forward model: time-conditioned, input = [x_t, condition], output = x0_pred;
  - the cDDPM baseline: time embedding + a projected latent `cond` added to it;
  - plain translation UNets (MMCCD backward model, Cyclic UNet): no embedding at all.

Architecture (top-down): stem conv -> encoder levels [ResBlock (+Attention)] x num_res_blocks, then a
residual down-sampling ResBlock -> middle ResBlock-Attention-ResBlock -> decoder levels with skip
concatenation and residual up-sampling -> GroupNorm-SiLU-zero conv. Residual blocks use scale-shift
norm (`h = norm(h) * (1 + scale) + shift`) when there is an embedding. Shapes: x (B, C_in, H, W) ->
(B, C_out, H, W), H and W divisible by 2**(len(channel_mult) - 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmccd.config import NetworkConfig


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _groups(ch: int, max_groups: int = 32) -> int:
    """Largest number of GroupNorm groups <= max_groups that divides `ch` (32 as in guided-diffusion)."""
    return next(g for g in range(min(max_groups, ch), 0, -1) if ch % g == 0)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(ch), ch)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer so every residual branch starts as the identity (2105.05233, App. A)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim), [cos | sin] as in guided-diffusion."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """Residual block, optionally resampling (resblock_updown) and modulated by an embedding.

    x (B, ch, H, W), emb (B, emb_dim) or None -> (B, out_ch, H', W') with H' = 2H (up), H/2 (down) or H.
    """

    def __init__(self, ch: int, out_ch: int, emb_dim: int | None, dropout: float,
                 up: bool = False, down: bool = False):
        super().__init__()
        self.in_norm = _norm(ch)
        self.in_conv = nn.Conv2d(ch, out_ch, 3, padding=1)
        self.up, self.down = up, down
        # scale and shift per channel from the embedding (use_scale_shift_norm=True)
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch)) if emb_dim else None
        self.out_norm = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if ch == out_ch else nn.Conv2d(ch, out_ch, 1)

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        h = F.silu(self.in_norm(x))
        # resample after the activation, before the conv, on both branches (guided-diffusion order)
        h = self.in_conv(self._resample(h))
        x = self._resample(x)
        h = self.out_norm(h)
        if self.emb_proj is not None:
            if emb is None:
                raise ValueError("this block is conditioned: pass an embedding (t and/or cond)")
            scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions: (B, ch, H, W) -> (B, ch, H, W).

    num_head_channels <= 0 means one head over all channels (the MMCCD reference: num_heads=1).
    """

    def __init__(self, ch: int, num_head_channels: int):
        super().__init__()
        if num_head_channels > 0 and ch % num_head_channels:
            raise ValueError(f"attention: {ch} channels are not divisible by num_head_channels={num_head_channels}")
        self.heads = ch // num_head_channels if num_head_channels > 0 else 1
        self.norm = _norm(ch)
        # 1x1 convs (same weights as guided-diffusion's conv1d) keep channels_last inputs valid
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, hgt * wid)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # each (B, heads, HW, head_ch)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        out = out.transpose(-1, -2).reshape(b, c, hgt, wid)
        return x + self.proj(out)


class _Level(nn.Module):
    """One step of the encoder/decoder: a ResBlock optionally followed by attention."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class UNet(nn.Module):
    """Guided-diffusion UNet. forward(x (B, in, H, W), t (B,) long, cond (B, cond_dim)) -> (B, out, H, W).

    attention_resolutions are feature-map sizes in pixels (at image_size 128, (32, 16, 8) puts attention
    where the map is 32x32, 16x16 and 8x8). With time_conditioning=False and cond_dim=None there is no
    embedding and the residual blocks skip the scale-shift: a plain image-to-image UNet.
    """

    def __init__(self, in_channels: int, out_channels: int, image_size: int, base_channels: int = 32,
                 channel_mult: Sequence[int] = (1, 1, 2, 3, 4), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (32, 16, 8), num_head_channels: int = 32,
                 dropout: float = 0.1, time_conditioning: bool = True, cond_dim: int | None = None):
        super().__init__()
        factor = 2 ** (len(channel_mult) - 1)
        if image_size % factor:
            raise ValueError(f"image_size {image_size} must be divisible by 2**(len(channel_mult)-1) = {factor}")
        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, image_size
        self.time_conditioning, self.cond_dim = time_conditioning, cond_dim
        self.base_channels = base_channels

        # 1. embedding: sinusoidal(t) -> MLP, plus a projected latent (cDDPM) added to it
        emb_dim = 4 * base_channels if (time_conditioning or cond_dim) else None
        self.time_mlp = (nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
                         if time_conditioning else None)
        self.cond_proj = nn.Linear(cond_dim, emb_dim) if cond_dim else None

        def attn(ch: int, size: int) -> AttentionBlock | None:
            return AttentionBlock(ch, num_head_channels) if size in attention_resolutions else None

        # 2. encoder: record each output's channels for the skip connections
        ch = base_channels * channel_mult[0]
        self.stem = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips, size = [ch], image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = base_channels * mult
                self.down.append(_Level(ResBlock(ch, out, emb_dim, dropout), attn(out, size)))
                ch = out
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(_Level(ResBlock(ch, ch, emb_dim, dropout, down=True), None))
                skips.append(ch)
                size //= 2

        # 3. middle: ResBlock - Attention - ResBlock (attention always, as guided-diffusion)
        self.mid = nn.ModuleList([
            _Level(ResBlock(ch, ch, emb_dim, dropout), AttentionBlock(ch, num_head_channels)),
            _Level(ResBlock(ch, ch, emb_dim, dropout), None),
        ])

        # 4. decoder: num_res_blocks + 1 blocks per level, each eating one skip; up-sample at level end
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                out = base_channels * mult
                self.up.append(_Level(ResBlock(ch + skips.pop(), out, emb_dim, dropout), attn(out, size)))
                ch = out
                if level and i == num_res_blocks:
                    self.up.append(_Level(ResBlock(ch, ch, emb_dim, dropout, up=True), None))
                    size *= 2
        # marks which decoder entries consume a skip (the up-sampling blocks do not)
        self._up_takes_skip = [not m.res.up for m in self.up]

        # 5. output: GroupNorm - SiLU - zero conv (the net starts by predicting 0)
        self.out_norm = _norm(ch)
        self.out_conv = _zero(nn.Conv2d(ch, out_channels, 3, padding=1))

    @classmethod
    def from_config(cls, net_cfg: NetworkConfig, in_channels: int, out_channels: int, image_size: int,
                    time_conditioning: bool = True, cond_dim: int | None = None) -> UNet:
        return cls(in_channels, out_channels, image_size, base_channels=net_cfg.base_channels,
                   channel_mult=tuple(net_cfg.channel_mult), num_res_blocks=net_cfg.num_res_blocks,
                   attention_resolutions=tuple(net_cfg.attention_resolutions),
                   num_head_channels=net_cfg.num_head_channels, dropout=net_cfg.dropout,
                   time_conditioning=time_conditioning, cond_dim=cond_dim)

    def embed(self, t: Tensor | None, cond: Tensor | None, batch: int) -> Tensor | None:
        """(B, 4*base_channels) embedding of t and cond, or None for a plain UNet."""
        emb = None
        if self.time_mlp is not None:
            if t is None:
                raise ValueError("this UNet is time-conditioned: pass t, a (B,) tensor of timesteps")
            t = torch.as_tensor(t, device=self.stem.weight.device).reshape(-1).expand(batch)
            emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.cond_proj is not None:
            if cond is None:
                raise ValueError(f"this UNet has cond_dim={self.cond_dim}: pass cond, a (B, {self.cond_dim}) tensor")
            c = self.cond_proj(cond)
            emb = c if emb is None else emb + c
        elif cond is not None:
            raise ValueError("cond was passed but this UNet was built without cond_dim")
        return emb

    def forward(self, x: Tensor, t: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """x (B, in_channels, H, W), t (B,) or scalar, cond (B, cond_dim) -> (B, out_channels, H, W)."""
        emb = self.embed(t, cond, x.shape[0])
        h = self.stem(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block, takes_skip in zip(self.up, self._up_takes_skip, strict=True):
            if takes_skip:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        return self.out_conv(F.silu(self.out_norm(h)))


__all__ = ["UNet", "count_parameters", "timestep_embedding"]
