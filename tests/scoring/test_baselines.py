"""Baselines (scoring/baselines/): output contract, oracle reconstructions, a few training steps, noise."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mmccd.config import ExperimentConfig, merge
from mmccd.data.batch import SliceBatch
from mmccd.errors import ConfigError
from mmccd.models import NoiseSchedule
from mmccd.scoring import build_method, method_class
from mmccd.scoring.baselines.noise import coarse_noise, gradient_noise

SIZE = 16
TINY_NET = {"base_channels": 8, "channel_mult": [1, 2], "attention_resolutions": [], "num_res_blocks": 1,
            "num_head_channels": 8}


def make_cfg(method: str, source: str = "flair", **baseline: object) -> ExperimentConfig:
    return merge(ExperimentConfig(), {
        "method": method, "source": source, "prepare": {"size": SIZE}, "network": TINY_NET,
        "baseline": {"latent_channels": 8, "cond_dim": 16, "noise_level": 200, "dae_noise_resolution": 4,
                     **baseline},
        "score": {"ddim_steps": 4},
    })


def phantom(batch_size: int = 4, seed: int = 0) -> SliceBatch:
    """Healthy-looking slices: an elliptical brain (grey 0.0) with a brighter ring (0.5), background -1."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    sources, masks = [], []
    for _ in range(batch_size):
        a, b = 0.75 + 0.15 * torch.rand(2, generator=g)
        r = (xx / a) ** 2 + (yy / b) ** 2
        brain = r < 1
        img = torch.full((SIZE, SIZE), -1.0)
        img[brain] = 0.0
        img[brain & (r > 0.5)] = 0.5
        sources.append(img[None])
        masks.append(brain[None])
    source = torch.stack(sources)
    return SliceBatch(source=source, target=source.clone(), brain_mask=torch.stack(masks),
                      subject_id=[f"s{i}" for i in range(batch_size)], slice_index=torch.arange(batch_size))


def with_blob(batch: SliceBatch) -> tuple[SliceBatch, Tensor]:
    """The batch with a bright 3x3 blob in the brain centre; returns (batch, blob mask (B,1,H,W) bool)."""
    blob = torch.zeros_like(batch.brain_mask)
    c = SIZE // 2
    blob[..., c - 1:c + 2, c - 1:c + 2] = True
    source = torch.where(blob, torch.ones_like(batch.source), batch.source)
    return SliceBatch(source=source, target=batch.target, brain_mask=batch.brain_mask,
                      subject_id=batch.subject_id, slice_index=batch.slice_index), blob


class Oracle(nn.Module):
    """A network that ignores its input and returns a fixed image (B, 1, H, W): x0 for a DDPM, recon for an AE."""

    def __init__(self, image: Tensor):
        super().__init__()
        self.register_buffer("image", image.clone())

    def forward(self, x: Tensor, *args: object, **kwargs: object) -> Tensor:
        return self.image


def install(method, net: nn.Module) -> None:
    """Replace the method's network (the cDDPM's UNet, keeping its encoder) with `net`."""
    if method.name == "cddpm":
        method.nets["cddpm"].unet = net
    else:
        method.nets[method.name] = net


ALL = ["threshold", "ae", "dae", "ddpm", "cddpm"]
TRAINED = ["ae", "dae", "ddpm", "cddpm"]


# ---------------------------------------------------------------- contract


def test_registry_resolves_every_baseline():
    for name in ALL:
        assert method_class(name).name == name


@pytest.mark.parametrize("name", ALL)
def test_output_contract(name):
    torch.manual_seed(0)
    method = build_method(make_cfg(name)).eval()
    batch, _ = with_blob(phantom())
    out = method.score(batch, method.cfg.score, torch.Generator().manual_seed(0))
    amap = out.anomaly_map
    assert amap.shape == (4, 1, SIZE, SIZE)
    assert torch.isfinite(amap).all() and (amap >= 0).all()
    assert (amap[~batch.brain_mask] == 0).all()
    assert set(method.losses()) == set(method.nets.keys())


@pytest.mark.parametrize("noise_type", ["gaussian", "simplex"])
def test_ddpm_score_is_reproducible_and_ensembles_levels(noise_type):
    torch.manual_seed(0)
    method = build_method(make_cfg("ddpm", noise_type=noise_type, noise_levels=[50, 150])).eval()
    batch = phantom(2)
    a = method.score(batch, method.cfg.score).anomaly_map  # generator None: seeded from settings.seed
    b = method.score(batch, method.cfg.score).anomaly_map
    assert torch.equal(a, b) and torch.isfinite(a).all()


# ---------------------------------------------------------------- threshold


def score(cfg: ExperimentConfig, batch: SliceBatch) -> torch.Tensor:
    return build_method(cfg).score(batch, cfg.score).anomaly_map


def test_threshold_matches_hand_computation():
    src = torch.tensor([[[[-1.0, 0.0], [0.5, 1.0]]]])
    mask = torch.tensor([[[[False, True], [True, True]]]])
    batch = SliceBatch(source=src, target=src, brain_mask=mask, subject_id=["a"], slice_index=torch.tensor([0]))
    bright = score(make_cfg("threshold", source="flair"), batch)
    dark = score(make_cfg("threshold", source="t1"), batch)
    forced = score(make_cfg("threshold", source="t1", threshold_sign="bright"), batch)
    assert torch.allclose(bright, torch.tensor([[[[0.0, 0.5], [0.75, 1.0]]]]))
    assert torch.allclose(dark, torch.tensor([[[[0.0, 0.5], [0.25, 0.0]]]]))
    assert torch.equal(forced, bright)


def test_threshold_rejects_unknown_sign():
    with pytest.raises(ConfigError, match="threshold_sign"):
        make_cfg("threshold", threshold_sign="up")


# ---------------------------------------------------------------- oracle reconstructions


@pytest.mark.parametrize("name", TRAINED)
def test_perfect_reconstruction_scores_zero(name):
    torch.manual_seed(0)
    method = build_method(make_cfg(name)).eval()
    batch = phantom()
    # an AE that reproduces its input; a DDPM that predicts x0 = the clean source
    install(method, nn.Identity() if name in ("ae", "dae") else Oracle(batch.source))
    out = method.score(batch, method.cfg.score, torch.Generator().manual_seed(0))
    assert torch.equal(out.anomaly_map, torch.zeros_like(batch.source))
    assert torch.equal(out.reconstruction, batch.source)


@pytest.mark.parametrize("name", TRAINED)
def test_unreconstructed_blob_is_anomalous(name):
    torch.manual_seed(0)
    method = build_method(make_cfg(name)).eval()
    healthy = phantom()
    batch, blob = with_blob(healthy)
    install(method, Oracle(healthy.source))  # the network only knows healthy anatomy
    amap = method.score(batch, method.cfg.score, torch.Generator().manual_seed(0)).anomaly_map
    assert (amap[blob] > 0.5).all()
    assert (amap[~blob] == 0).all()


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("name", TRAINED)
def test_a_few_training_steps_decrease_the_loss(name):
    torch.manual_seed(0)
    cfg = make_cfg(name, noise_type="simplex" if name == "ddpm" else "gaussian")
    method = build_method(cfg)
    (key, loss_fn), = method.losses().items()
    net = method.nets[key].train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batch = phantom(8)
    history = []
    for _ in range(40):
        loss = loss_fn(net, batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.7 * first, history


def test_cddpm_trains_encoder_and_unet_jointly():
    torch.manual_seed(0)
    method = build_method(make_cfg("cddpm"))
    net, loss_fn = method.nets["cddpm"], method.losses()["cddpm"]
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # the UNet's zero-initialised output layers pass no gradient to the encoder at step 0
        opt.zero_grad()
        loss_fn(net, phantom(), g).backward()
        opt.step()
    for part in (net.encoder, net.unet):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


# ---------------------------------------------------------------- noise and timesteps


def test_gradient_noise_is_standardised_smooth_and_seeded():
    shape = (2, 1, 64, 64)
    a = gradient_noise(shape, torch.Generator().manual_seed(1), torch.device("cpu"))
    b = gradient_noise(shape, torch.Generator().manual_seed(1), torch.device("cpu"))
    c = gradient_noise(shape, torch.Generator().manual_seed(2), torch.device("cpu"))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a.mean(dim=(2, 3)), torch.zeros(2, 1), atol=1e-5)
    assert torch.allclose(a.std(dim=(2, 3)), torch.ones(2, 1), atol=1e-4)
    neighbour_corr = (a[..., 1:] * a[..., :-1]).mean() / a.var()
    assert neighbour_corr > 0.7  # spatially correlated, unlike white noise (~0)


def test_coarse_noise_has_the_requested_scale_and_is_smooth():
    n = coarse_noise((64, 1, 32, 32), resolution=4, std=0.2, g=torch.Generator().manual_seed(0),
                     device=torch.device("cpu"))
    assert n.shape == (64, 1, 32, 32)
    assert 0.1 < n.std() < 0.25
    assert (n[..., 1:] - n[..., :-1]).abs().mean() < 0.3 * n.abs().mean()  # white noise: ~1.1


def test_ddim_timesteps_are_respaced_over_the_partial_range():
    schedule = NoiseSchedule(1000)
    assert schedule.timesteps(6, "linspace", start=500) == [500, 400, 300, 200, 100, 0]
    assert schedule.timesteps(1, "linspace", start=500) == [500]
    assert schedule.timesteps(10, "linspace", start=3) == [3, 2, 1, 0]
