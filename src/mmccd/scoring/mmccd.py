"""MMCCD: masked conditional diffusion forward, plain UNet backward, mask-ensemble cyclic error.

Liang, Anthony, Wagner, Kamnitsas, "Modality Cycles with Masked Conditional Diffusion for
Unsupervised Anomaly Segmentation in MRI", MMMI @ MICCAI 2023, arXiv 2308.16150.

Notation: source s (input contrast), target y, mask m (1 visible, 0 masked), hidden h = 1 - m,
generated target y_hat = DDIM(x_T; c = m*s + (1-m)*n), cyclic reconstruction s_hat = B(y_hat).

Scoring a batch of slices, step by step (each step a function below):
  1. the mask ensemble (M, 1, S, S) (`MMCCD.masks`, from the score settings);
  2. per slice, one seed drawn from `generator` in slice order; from it the slice's initial noise x_T
     (shared by all its masks) and one noise stream per (slice, mask): the maps do not depend on how
     (slice, mask) rows are grouped into network calls (`noise_streams`);
  3. rows (slice_idx, mask_idx) in slice-major order, `mask_batch * slice_batch` per call: DDIM-sample
     y_hat, refilling the masked part of the condition with fresh noise at every step (`imagine_targets`);
  4a. `per_mask_map` (default): s_hat = B(y_hat) per row; anomaly = sum_j (s - s_hat_j)^2 h_j / sum_j h_j
     (mean error over the masks that hid the pixel);
  4b. `composite_map` (`score.composite`): y_comp = sum_j y_hat_j h_j / sum_j h_j (each pixel imagined by
     the masks that hid it), s_hat = B(y_comp) once per slice; anomaly = (s - s_hat)^2. Not identical to 4a
     (B is not linear): M - 1 fewer backward passes; its accuracy is measured in docs/speed.md;
  5. `refine_map` (`score.refine_iterations` > 0, beyond the paper): iterative mask refinement of the map.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmccd.config import ExperimentConfig, ScoreConfig, scale_from_reference
from mmccd.data.batch import SliceBatch
from mmccd.masks import mask_ensemble, random_stripe_masks
from mmccd.models import (
    LossFn,
    MaskedConditionalDiffusion,
    NoiseSchedule,
    UNet,
    sample_masked,
    translation_unet,
)
from mmccd.scoring.base import AnomalyMethod, Nets, ScoreOutput, residual, residual_side
from mmccd.scoring.cyclic_unet import backward_translation_loss, noisy_source


def build_forward_model(cfg: ExperimentConfig) -> MaskedConditionalDiffusion:
    net = UNet.from_config(cfg.network, in_channels=2, out_channels=1, image_size=cfg.prepare.size,
                           time_conditioning=True)
    d = cfg.diffusion
    return MaskedConditionalDiffusion(net, NoiseSchedule(d.num_timesteps, d.beta_start, d.beta_end))


class MMCCD(AnomalyMethod):
    name = "mmccd"
    default_scoring = "fast"  # 17 network passes per slice instead of 12,928 (docs/speed.md)
    shared_networks = {"target_to_source": "cyclic-unet"}

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        self.nets["source_to_target"] = build_forward_model(cfg)
        self.nets["target_to_source"] = translation_unet(cfg.network, cfg.prepare.size)
        self.stripe_width = scale_from_reference(cfg.diffusion.stripe_width, cfg.prepare.size, even=True, minimum=2)

    # ------------------------------------------------------------------ training
    def _forward_loss(self, net: nn.Module, batch: SliceBatch, generator: torch.Generator) -> Tensor:
        mask = random_stripe_masks(len(batch), self.cfg.prepare.size, self.stripe_width, generator,
                                   per_batch=self.cfg.diffusion.mask_per_batch, device=batch.source.device)
        # with train.source_noise_std > 0 the visible context is corrupted by coarse noise (drawn after the mask)
        return net.loss(noisy_source(batch, self.cfg.train, generator), batch.target, mask, generator)

    def losses(self) -> dict[str, LossFn]:
        return {"source_to_target": self._forward_loss, "target_to_source": backward_translation_loss}

    # ------------------------------------------------------------------ scoring
    def masks(self, settings: ScoreConfig) -> Tensor:
        """1. The inference ensemble (M, 1, S, S), 1 visible / 0 masked."""
        size = self.cfg.prepare.size
        return mask_ensemble(size, self.stripe_width, settings.mask_family,
                             scale_from_reference(settings.mask_stride, size), num_masks=settings.num_masks or None,
                             directions=settings.mask_directions, stripes_per_mask=settings.stripes_per_mask)

    def network_evaluations(self, settings: ScoreConfig, slices: int = 1) -> int:
        """Network passes to score `slices` slices: masks x DDIM steps forward, plus the backward passes."""
        m = len(self.masks(settings))
        return slices * (m * settings.ddim_steps + (1 if settings.composite else m))

    def score_with(self, nets: Nets, batch: SliceBatch, settings: ScoreConfig,
                   generator: torch.Generator | None) -> ScoreOutput:
        source = batch.source
        if generator is None:
            generator = torch.Generator(device=source.device).manual_seed(settings.seed)
        masks = self.masks(settings).to(source.device)
        streams = noise_streams(generator, source, len(masks))
        forward: MaskedConditionalDiffusion = self.nets["source_to_target"]  # type: ignore[assignment]
        imagined = imagine_targets(nets["source_to_target"], forward.schedule, source, masks, streams, settings)
        finish = composite_map if settings.composite else per_mask_map
        side = residual_side(settings, self.cfg.source)
        amap, translation, reconstruction = finish(imagined, nets["target_to_source"], source, masks, settings, side)
        brain = batch.brain_mask.to(source.dtype)
        if settings.refine_iterations:
            amap, translation, reconstruction = refine_map(
                nets["source_to_target"], forward.schedule, nets["target_to_source"], source, batch.brain_mask,
                masks, amap * brain, translation, reconstruction, streams, settings, side)
        return ScoreOutput((amap * brain).contiguous(), translation.contiguous(), reconstruction.contiguous())


@dataclass
class NoiseStreams:
    """2. seeds (one per slice, drawn in slice order) and each slice's initial noise x_T (N, 1, S, S)."""

    generator: torch.Generator
    seeds: list[int]
    x_T: Tensor

    def row(self, slice_idx: int, mask_idx: int) -> torch.Generator:
        """The noise stream of one (slice, mask) row."""
        return _stream(self.generator, self.seeds[slice_idx], mask_idx)


def noise_streams(generator: torch.Generator, source: Tensor, num_masks: int) -> NoiseStreams:
    """Draw the per-slice seeds from `generator`, then each slice's x_T from its own stream (-1)."""
    seeds = torch.randint(0, 2**62, (len(source),), generator=generator, device=generator.device).tolist()
    x_T = torch.cat([torch.randn((1, *source.shape[1:]), generator=_stream(generator, seed, -1),
                                 device=generator.device) for seed in seeds]).to(source.device, source.dtype)
    return NoiseStreams(generator, seeds, x_T)


@dataclass
class Imagined:
    """One network call's rows: which slice and mask each is, its hidden region and the imagined target."""

    slice_idx: Tensor  # (R,) long
    mask_idx: Tensor  # (R,) long
    hidden: Tensor  # (R, 1, S, S) 1 where the row's mask hid the source
    source: Tensor  # (R, 1, S, S) the row's slice
    y_hat: Tensor  # (R, 1, S, S) the target imagined under the mask


def imagine_targets(forward: nn.Module, schedule: NoiseSchedule, source: Tensor, masks: Tensor,
                    streams: NoiseStreams, settings: ScoreConfig) -> Iterator[Imagined]:
    """3. DDIM under every (slice, mask) row, `mask_batch * slice_batch` rows per network call, slice-major."""
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    src = source.contiguous(memory_format=fmt)
    hidden = 1.0 - masks
    rows = [(i, j) for i in range(len(source)) for j in range(len(masks))]
    per_call = settings.mask_batch * settings.slice_batch
    for a in range(0, len(rows), per_call):
        chunk = rows[a: a + per_call]
        slice_idx = torch.tensor([i for i, _ in chunk], device=source.device)
        mask_idx = torch.tensor([j for _, j in chunk], device=source.device)
        y_hat = sample_masked(forward, schedule, src[slice_idx], masks[mask_idx].contiguous(memory_format=fmt),
                              num_steps=settings.ddim_steps, eta=settings.eta,
                              generator=[streams.row(i, j) for i, j in chunk],
                              x_T=streams.x_T[slice_idx].contiguous(memory_format=fmt),
                              spacing=settings.timestep_spacing)
        yield Imagined(slice_idx, mask_idx, hidden[mask_idx], src[slice_idx], y_hat)


def per_mask_map(imagined: Iterator[Imagined], backward: nn.Module, source: Tensor, masks: Tensor,
                 settings: ScoreConfig, side: str = "squared") -> tuple[Tensor, Tensor, Tensor]:
    """4a. One backward pass per row; the map is the mean error over the masks that hid each pixel.

    Returns (anomaly map, composite translation, mean reconstruction), each (N, 1, S, S)."""
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    src = source.contiguous(memory_format=fmt)
    y_sum, err_sum, r_sum = torch.zeros_like(src), torch.zeros_like(src), torch.zeros_like(src)
    for rows in imagined:
        y_sum.index_add_(0, rows.slice_idx, rows.y_hat * rows.hidden)
        s_hat = backward(rows.y_hat).to(src.dtype)
        err_sum.index_add_(0, rows.slice_idx, residual(rows.source, s_hat, side) * rows.hidden)
        r_sum.index_add_(0, rows.slice_idx, s_hat * rows.hidden)
    cov = _coverage(masks)
    return err_sum / cov, y_sum / cov, r_sum / cov


def composite_map(imagined: Iterator[Imagined], backward: nn.Module, source: Tensor, masks: Tensor,
                  settings: ScoreConfig, side: str = "squared") -> tuple[Tensor, Tensor, Tensor]:
    """4b. One backward pass per slice on the composite of the imagined regions; map = (s - s_hat)^2.

    Returns (anomaly map, composite translation, reconstruction), each (N, 1, S, S)."""
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    src = source.contiguous(memory_format=fmt)
    y_sum = torch.zeros_like(src)
    for rows in imagined:
        y_sum.index_add_(0, rows.slice_idx, rows.y_hat * rows.hidden)
    translation = y_sum / _coverage(masks)
    per_call = settings.mask_batch * settings.slice_batch
    reconstruction = torch.cat([backward(translation[k: k + per_call]).to(src.dtype)
                                for k in range(0, len(src), per_call)])
    return residual(src, reconstruction, side), translation, reconstruction


def refine_map(forward: nn.Module, schedule: NoiseSchedule, backward: nn.Module, source: Tensor, brain: Tensor,
               masks: Tensor, first: Tensor, translation: Tensor, reconstruction: Tensor, streams: NoiseStreams,
               settings: ScoreConfig, side: str = "squared") -> tuple[Tensor, Tensor, Tensor]:
    """5. Iterative mask refinement (after IterMask2, Liang et al., arXiv 2406.02422), on the stripe model.

    Notation: q = settings.refine_quantile; per slice i, tau_i = the q-quantile of its first map in the brain.
      0. hidden_i = brain pixels with first-map score >= tau_i (the candidates); everything else is revealed;
      1. imagine the target under stripe_j AND hidden_i only, for every stripe j meeting hidden_i: the model
         sees the source everywhere else, so a candidate gets more context than in the first pass, and the
         masks stay stripes (what the model was trained on) with part of the stripe visible;
      2. one backward pass on the translation with those pixels replaced; error e = (s - s_hat)^2;
      3. a hidden pixel whose new error is below tau_i is revealed (healthy tissue the model can explain
         once it sees its surroundings); the map keeps each pixel's last error;
      4. repeat 1-3 for `refine_iterations` rounds, or until nothing is revealed (hidden only shrinks).
    Noise: stream (slice, (round + 1) * M + j), distinct from the first pass's. Returns (map, translation,
    reconstruction), each (N, 1, S, S)."""
    n, m = len(source), len(masks)
    inside = brain.bool()
    tau = torch.stack([torch.quantile(first[i][inside[i]].float(), settings.refine_quantile) if inside[i].any()
                       else first.new_tensor(float("inf")) for i in range(n)]).to(first.dtype)
    hidden = (first >= tau.view(-1, 1, 1, 1)) & inside
    current, comp, recon = first.clone(), translation.clone(), reconstruction.clone()
    stripes = (1.0 - masks).bool()  # (M, 1, S, S) True inside stripe j
    per_call = settings.mask_batch * settings.slice_batch
    for rnd in range(settings.refine_iterations):
        rows = [(i, j) for i in range(n) for j in range(m) if (stripes[j] & hidden[i]).any()]
        if not rows:
            break
        y_sum, cov = torch.zeros_like(source), torch.zeros_like(source)
        for a in range(0, len(rows), per_call):
            chunk = rows[a: a + per_call]
            si = torch.tensor([i for i, _ in chunk], device=source.device)
            h = torch.stack([(stripes[j] & hidden[i]).to(source.dtype) for i, j in chunk])
            y_hat = sample_masked(forward, schedule, source[si], 1.0 - h, num_steps=settings.ddim_steps,
                                  eta=settings.eta, generator=[streams.row(i, (rnd + 1) * m + j) for i, j in chunk],
                                  x_T=streams.x_T[si], spacing=settings.timestep_spacing)
            y_sum.index_add_(0, si, y_hat * h)
            cov.index_add_(0, si, h)
        comp = torch.where(cov > 0, y_sum / cov.clamp_min(1), comp)
        recon = torch.cat([backward(comp[k: k + per_call]).to(source.dtype) for k in range(0, n, per_call)])
        error = residual(source, recon, side)
        current = torch.where(hidden, error, current)
        revealed = hidden & (error < tau.view(-1, 1, 1, 1))
        hidden = hidden & ~revealed
        if not revealed.any():
            break
    return current, comp, recon


def _coverage(masks: Tensor) -> Tensor:
    """(1, S, S): how many masks hide each pixel (at least 1, so a division is safe)."""
    return (1.0 - masks).sum(0).clamp_min(1)


def _stream(generator: torch.Generator, seed: int, index: int) -> torch.Generator:
    """A generator for stream `index` of a slice's `seed` (splitmix64 mixing: distinct, well-spread seeds)."""
    z = (seed + (index + 2) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return torch.Generator(device=generator.device).manual_seed((z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF)


__all__ = ["MMCCD", "build_forward_model", "composite_map", "imagine_targets", "noise_streams", "per_mask_map",
           "refine_map"]
