"""Networks and diffusion pieces: UNet (guided-diffusion style), NoiseSchedule (no weights),
MaskedConditionalDiffusion (MMCCD forward model), TranslationUNet (plain contrast translation)."""

from mmccd.models.masked_diffusion import MaskedConditionalDiffusion
from mmccd.models.noise_schedule import NoiseSchedule
from mmccd.models.translation import TranslationUNet
from mmccd.models.unet import UNet, count_parameters

__all__ = ["MaskedConditionalDiffusion", "NoiseSchedule", "TranslationUNet", "UNet", "count_parameters"]
