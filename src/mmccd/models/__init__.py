"""Networks, losses and samplers: UNet (guided-diffusion style), NoiseSchedule (no weights) with the one
timestep rule and the DDIM loop, MaskedConditionalDiffusion (MMCCD's forward model), translation UNets.

DDIM convention of every sampler here (`noise_schedule.ddim_loop`): the networks predict x0; timesteps
come from `NoiseSchedule.timesteps` (leading / trailing / linspace from a partial start) in descending
order; each step computes x0_pred at t (drawing the model's own per-step noise first), returns x0_pred
after the last t (x at t_prev = -1 would equal it), and otherwise draws the DDIM noise (eta > 0) and steps
to the next t. Every random draw comes from an explicit torch.Generator (one per row where rows must not
depend on their batch).
"""

from collections.abc import Callable

import torch
from torch import Tensor, nn

from mmccd.data.batch import SliceBatch
from mmccd.models.masked_diffusion import MaskedConditionalDiffusion, sample_masked
from mmccd.models.noise_schedule import NoiseSchedule, ddim_loop
from mmccd.models.translation import translation_loss, translation_unet
from mmccd.models.unet import UNet, count_parameters

#: loss(net, batch, generator) -> scalar; every randomness from `generator` (what the training loop calls)
LossFn = Callable[[nn.Module, SliceBatch, torch.Generator], Tensor]

__all__ = ["LossFn", "MaskedConditionalDiffusion", "NoiseSchedule", "UNet", "count_parameters", "ddim_loop",
           "sample_masked", "translation_loss", "translation_unet"]
