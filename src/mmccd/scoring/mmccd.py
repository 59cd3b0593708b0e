"""MMCCD: masked conditional diffusion forward, plain UNet backward, mask-ensemble cyclic error.

Liang, Anthony, Wagner, Kamnitsas, "Modality Cycles with Masked Conditional Diffusion for
Unsupervised Anomaly Segmentation in MRI", MMMI @ MICCAI 2023, arXiv 2308.16150.

Notation: source s (input contrast), target y, mask m (1 visible, 0 masked), hidden h = 1 - m,
generated target y_hat = DDIM(x_T; c = m*s + (1-m)*n), cyclic reconstruction s_hat = B(y_hat).

Scoring a batch of slices, step by step:
  1. build the mask ensemble (M, 1, S, S) (mmccd.masks.mask_ensemble, from `cfg.score`);
  2. per slice i, one seed drawn from `generator` in slice order; from it the slice's initial noise x_T
     (shared by all its masks) and one noise stream per (slice, mask): the maps do not depend on how
     (slice, mask) rows are grouped into network calls;
  3. rows (i, j) in slice-major order, `mask_batch * slice_batch` per call: DDIM-sample y_hat, refilling
     the masked part of the condition with fresh noise at every step;
  4a. default: s_hat = B(y_hat) per row; anomaly = sum_j (s - s_hat_j)^2 h_j / sum_j h_j (mean error over
     the masks that hid the pixel);
  4b. `score.composite`: y_comp = sum_j y_hat_j h_j / sum_j h_j (each pixel imagined by the masks that hid
     it), s_hat = B(y_comp) once per slice; anomaly = (s - s_hat)^2. Not identical to 4a (B is not
     linear): M - 1 fewer backward passes; its accuracy is measured in docs/speed.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from mmccd.config import ExperimentConfig, ScoreConfig
from mmccd.data.batch import SliceBatch
from mmccd.errors import ConfigError
from mmccd.masks import mask_ensemble, random_stripe_masks, stripe_width_for
from mmccd.models.masked_diffusion import MaskedConditionalDiffusion
from mmccd.models.noise_schedule import NoiseSchedule
from mmccd.models.unet import UNet
from mmccd.scoring.base import AnomalyMethod, LossFn
from mmccd.scoring.cyclic_unet import backward_translation_loss, translation_unet


def build_forward_model(cfg: ExperimentConfig) -> MaskedConditionalDiffusion:
    net = UNet.from_config(cfg.network, in_channels=2, out_channels=1, image_size=cfg.prepare.size,
                           time_conditioning=True)
    d = cfg.diffusion
    return MaskedConditionalDiffusion(net, NoiseSchedule(d.num_timesteps, d.beta_start, d.beta_end))


class MMCCD(AnomalyMethod):
    name = "mmccd"

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        self.nets["source_to_target"] = build_forward_model(cfg)
        self.nets["target_to_source"] = translation_unet(cfg)
        self.stripe_width = stripe_width_for(cfg.prepare.size, cfg.diffusion.stripe_width)

    # ------------------------------------------------------------------ training
    def _forward_loss(self, net: nn.Module, batch: SliceBatch, generator: torch.Generator) -> Tensor:
        mask = random_stripe_masks(len(batch), self.cfg.prepare.size, self.stripe_width, generator,
                                   per_batch=self.cfg.diffusion.mask_per_batch, device=batch.source.device)
        return net.loss(batch.source, batch.target, mask, generator)

    def losses(self) -> dict[str, LossFn]:
        return {"source_to_target": self._forward_loss, "target_to_source": backward_translation_loss}

    # ------------------------------------------------------------------ scoring
    def masks(self) -> Tensor:
        """The inference ensemble (M, 1, S, S), 1 visible / 0 masked."""
        sc = self.cfg.score
        size = self.cfg.prepare.size
        stride = max(1, round(sc.mask_stride * size / 128))
        return mask_ensemble(size, self.stripe_width, sc.mask_family, stride, num_masks=sc.num_masks or None,
                             directions=sc.mask_directions, stripes_per_mask=sc.stripes_per_mask)

    def network_evaluations(self, slices: int = 1) -> int:
        """Network passes to score `slices` slices: masks x DDIM steps forward, plus the backward passes."""
        sc = self.cfg.score
        m = len(self.masks())
        return slices * (m * sc.ddim_steps + (1 if sc.composite else m))

    @torch.inference_mode()
    def score(self, batch: SliceBatch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        sc = self.cfg.score
        source = batch.source
        device = source.device
        if generator is None:
            generator = torch.Generator(device=device).manual_seed(sc.seed)
        masks = self.masks().to(device)  # (M, 1, S, S)
        hidden = 1.0 - masks
        cov = hidden.sum(0).clamp_min(1)  # (1, S, S): masks hiding each pixel
        n, num = len(batch), len(masks)
        # 2. per-slice seeds in slice order, then the slice's x_T and one stream per (slice, mask)
        seeds = torch.randint(0, 2**62, (n,), generator=generator, device=generator.device).tolist()
        x_T = torch.cat([torch.randn((1, *source.shape[1:]), generator=_stream(generator, seed, -1),
                                     device=generator.device) for seed in seeds]).to(device, source.dtype)
        forward: MaskedConditionalDiffusion = self.nets["source_to_target"]  # type: ignore[assignment]
        with _inference_setup(self, sc) as (backward, autocast, fmt):
            src = source.contiguous(memory_format=fmt)
            y_sum, err_sum, r_sum = torch.zeros_like(src), torch.zeros_like(src), torch.zeros_like(src)
            rows = [(i, j) for i in range(n) for j in range(num)]
            per_call = sc.mask_batch * sc.slice_batch
            for a in range(0, len(rows), per_call):
                chunk = rows[a: a + per_call]
                si = torch.tensor([i for i, _ in chunk], device=device)
                mj = torch.tensor([j for _, j in chunk], device=device)
                gens = [_stream(generator, seeds[i], j) for i, j in chunk]
                s, h = src[si], hidden[mj]
                # 3. DDIM under each row's mask (the condition holds noise where m = 0)
                with autocast:
                    y_hat = forward.sample(s, masks[mj].contiguous(memory_format=fmt), num_steps=sc.ddim_steps,
                                           eta=sc.eta, generator=gens, x_T=x_T[si].contiguous(memory_format=fmt),
                                           spacing=sc.timestep_spacing)
                y_sum.index_add_(0, si, y_hat * h)
                if not sc.composite:  # 4a. one backward pass per row
                    with autocast:
                        s_hat = backward(y_hat).to(src.dtype)
                    err_sum.index_add_(0, si, (s - s_hat).pow(2) * h)
                    r_sum.index_add_(0, si, s_hat * h)
            translation = y_sum / cov
            if sc.composite:  # 4b. one backward pass per slice on the composite
                with autocast:
                    reconstruction = torch.cat([backward(translation[k: k + per_call]).to(src.dtype)
                                                for k in range(0, n, per_call)])
                amap = (src - reconstruction).pow(2)
            else:
                amap, reconstruction = err_sum / cov, r_sum / cov
        brain = batch.brain_mask.to(source.dtype)
        return {
            "anomaly_map": (amap * brain).contiguous(),
            "translation": translation.contiguous(),
            "reconstruction": reconstruction.contiguous(),
        }


def _stream(generator: torch.Generator, seed: int, index: int) -> torch.Generator:
    """A generator for stream `index` of a slice's `seed` (splitmix64 mixing: distinct, well-spread seeds)."""
    z = (seed + (index + 2) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return torch.Generator(device=generator.device).manual_seed((z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF)


def auto_amp(device: torch.device) -> str:
    """score.amp "auto": bf16 where the hardware computes it natively (CUDA with bf16, CPUs with avx512_bf16
    or AMX), fp16 on older CUDA GPUs, else none (emulated bf16 on a CPU is slower than fp32)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        native = [getattr(torch.cpu, f, lambda: False) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return "bf16" if any(f() for f in native) else "none"
    return "none"


@contextmanager
def _inference_setup(method: MMCCD, sc: ScoreConfig) -> Iterator[tuple[nn.Module, Any, torch.memory_format]]:
    """Networks and context for scoring: channels_last, autocast (bf16 / fp16) and torch.compile, as configured.

    Yields (backward UNet, autocast context, memory format). With `compile`, the forward model's
    UNet is swapped for its compiled version while scoring and restored afterwards (state_dict keys unchanged);
    channels_last weights are returned to the contiguous format afterwards.
    """
    forward: MaskedConditionalDiffusion = method.nets["source_to_target"]  # type: ignore[assignment]
    backward = method.nets["target_to_source"]
    device = method.device
    fmt = torch.channels_last if sc.channels_last else torch.contiguous_format
    if sc.channels_last:
        method.nets.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
    amp = auto_amp(device) if sc.amp == "auto" else sc.amp
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("score.amp fp16 needs a CUDA device; on a CPU use bf16 (avx512_bf16 / AMX) or none")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    net = forward.net
    bwd: nn.Module = backward
    if sc.compile:
        compiled = getattr(method, "_compiled", None)
        if compiled is None:
            compiled = method._compiled = (torch.compile(net), torch.compile(backward))  # type: ignore[attr-defined]
        forward.net, bwd = compiled  # type: ignore[assignment]
    try:
        yield bwd, autocast, fmt
    finally:
        forward.net = net
        if sc.channels_last:  # leave the weights as found (a few ms): other settings time fairly after this
            method.nets.to(memory_format=torch.contiguous_format)  # type: ignore[call-arg]


__all__ = ["MMCCD", "build_forward_model"]
