"""UNet: shapes, the reference configuration, gradients, plain and conditioned variants."""

from __future__ import annotations

import pytest
import torch

from mmccd.config import NetworkConfig
from mmccd.models import UNet, count_parameters
from mmccd.models.unet import _groups, timestep_embedding

TINY = dict(base_channels=8, num_res_blocks=1, num_head_channels=8, dropout=0.0)


@pytest.mark.parametrize(
    ("size", "mult", "attn", "cin", "cout"),
    [
        (16, (1, 2), (8,), 2, 1),
        (32, (1, 1, 2), (16, 8), 1, 1),
        (64, (1, 2, 2, 2), (8,), 3, 2),
    ],
)
def test_output_shapes(size, mult, attn, cin, cout):
    torch.manual_seed(0)
    net = UNet(cin, cout, size, channel_mult=mult, attention_resolutions=attn, **TINY).eval()
    x = torch.randn(2, cin, size, size)
    assert net(x, torch.tensor([0, 999])).shape == (2, cout, size, size)


def test_attention_placed_by_feature_map_size():
    net = UNet(1, 1, 32, channel_mult=(1, 1, 2), attention_resolutions=(16,), **TINY)
    sizes = []
    x = torch.randn(1, 1, 32, 32)
    hooks = [b.attn.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
             for b in list(net.down) + list(net.up) if b.attn is not None]
    net(x, torch.tensor([1]))
    for h in hooks:
        h.remove()
    assert sizes and set(sizes) == {16}  # one encoder + two decoder blocks at 16 px


def test_reference_config_parameter_count():
    net = UNet.from_config(NetworkConfig(), in_channels=2, out_channels=1, image_size=128)
    n = count_parameters(net)
    print(f"reference UNet parameters: {n}")
    assert n == 6_600_257  # authors' guided-diffusion network: ~6.6 M
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, 128, 128), torch.tensor([500])).shape == (1, 1, 128, 128)


def test_zero_init_output_and_gradient_flow():
    torch.manual_seed(0)
    net = UNet(2, 1, 16, channel_mult=(1, 2), attention_resolutions=(8,), **TINY)
    x = torch.randn(2, 2, 16, 16)
    t = torch.tensor([3, 7])
    assert net(x, t).abs().max() == 0  # zero-initialised output conv
    # perturb the zero-initialised layers so gradients reach every parameter
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().max() == 0 and p.dim() > 1:
                p.normal_(0, 0.02)
    net(x, t).pow(2).mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_plain_unet_without_time():
    net = UNet(1, 1, 16, channel_mult=(1, 2), attention_resolutions=(8,), time_conditioning=False, **TINY).eval()
    assert net.time_mlp is None and all(b.res.emb_proj is None for b in net.down)
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="cond"):
        net(torch.randn(1, 1, 16, 16), cond=torch.randn(1, 4))


def test_time_conditioned_needs_t():
    net = UNet(1, 1, 16, channel_mult=(1, 2), attention_resolutions=(), **TINY)
    with pytest.raises(ValueError, match="pass t"):
        net(torch.randn(1, 1, 16, 16))


def test_cond_modulates_output():
    torch.manual_seed(0)
    net = UNet(1, 1, 16, channel_mult=(1, 2), attention_resolutions=(8,), cond_dim=4, **TINY).eval()
    with torch.no_grad():
        for p in net.parameters():  # undo zero-init so the output depends on the embedding
            if p.abs().max() == 0 and p.dim() > 1:
                p.normal_(0, 0.05)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 10])
    y1 = net(x, t, torch.zeros(2, 4))
    y2 = net(x, t, torch.ones(2, 4))
    assert y1.shape == (2, 1, 16, 16) and not torch.allclose(y1, y2)
    with pytest.raises(ValueError, match="cond_dim"):
        net(x, t)
    # cond only (no time): the embedding is the projected latent
    net2 = UNet(1, 1, 16, channel_mult=(1, 2), attention_resolutions=(), cond_dim=4, time_conditioning=False, **TINY)
    assert net2(x, cond=torch.randn(2, 4)).shape == (2, 1, 16, 16)


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    net = UNet(2, 1, 16, channel_mult=(1, 2), attention_resolutions=(16, 8), **TINY).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().max() == 0 and p.dim() > 1:
                p.normal_(0, 0.05)
    x, t = torch.randn(2, 2, 16, 16), torch.tensor([1, 2])
    y = net(x, t)
    net_cl = net.to(memory_format=torch.channels_last)
    y_cl = net_cl(x.to(memory_format=torch.channels_last), t)
    torch.testing.assert_close(y_cl, y, atol=1e-5, rtol=1e-4)


def test_helpers():
    assert [_groups(c) for c in (8, 32, 64, 96, 3, 48)] == [8, 32, 32, 32, 3, 24]
    emb = timestep_embedding(torch.tensor([0, 5]), 8)
    assert emb.shape == (2, 8) and torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    with pytest.raises(ValueError, match="divisible"):
        UNet(1, 1, 18, channel_mult=(1, 1, 2))


def test_single_head_attention_as_reference():
    # the authors' config sets num_heads=1, num_head_channels=-1: one head over all channels
    net = UNet(2, 1, 16, channel_mult=(1, 2), attention_resolutions=(8,), base_channels=8, num_res_blocks=1,
               num_head_channels=-1)
    assert {b.attn.heads for b in net.down if b.attn is not None} == {1}
    assert net(torch.randn(1, 2, 16, 16), torch.tensor([3])).shape == (1, 1, 16, 16)
