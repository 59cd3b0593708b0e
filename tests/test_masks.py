"""Stripe masks: reference ensemble coverage counts, random training stripes, the condition."""

from __future__ import annotations

import pytest
import torch

from mmccd.config import scale_from_reference
from mmccd.errors import ConfigError
from mmccd.masks import (
    checkerboard_masks,
    coverage,
    make_condition,
    mask_ensemble,
    merge_stripes,
    random_stripe_masks,
    stripe_ensemble,
)


def _stripe_of(mask: torch.Tensor) -> tuple[str, int, int]:
    """(direction, start, width) of one (1, S, S) stripe mask."""
    hidden = mask[0] == 0
    cols, rows = hidden.all(0), hidden.all(1)
    if cols.any() and not rows.any():
        idx = cols.nonzero().flatten()
        assert torch.equal(hidden, cols[None].expand_as(hidden))
        return "vertical", int(idx[0]), len(idx)
    idx = rows.nonzero().flatten()
    assert torch.equal(hidden, rows[:, None].expand_as(hidden))
    return "horizontal", int(idx[0]), len(idx)


def test_stripe_width_scaling():
    width = lambda size: scale_from_reference(16, size, even=True, minimum=2)  # noqa: E731 — the stripe rule
    assert [width(s) for s in (16, 32, 64, 128, 240, 256)] == [2, 4, 8, 16, 30, 32]
    assert width(8) == 2 and all(width(s) % 2 == 0 for s in range(8, 300))
    assert [scale_from_reference(2, s) for s in (64, 128, 256)] == [1, 2, 4]  # the inference stride rule


def test_reference_ensemble_coverage_counts():
    masks = stripe_ensemble(128, 16, 2)
    assert masks.shape == (128, 1, 128, 128) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    # per direction, pixel p is hidden by the even starts s with s <= p <= s + 15 (s <= 126)
    per_dir = torch.tensor([sum(1 for s in range(0, 127, 2) if s <= p <= s + 15) for p in range(128)])
    assert per_dir[0] == 1 and per_dir[2] == 2 and per_dir[15] == 8 and per_dir[64] == 8 and per_dir[127] == 8
    expected = per_dir[:, None] + per_dir[None, :]  # rows (horizontal) + columns (vertical)
    cov = coverage(masks)
    assert cov.dtype == torch.long and torch.equal(cov, expected)
    assert cov.min() >= 1
    # first 64 are vertical at starts 0, 2, ..., 126; the last 64 horizontal
    assert [_stripe_of(m) for m in masks[:2]] == [("vertical", 0, 16), ("vertical", 2, 16)]
    assert _stripe_of(masks[63]) == ("vertical", 126, 2)  # clipped at the border
    assert _stripe_of(masks[64]) == ("horizontal", 0, 16)


def test_ensemble_num_masks():
    ref = stripe_ensemble(128, 16, 2)
    assert torch.equal(stripe_ensemble(128, 16, 2, num_masks=128), ref)  # same as the stride rule
    eight = stripe_ensemble(128, 16, 2, num_masks=16)  # stride ignored: 8 per direction tile the image
    assert eight.shape[0] == 16 and torch.equal(coverage(eight), torch.full((128, 128), 2))
    assert [_stripe_of(m)[1] for m in eight[:8]] == [0, 16, 32, 48, 64, 80, 96, 112]
    ten = stripe_ensemble(128, 16, 2, num_masks=20)
    assert coverage(ten).min() >= 2 and all(_stripe_of(m)[1] % 2 == 0 for m in ten)
    with pytest.raises(ConfigError, match="uncovered"):
        stripe_ensemble(128, 16, 2, num_masks=8)
    with pytest.raises(ConfigError, match="uncovered"):
        stripe_ensemble(128, 16, 32)
    with pytest.raises(ConfigError, match="multiple"):
        stripe_ensemble(128, 16, 2, num_masks=7)
    vert = stripe_ensemble(32, 4, 2, directions=("vertical",))
    assert vert.shape[0] == 16 and all(_stripe_of(m)[0] == "vertical" for m in vert)


def test_reference_scaled_to_64_px_uses_the_1px_grid():
    masks = stripe_ensemble(64, 8, 1, num_masks=128)  # more starts than the 32 even ones: 1-px stride
    assert torch.equal(masks, stripe_ensemble(64, 8, 1))
    per_dir = torch.tensor([sum(1 for s in range(64) if s <= p <= s + 7) for p in range(64)])
    assert torch.equal(coverage(masks), per_dir[:, None] + per_dir[None, :]) and per_dir[32] == 8
    with pytest.raises(ConfigError, match="distinct"):
        stripe_ensemble(64, 8, 1, num_masks=130)


def test_merged_stripes_and_checkerboards_keep_coverage():
    tiles = stripe_ensemble(64, 8, 2, num_masks=16)
    for k in (2, 4, 8):
        merged = merge_stripes(tiles, k)
        assert merged.shape[0] == 16 // k and torch.equal(coverage(merged), coverage(tiles))
    pairs = merge_stripes(tiles, 2)
    # mask 0 hides vertical stripes 0 and 4: columns 0-7 and 32-39
    assert (pairs[0, 0, 0] == 0).nonzero().flatten().tolist() == list(range(8)) + list(range(32, 40))
    with pytest.raises(ConfigError, match="divide"):
        merge_stripes(tiles, 3)
    board = checkerboard_masks(64, 8)
    assert torch.equal(coverage(board), torch.ones(64, 64, dtype=torch.long)) and board[0, 0, 0, 0] == 0  # the first hides the top-left square
    assert torch.equal(mask_ensemble(64, 8, "checkerboard"), board)
    assert torch.equal(mask_ensemble(64, 8, "stripes", num_masks=16, stripes_per_mask=2), pairs)
    with pytest.raises(ConfigError, match="family"):
        mask_ensemble(64, 8, "circles")


def test_random_masks_even_starts_width_and_balance():
    g = torch.Generator().manual_seed(0)
    masks = random_stripe_masks(2000, 128, 16, g)
    assert masks.shape == (2000, 1, 128, 128)
    stripes = [_stripe_of(m) for m in masks]
    starts = {s for _, s, _ in stripes}
    assert all(s % 2 == 0 and 0 <= s <= 126 for s in starts) and len(starts) > 50
    assert all(w == min(16, 128 - s) for _, s, w in stripes)  # clipped at the border
    n_vert = sum(d == "vertical" for d, _, _ in stripes)
    assert 0.45 < n_vert / len(stripes) < 0.55


def test_random_masks_deterministic_and_per_batch():
    a = random_stripe_masks(16, 32, 4, torch.Generator().manual_seed(3))
    b = random_stripe_masks(16, 32, 4, torch.Generator().manual_seed(3))
    c = random_stripe_masks(16, 32, 4, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    one = random_stripe_masks(8, 32, 4, torch.Generator().manual_seed(3), per_batch=True, device="cpu")
    assert one.shape == (8, 1, 32, 32) and all(torch.equal(m, one[0]) for m in one)
    assert (one[0] == 0).sum() == 4 * 32


def test_make_condition():
    g = torch.Generator().manual_seed(0)
    source = torch.rand(4, 1, 16, 16, generator=g)
    noise = torch.randn(4, 1, 16, 16, generator=g)
    mask = random_stripe_masks(4, 16, 4, g)
    c = make_condition(source, mask, noise)
    hidden = mask == 0
    assert torch.equal(c[hidden], noise[hidden]) and torch.equal(c[~hidden], source[~hidden])
