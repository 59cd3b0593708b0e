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

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmccd.masks import make_condition
from mmccd.models.noise_schedule import NoiseSchedule, ddim_loop
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

    def sample(self, source: Tensor, mask: Tensor, num_steps: int = 100, eta: float = 0.0,
               generator: Generators = None, x_T: Tensor | None = None, spacing: str = "leading") -> Tensor:
        """`sample_masked` with this model (put it in eval() first)."""
        return sample_masked(self, self.schedule, source, mask, num_steps, eta, generator, x_T, spacing)


Model = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x_t, condition, t) -> x0_pred: the module, or its compiled form


@torch.no_grad()
def sample_masked(model: Model, schedule: NoiseSchedule, source: Tensor, mask: Tensor, num_steps: int = 100,
                  eta: float = 0.0, generator: Generators = None, x_T: Tensor | None = None,
                  spacing: str = "leading") -> Tensor:
    """DDIM-generate the target under the masks: source, mask (B, 1, H, W) -> x0 (B, 1, H, W).

    B is typically masks x slices flattened: the caller batches many masks of one slice. x_T (B, 1, H, W)
    is the initial noise (e.g. one noise image expanded over all masks of a slice); drawn from
    `generator` if None. `generator` may be one per row (a sequence of B): row b's noise then comes
    from generator[b] alone. Draw order per step: condition noise, then (eta > 0, not at the last step)
    the DDIM noise. `spacing`: NoiseSchedule.timesteps. Dropout must be off (eval()) for reproducible
    samples. Under autocast the net's output is cast back to x's dtype for the update.
    """
    # 1. initial noise x_T
    x = _randn(source.shape, generator, source) if x_T is None else x_T.to(source.device, source.dtype)

    def predict_x0(x_t: Tensor, t: int) -> Tensor:
        # 2. refill the masked part of the condition with fresh noise (every step, as the reference)
        c = make_condition(source, mask, _randn(source.shape, generator, source))
        # 3. predict x0 at step t
        t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        return model(x_t, c, t_batch).to(x_t.dtype)

    # 4. the DDIM loop (mmccd.models convention)
    return ddim_loop(predict_x0, x, schedule.timesteps(num_steps, spacing), schedule, eta,
                     lambda: _randn(x.shape, generator, x))


__all__ = ["MaskedConditionalDiffusion", "sample_masked"]
