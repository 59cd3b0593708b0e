"""Stripe masks for MMCCD: one source for training (random stripes) and inference (the mask ensemble).

Convention: a mask m is a float tensor (..., 1, H, W) with m = 1 outside the stripe (visible source) and
m = 0 inside it (masked: replaced by noise). A "vertical" stripe spans the full height over a band of
columns; a "horizontal" one spans the full width over a band of rows. Stripes are clipped at the border.

Reference (arXiv 2308.16150, authors' code): 128 px images, 16 px stripes; training starts uniform over
even offsets 0..126; inference uses 64 vertical + 64 horizontal stripes at a 2 px stride. At other sizes the
widths and strides are scaled by `mmccd.config.scale_from_reference`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mmccd.errors import ConfigError

DIRECTIONS = ("vertical", "horizontal")


def _stripe_masks(size: int, starts: Tensor, vertical: Tensor, width: int) -> Tensor:
    """(B,) starts and (B,) bool directions -> (B, 1, S, S) masks, 1 visible / 0 in the stripe."""
    idx = torch.arange(size, device=starts.device)
    inside = (idx[None] >= starts[:, None]) & (idx[None] < starts[:, None] + width)  # (B, S)
    cols = inside[:, None, :].expand(-1, size, -1)  # vertical: a band of columns, every row
    rows = inside[:, :, None].expand(-1, -1, size)  # horizontal: a band of rows, every column
    hidden = torch.where(vertical[:, None, None], cols, rows)
    return (~hidden).float()[:, None]


def random_stripe_masks(batch: int, size: int, width: int, generator: torch.Generator | None,
                        per_batch: bool = False, device: torch.device | str | None = None) -> Tensor:
    """Training masks (B, 1, S, S): start uniform over even offsets 0..S-2, direction uniform.

    Draw order from `generator` (on its own device): starts (k,), then directions (k,), k = 1 if
    `per_batch` (one stripe for the whole batch, as the reference code) else `batch`.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    k = 1 if per_batch else batch
    n_starts = (size - 2) // 2 + 1  # even offsets 0, 2, ..., <= S-2
    starts = 2 * torch.randint(0, n_starts, (k,), generator=generator, device=gen_device)
    vertical = torch.randint(0, 2, (k,), generator=generator, device=gen_device) == 0
    masks = _stripe_masks(size, starts, vertical, width)
    if per_batch:
        masks = masks.expand(batch, -1, -1, -1).contiguous()
    return masks.to(device) if device is not None else masks


def coverage(masks: Tensor) -> Tensor:
    """(..., S, S) masks -> (S, S) long: how many masks hide (m == 0) each pixel."""
    return (masks == 0).reshape(-1, *masks.shape[-2:]).sum(0)


def stripe_ensemble(size: int, width: int, stride: int, num_masks: int | None = None,
                    directions: Sequence[str] = DIRECTIONS) -> Tensor:
    """Inference ensemble (M, 1, S, S): for each direction (in order), stripes at increasing starts.

    Without `num_masks`: starts 0, stride, 2*stride, ... < size (reference: 128 px, width 16, stride 2 ->
    64 vertical + 64 horizontal). With `num_masks` the stride is ignored: k = num_masks / len(directions)
    starts per direction, s_i = 2 * floor(i * S / (2k)) (evenly spaced, on the even grid the model was
    trained on; equals the stride rule for 128 masks at 128 px); when k exceeds the S/2 even starts,
    s_i = floor(i * S / k) on the 1-px grid (128 masks at 64 px: the reference scaled, 1-px stride,
    every pixel hidden by as many masks as at 128 px). Raises ValueError if the stripes would
    leave a pixel uncovered (width smaller than the gap between starts): more masks or wider stripes
    are needed, and widening silently would show the model stripes it never saw in training.
    """
    for d in directions:
        if d not in DIRECTIONS:
            raise ConfigError(f"unknown stripe direction '{d}': expected one of {DIRECTIONS}")
    if num_masks is None:
        if stride < 1:
            raise ConfigError(f"stride must be >= 1, found {stride}")
        starts = list(range(0, size, stride))
    else:
        k, rest = divmod(num_masks, len(directions))
        if rest or k < 1:
            raise ConfigError(f"num_masks={num_masks} must be a positive multiple of {len(directions)} "
                             f"(one set of stripes per direction {tuple(directions)})")
        if k > size:
            raise ConfigError(f"num_masks={num_masks} is more than the {size} distinct stripe starts per "
                             f"direction at {size} px")
        even = k <= (size + 1) // 2
        starts = [2 * ((i * size) // (2 * k)) if even else (i * size) // k for i in range(k)]
    start_t = torch.tensor(starts, dtype=torch.long)
    masks = torch.cat([_stripe_masks(size, start_t, torch.full_like(start_t, d == "vertical", dtype=torch.bool),
                                     width) for d in directions])
    if (coverage(masks) == 0).any():
        need = len(directions) * -(-size // width)
        raise ConfigError(f"stripes of width {width} with starts {starts[:4]}... leave pixels uncovered at "
                         f"{size} px: use at least num_masks={need} or a stride <= {width}")
    return masks


def merge_stripes(masks: Tensor, stripes_per_mask: int, directions: int = 2) -> Tensor:
    """Combine an ensemble's stripes k at a time: (M, 1, S, S) -> (M / k, 1, S, S), same coverage.

    Within each direction's n stripes, mask j hides stripes j, j + n/k, ..., j + (k-1) n/k (equally
    spaced, far apart), so every pixel is hidden exactly as often as before with k times fewer masks.
    The model was trained on one stripe per image: more hidden area is off its training distribution.
    """
    k = stripes_per_mask
    n = masks.shape[0] // directions
    if k < 1 or masks.shape[0] % directions or n % k:
        raise ConfigError(f"stripes_per_mask={k} must divide the {n} stripes per direction")
    hidden = (masks == 0).reshape(directions, k, n // k, *masks.shape[1:])  # stripe j + l*n/k at [:, l, j]
    return (~hidden.any(1)).float().reshape(-1, *masks.shape[1:])


def checkerboard_masks(size: int, block: int) -> Tensor:
    """Two complementary checkerboards of `block`-px squares (2, 1, S, S): every pixel hidden once."""
    if block < 1:
        raise ConfigError(f"checkerboard block must be >= 1 px, found {block}")
    idx = torch.arange(size) // block
    black = (idx[:, None] + idx[None, :]) % 2 == 0
    return torch.stack([(~black).float(), black.float()])[:, None]


def mask_ensemble(size: int, width: int, family: str = "stripes", stride: int = 2, num_masks: int | None = None,
                  directions: Sequence[str] = DIRECTIONS, stripes_per_mask: int = 1) -> Tensor:
    """The inference ensemble (M, 1, S, S) of a mask family; every pixel is hidden by at least one mask.

    family "stripes": `stripe_ensemble` (then `merge_stripes` if stripes_per_mask > 1);
    family "checkerboard": `checkerboard_masks` with blocks of the stripe width (off the training
    distribution: the model only saw stripes).
    """
    if family == "stripes":
        masks = stripe_ensemble(size, width, stride, num_masks=num_masks, directions=directions)
        return merge_stripes(masks, stripes_per_mask, len(directions)) if stripes_per_mask > 1 else masks
    if family == "checkerboard":
        return checkerboard_masks(size, width)
    raise ConfigError(f"unknown mask family '{family}': expected 'stripes' or 'checkerboard'")


def make_condition(source: Tensor, mask: Tensor, noise: Tensor) -> Tensor:
    """c = m * source + (1 - m) * noise: the source outside the stripe, noise inside. All (B, 1, H, W)."""
    return mask * source + (1 - mask) * noise


__all__ = ["DIRECTIONS", "checkerboard_masks", "coverage", "make_condition", "mask_ensemble", "merge_stripes",
           "random_stripe_masks", "stripe_ensemble"]
