"""MaskedConditionalDiffusion and the translation UNet: learning, reproducible sampling, condition refill."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mmccd.config import NetworkConfig
from mmccd.masks import random_stripe_masks, stripe_ensemble
from mmccd.models import MaskedConditionalDiffusion, NoiseSchedule, UNet, translation_loss, translation_unet

SIZE = 16


def tiny_unet(in_channels: int = 2, time_conditioning: bool = True, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(in_channels, 1, SIZE, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(8,), num_head_channels=8, dropout=0.0, time_conditioning=time_conditioning)


def images(n: int = 4, seed: int = 0) -> Tensor:
    """Smooth fixed images in [-1, 1]: (n, 1, 16, 16)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=g) * 2 - 1
    return nn.functional.interpolate(coarse, size=SIZE, mode="bilinear", align_corners=False)


class FakeNet(nn.Module):
    """Stands in for the UNet: records its inputs, predicts a fixed x0 (or 0.5 * x_t)."""

    in_channels, out_channels, time_conditioning = 2, 1, True

    def __init__(self, x0: Tensor | None = None):
        super().__init__()
        self.x0 = x0
        self.calls: list[tuple[Tensor, Tensor]] = []

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls.append((x.clone(), t.clone()))
        return self.x0.expand_as(x[:, :1]) if self.x0 is not None else 0.5 * x[:, :1]


def test_x0_loss_decreases():
    model = MaskedConditionalDiffusion(tiny_unet(), NoiseSchedule())
    source = images()
    target = -source
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(80):
        mask = random_stripe_masks(len(source), SIZE, 4, g)
        loss = model.loss(source, target, mask, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)


def test_loss_reproducible_with_generator():
    model = MaskedConditionalDiffusion(tiny_unet())
    source, mask = images(2), stripe_ensemble(SIZE, 4, 2)[:2]
    a = model.loss(source, -source, mask, torch.Generator().manual_seed(5))
    b = model.loss(source, -source, mask, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def _perturbed(model: MaskedConditionalDiffusion) -> MaskedConditionalDiffusion:
    with torch.no_grad():  # undo zero-init so samples depend on the noise
        for p in model.parameters():
            if p.abs().max() == 0 and p.dim() > 1:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return model.eval()


def test_sample_reproducible_and_seed_dependent():
    model = _perturbed(MaskedConditionalDiffusion(tiny_unet()))
    source, mask = images(1).expand(3, -1, -1, -1), stripe_ensemble(SIZE, 4, 2)[:3]
    a = model.sample(source, mask, num_steps=4, generator=torch.Generator().manual_seed(0))
    b = model.sample(source, mask, num_steps=4, generator=torch.Generator().manual_seed(0))
    c = model.sample(source, mask, num_steps=4, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 1, SIZE, SIZE)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # eta > 0 draws extra noise and is reproducible too
    d = model.sample(source, mask, num_steps=4, eta=1.0, generator=torch.Generator().manual_seed(0))
    e = model.sample(source, mask, num_steps=4, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(d, e) and not torch.allclose(a, d)


def test_sample_with_oracle_reproduces_target():
    target = images(2, seed=3)
    model = MaskedConditionalDiffusion(FakeNet(target))  # type: ignore[arg-type]
    out = model.sample(images(2), stripe_ensemble(SIZE, 4, 2)[:2], num_steps=10,
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, target)


def test_condition_refilled_every_step_and_shared_x_T():
    fake = FakeNet()
    model = MaskedConditionalDiffusion(fake, NoiseSchedule())  # type: ignore[arg-type]
    source = images(1).expand(2, -1, -1, -1)
    mask = stripe_ensemble(SIZE, 4, 2)[[0, 9]]  # one vertical, one horizontal
    x_T = torch.randn(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(7)).expand(2, -1, -1, -1)
    model.sample(source, mask, num_steps=5, generator=torch.Generator().manual_seed(0), x_T=x_T)
    assert [int(t[0]) for _, t in fake.calls] == [800, 600, 400, 200, 0]
    assert torch.equal(fake.calls[0][0][:, :1], x_T)  # the first network input is the shared x_T
    hidden = mask == 0
    conds = [x[:, 1:] for x, _ in fake.calls]
    for c in conds:
        assert torch.equal(c[~hidden], source[~hidden])  # visible part is exactly the source
    for c0, c1 in zip(conds, conds[1:], strict=False):
        assert not torch.allclose(c0[hidden], c1[hidden])  # fresh noise under the mask at each step
    assert not torch.allclose(conds[0][0][hidden[0]], conds[0][1][hidden[0]][: hidden[0].sum()])


def test_rejects_wrong_network():
    with pytest.raises(ValueError, match="in_channels=2"):
        MaskedConditionalDiffusion(tiny_unet(in_channels=1))


def test_translation_unet_learns_and_has_no_time_input():
    torch.manual_seed(0)
    model = translation_unet(
        NetworkConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                      num_head_channels=8, dropout=0.0), image_size=SIZE)
    source = images()
    assert model(source).shape == source.shape
    assert not model.time_conditioning and model.cond_dim is None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = translation_loss(model, source, -source)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
