"""Masked conditional diffusion (MCD): the forward translation model of MMCCD (arXiv 2308.16150, Sec. 2).

Notation:
  source    s, (B, 1, H, W): the input contrast
  target    y = x0, (B, 1, H, W): the contrast to generate
  mask      m, (B, 1, H, W): 1 visible, 0 inside the stripe (mmccd.masks)
  condition c = m * s + (1 - m) * n,  n ~ N(0, I) drawn fresh every time c is built
  x_t       noisy target at step t (NoiseSchedule.add_noise);  x0_pred = net([x_t, c], t)

The network predicts x0 and the loss is the MSE to the target over the whole image (the reference sets
predict_xstart=True). Sampling is DDIM (arXiv 2010.02502) without clipping x0_pred (the reference's
clip_denoised=False), refilling the masked part of c with fresh noise at every step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmccd.masks import make_condition
from mmccd.models.noise_schedule import NoiseSchedule
from mmccd.models.unet import UNet

Generators = torch.Generator | Sequence[torch.Generator] | None


def _randn(shape: torch.Size, generator: Generators, like: Tensor) -> Tensor:
    """N(0, 1) of `shape` drawn on the generator's device (CPU or CUDA), returned on like's device/dtype.

    A sequence of generators draws row b of the batch from generator[b] (one noise stream per row, so a
    row's noise does not depend on which other rows share its batch)."""
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device).to(like.device, like.dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}: pass one per row")
    rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device) for g in generator]
    return torch.cat(rows).to(like.device, like.dtype)


def ddim_timesteps(schedule: NoiseSchedule, num_steps: int, spacing: str = "leading") -> list[int]:
    """Descending timesteps to sample with.

    "leading": the reference's DDIM respacing (guided-diffusion), floor(i T / n) reversed: 990, ..., 0 for
    100 of 1000 steps; with few steps it starts far below T (1 step: t = 0, 2 steps: 500, 0), i.e. it
    treats pure noise x_T as an almost clean image. "trailing": T - 1 - floor(i T / n) = 999, 989, ..., 9:
    always starts at T - 1, where x_T is pure noise (Lin et al., arXiv 2305.08891, Table 2); 1 step is
    then a single x0 prediction from x_T and the context.
    """
    if spacing == "leading":
        return schedule.timesteps(num_steps).tolist()
    if spacing == "trailing":
        if not 1 <= num_steps <= schedule.num_timesteps:
            raise ValueError(f"num_steps must be in [1, {schedule.num_timesteps}], found {num_steps}")
        return [schedule.num_timesteps - 1 - (i * schedule.num_timesteps) // num_steps for i in range(num_steps)]
    raise ValueError(f"unknown timestep spacing '{spacing}': expected 'leading' or 'trailing'")


class MaskedConditionalDiffusion(nn.Module):
    """An x0-predicting conditional DDPM: net (UNet, 2 -> 1 channels, time-conditioned) + schedule (no weights)."""

    def __init__(self, net: UNet, schedule: NoiseSchedule | None = None):
        super().__init__()
        if net.in_channels != 2 or net.out_channels != 1 or not net.time_conditioning:
            raise ValueError("MaskedConditionalDiffusion needs a time-conditioned UNet with in_channels=2 "
                             f"(x_t, condition) and out_channels=1; found in={net.in_channels}, "
                             f"out={net.out_channels}, time_conditioning={net.time_conditioning}")
        self.net = net
        self.schedule = schedule if schedule is not None else NoiseSchedule()  # plain attribute: not in state_dict

    def forward(self, x_t: Tensor, condition: Tensor, t: Tensor) -> Tensor:
        """x0_pred (B, 1, H, W) from x_t, condition (B, 1, H, W) and t (B,) long."""
        return self.net(torch.cat([x_t, condition], dim=1), t)

    def loss(self, source: Tensor, target: Tensor, mask: Tensor, generator: torch.Generator | None) -> Tensor:
        """Training loss (scalar) for source, target, mask (B, 1, H, W).

        Draw order from `generator`: t (B,), noise for x_t (B, 1, H, W), noise for the condition.
        """
        b = target.shape[0]
        gen_device = generator.device if generator is not None else target.device
        # 1. t ~ U{0, ..., T-1} per sample
        t = torch.randint(0, self.schedule.num_timesteps, (b,), generator=generator, device=gen_device)
        t = t.to(target.device)
        # 2. x_t = sqrt(abar_t) y + sqrt(1 - abar_t) eps
        x_t = self.schedule.add_noise(target, _randn(target.shape, generator, target), t)
        # 3. condition: source outside the stripe, fresh noise inside
        c = make_condition(source, mask, _randn(source.shape, generator, source))
        # 4. predict x0 and regress it onto the clean target over the whole image
        return F.mse_loss(self(x_t, c, t), target)

    @torch.no_grad()
    def sample(self, source: Tensor, mask: Tensor, num_steps: int = 100, eta: float = 0.0,
               generator: Generators = None, x_T: Tensor | None = None, spacing: str = "leading") -> Tensor:
        """DDIM-generate the target under the masks: source, mask (B, 1, H, W) -> x0 (B, 1, H, W).

        B is typically masks x slices flattened: the caller batches many masks of one slice. x_T (B, 1, H, W)
        is the initial noise (e.g. one noise image expanded over all masks of a slice); drawn from
        `generator` if None. `generator` may be one per row (a sequence of B): row b's noise then comes
        from generator[b] alone. Draw order per step: condition noise, then (eta > 0) the DDIM noise.
        `spacing`: see `ddim_timesteps`. Put the net in eval() first: dropout in train mode would make
        samples irreproducible. Under autocast the net's output is cast back to x's dtype for the update.
        """
        # 1. initial noise x_T
        x = _randn(source.shape, generator, source) if x_T is None else x_T.to(source.device, source.dtype)
        steps = ddim_timesteps(self.schedule, num_steps, spacing)
        x0_pred = x
        for i, t in enumerate(steps):
            t_prev = steps[i + 1] if i + 1 < len(steps) else -1
            # 2. refill the masked part of the condition with fresh noise (every step, as the reference)
            c = make_condition(source, mask, _randn(source.shape, generator, source))
            # 3. predict x0 at step t
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            x0_pred = self(x, c, t_batch).to(x.dtype)
            # 4. DDIM update to t_prev (t_prev = -1: the final x0_pred)
            noise = _randn(x.shape, generator, x) if eta > 0 else None
            x = self.schedule.ddim_step(x, x0_pred, t, t_prev, eta=eta, noise=noise)
        return x0_pred


__all__ = ["MaskedConditionalDiffusion", "ddim_timesteps"]
