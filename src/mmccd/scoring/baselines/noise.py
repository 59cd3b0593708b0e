"""Noise sources of the baselines, all drawn from an explicit `torch.Generator`.

- `gaussian`: i.i.d. N(0, 1).
- `coarse_noise`: N(0, std^2) on a coarse grid, bilinearly upsampled (DAE, Kascenas et al. 2022).
- `gradient_noise`: multi-octave gradient (Perlin) noise, a simplex-like stand-in for the simplex
  noise of AnoDDPM (Wyatt et al. 2022), normalised to zero mean and unit variance per image.

Noise is drawn on the generator's device (so CUDA generators work) and moved to `device`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mmccd.errors import ConfigError


def make_generator(seed: int, generator: torch.Generator | None) -> torch.Generator:
    """`generator`, or a CPU generator seeded with `seed` when None."""
    if generator is not None:
        return generator
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def gaussian(shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> Tensor:
    """N(0, 1) of `shape`."""
    return torch.randn(shape, generator=g, device=g.device).to(device)


def uniform(shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> Tensor:
    """U[0, 1) of `shape`."""
    return torch.rand(shape, generator=g, device=g.device).to(device)


def timesteps_uniform(n: int, num_timesteps: int, g: torch.Generator, device: torch.device) -> Tensor:
    """(n,) long, t ~ U{0, ..., num_timesteps - 1}."""
    return torch.randint(0, num_timesteps, (n,), generator=g, device=g.device).to(device)


def coarse_noise(shape: tuple[int, ...], resolution: int, std: float, g: torch.Generator,
                 device: torch.device) -> Tensor:
    """(B, C, H, W) noise: N(0, std^2) at resolution^2, bilinearly upsampled to H x W, randomly rolled.

    The random roll (one per batch, as in the DAE reference code) moves the coarse grid so its
    nodes do not always fall on the same pixels; it leaves a wrap-around seam, as the reference does."""
    b, c, h, w = shape
    r = max(1, min(resolution, h, w))
    coarse = gaussian((b, c, r, r), g, device) * std
    noise = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
    dy = int(torch.randint(0, h, (1,), generator=g, device=g.device))
    dx = int(torch.randint(0, w, (1,), generator=g, device=g.device))
    return torch.roll(noise, shifts=(dy, dx), dims=(-2, -1))


def _fade(t: Tensor) -> Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)  # Perlin's quintic: C2-smooth interpolation


def _perlin_octave(n: int, h: int, w: int, cells: int, g: torch.Generator, device: torch.device) -> Tensor:
    """(n, h, w) one octave of 2-D gradient noise with `cells` lattice cells across, random phase."""
    # 1. random unit gradients on a (cells + 2)^2 lattice; +1 for the far edge, +1 for the phase shift
    angle = uniform((n, cells + 2, cells + 2), g, device) * (2 * math.pi)
    grad = torch.stack((torch.cos(angle), torch.sin(angle)), dim=-1)  # (n, L, L, 2): (dy, dx) components
    # 2. pixel centres in lattice units, shifted by a random phase in [0, 1) per image and axis
    phase = uniform((n, 2), g, device)
    u_y = (torch.arange(h, device=device) + 0.5) * (cells / h)
    u_x = (torch.arange(w, device=device) + 0.5) * (cells / w)
    u_y = u_y[None, :] + phase[:, :1]  # (n, h)
    u_x = u_x[None, :] + phase[:, 1:]  # (n, w)
    i_y, i_x = u_y.floor().long(), u_x.floor().long()
    f_y, f_x = u_y - i_y, u_x - i_x
    batch = torch.arange(n, device=device)[:, None, None]

    # 3. dot product of each corner's gradient with the offset to that corner
    def corner(dy: int, dx: int) -> Tensor:
        gr = grad[batch, (i_y + dy)[:, :, None], (i_x + dx)[:, None, :]]  # (n, h, w, 2)
        return gr[..., 0] * (f_y - dy)[:, :, None] + gr[..., 1] * (f_x - dx)[:, None, :]

    # 4. smooth interpolation between the four corners
    w_y, w_x = _fade(f_y)[:, :, None], _fade(f_x)[:, None, :]
    top = torch.lerp(corner(0, 0), corner(0, 1), w_x)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), w_x)
    return torch.lerp(top, bottom, w_y)


def gradient_noise(shape: tuple[int, ...], g: torch.Generator, device: torch.device, *, base_cells: int = 4,
                   octaves: int = 6, persistence: float = 0.8) -> Tensor:
    """(B, C, H, W) multi-octave gradient noise, zero mean and unit variance per image.

    Octave k has base_cells * 2^k lattice cells across the image and amplitude persistence^k;
    octaves finer than 2 px are dropped. The defaults follow AnoDDPM's simplex settings (6 octaves,
    persistence 0.8, first wavelength 64 px at 256 px = a quarter of the image;
    https://github.com/Julian-Wyatt/AnoDDPM)."""
    b, c, h, w = shape
    total = torch.zeros((b * c, h, w), device=device)
    for k in range(octaves):
        cells = base_cells * 2**k
        if k > 0 and cells > max(h, w) // 2:
            break
        total += persistence**k * _perlin_octave(b * c, h, w, cells, g, device)
    total = total - total.mean(dim=(1, 2), keepdim=True)
    total = total / total.std(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    return total.reshape(b, c, h, w)


def diffusion_noise(kind: str, shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> Tensor:
    """The forward-process noise of the DDPM baselines: "gaussian" or "simplex" (gradient noise)."""
    if kind == "gaussian":
        return gaussian(shape, g, device)
    if kind == "simplex":
        return gradient_noise(shape, g, device)
    raise ConfigError(f"baseline.noise_type: expected 'gaussian' or 'simplex', found '{kind}'")
