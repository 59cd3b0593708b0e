"""Stripe masks for MMCCD: one source for training (random stripes) and inference (the mask ensemble).

Convention: a mask m is a float tensor (..., 1, H, W) with m = 1 outside the stripe (visible source) and
m = 0 inside it (masked: replaced by noise). A "vertical" stripe spans the full height over a band of
columns; a "horizontal" one spans the full width over a band of rows. Stripes are clipped at the border.

Reference (arXiv 2308.16150, authors' code): 128 px images, 16 px stripes; training starts uniform over
even offsets 0..126; inference uses 64 vertical + 64 horizontal stripes at a 2 px stride.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

DIRECTIONS = ("vertical", "horizontal")


def stripe_width_for(size: int, width_at_128: int = 16) -> int:
    """Stripe width scaled to an image of `size` px: even, at least 2 (16 at 128, 8 at 64, 30 at 240)."""
    return max(2, 2 * round(width_at_128 * size / 128 / 2))


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
    trained on; equals the stride rule for 128 masks at 128 px). Raises ValueError if the stripes would
    leave a pixel uncovered (width smaller than the gap between starts): more masks or wider stripes
    are needed, and widening silently would show the model stripes it never saw in training.
    """
    for d in directions:
        if d not in DIRECTIONS:
            raise ValueError(f"unknown stripe direction '{d}': expected one of {DIRECTIONS}")
    if num_masks is None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, found {stride}")
        starts = list(range(0, size, stride))
    else:
        k, rest = divmod(num_masks, len(directions))
        if rest or k < 1:
            raise ValueError(f"num_masks={num_masks} must be a positive multiple of {len(directions)} "
                             f"(one set of stripes per direction {tuple(directions)})")
        starts = [2 * ((i * size) // (2 * k)) for i in range(k)]
        if len(set(starts)) < k:
            raise ValueError(f"num_masks={num_masks} is more than the {(size + 1) // 2} distinct even stripe "
                             f"starts per direction at {size} px")
    start_t = torch.tensor(starts, dtype=torch.long)
    masks = torch.cat([_stripe_masks(size, start_t, torch.full_like(start_t, d == "vertical", dtype=torch.bool),
                                     width) for d in directions])
    if (coverage(masks) == 0).any():
        need = len(directions) * -(-size // width)
        raise ValueError(f"stripes of width {width} with starts {starts[:4]}... leave pixels uncovered at "
                         f"{size} px: use at least num_masks={need} or a stride <= {width}")
    return masks


def make_condition(source: Tensor, mask: Tensor, noise: Tensor) -> Tensor:
    """c = m * source + (1 - m) * noise: the source outside the stripe, noise inside. All (B, 1, H, W)."""
    return mask * source + (1 - mask) * noise


__all__ = ["DIRECTIONS", "coverage", "make_condition", "random_stripe_masks", "stripe_ensemble", "stripe_width_for"]
