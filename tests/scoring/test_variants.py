"""MMCCD beyond the paper: healthy-calibrated scores and iterative mask refinement, on tiny deterministic cases."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import mmccd.scoring.mmccd as mmccd_scoring
from mmccd.config import ExperimentConfig, merge
from mmccd.data.batch import SliceBatch
from mmccd.scoring.calibration import MIN_PIXELS, Calibrated, IntensityCalibration, bin_index
from mmccd.scoring.mmccd import MMCCD

SIZE = 16
TINY = {"prepare": {"size": SIZE}, "method": "mmccd",
        "network": {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [8],
                    "num_head_channels": 8, "dropout": 0.0},
        "diffusion": {"stripe_width": 32},  # 4 px at 16 px: 4 + 4 stripes tile the slice
        "score": {"num_masks": 8, "ddim_steps": 1, "timestep_spacing": "trailing", "composite": True, "mask_batch": 8}}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_method() -> MMCCD:
    torch.manual_seed(0)
    method = MMCCD(merge(ExperimentConfig(), TINY))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in method.nets.parameters():
            if p.dim() > 1 and p.abs().max() == 0:
                p.normal_(0, 0.05, generator=g)
    return method.eval()


def slices(n: int = 2, seed: int = 0) -> SliceBatch:
    g = torch.Generator().manual_seed(seed)
    source = nn.functional.interpolate(torch.rand(n, 1, 4, 4, generator=g) * 2 - 1, size=SIZE, mode="bilinear")
    brain = torch.ones(n, 1, SIZE, SIZE, dtype=torch.bool)
    brain[..., :2, :] = False
    return SliceBatch(source=source, target=-source, brain_mask=brain, subject_id=[f"s{i}" for i in range(n)],
                      slice_index=torch.arange(n))


# ---------------------------------------------------------------- calibration


def test_calibration_maps_healthy_scores_to_zero_mean_unit_std_per_intensity():
    rng = np.random.default_rng(0)
    source = rng.uniform(-1, 1, (20, 16, 16))
    scores = (source + 1.2) ** 2 * (1 + 0.3 * rng.standard_normal(source.shape))  # error grows with intensity
    brain = np.ones_like(source, dtype=bool)
    table = IntensityCalibration.fit(scores, source, brain, bins=8)
    z = table.apply_numpy(scores, source, brain)
    idx = bin_index(source, 8)
    for k in range(8):
        assert table.count[k] >= MIN_PIXELS
        assert z[idx == k].mean() == pytest.approx(0.0, abs=1e-4) and z[idx == k].std() == pytest.approx(1.0, abs=1e-4)
    assert table.mean[-1] > 3 * table.mean[0]  # the raw healthy error depends on intensity; z does not
    t = table.apply(torch.from_numpy(scores).float()[:, None], torch.from_numpy(source).float()[:, None],
                    torch.from_numpy(brain)[:, None])
    np.testing.assert_allclose(t[:, 0].numpy(), z, rtol=1e-4, atol=1e-4)
    assert (table.apply_numpy(scores, source, ~brain) == 0).all()  # 0 outside the brain
    back = IntensityCalibration.from_arrays(table.to_arrays())
    assert np.array_equal(back.mean, table.mean) and np.array_equal(back.std, table.std)


def test_edge_calibration_bins_by_intensity_and_gradient():
    rng = np.random.default_rng(1)
    source = np.clip(np.cumsum(rng.normal(0, 0.15, (12, 24, 24)), axis=2) * 0.3, -1, 1)  # smooth-ish, with edges
    from mmccd.scoring.calibration import gradient_magnitude

    grad = gradient_magnitude(source)
    scores = 0.1 + 5 * grad + 0.02 * rng.standard_normal(source.shape)  # healthy error is large on edges
    brain = np.ones_like(source, dtype=bool)
    table = IntensityCalibration.fit(scores, source, brain, bins=4, edge_bins=3)
    assert table.edge_bins == 3 and len(table.mean) == 12 and len(table.edges) == 2
    z = table.apply_numpy(scores, source, brain)
    plain = IntensityCalibration.fit(scores, source, brain, bins=4).apply_numpy(scores, source, brain)
    # edges no longer stand out: the correlation of the calibrated score with the gradient drops
    assert abs(np.corrcoef(z.ravel(), grad.ravel())[0, 1]) < 0.5 * abs(np.corrcoef(plain.ravel(), grad.ravel())[0, 1])
    t = table.apply(torch.from_numpy(scores).float()[:, None], torch.from_numpy(source).float()[:, None],
                    torch.from_numpy(brain)[:, None])
    np.testing.assert_allclose(t[:, 0].numpy(), z, rtol=1e-3, atol=1e-3)
    back = IntensityCalibration.from_arrays(table.to_arrays())
    assert np.array_equal(back.edges, table.edges)


def test_thin_bins_borrow_their_nearest_neighbour():
    source = np.concatenate([np.full(200, -0.9), np.full(200, 0.9)]).reshape(1, 20, 20)
    scores = np.where(source > 0, 2.0, 1.0) + np.linspace(0, 0.1, 400).reshape(1, 20, 20)
    table = IntensityCalibration.fit(scores, source, np.ones_like(source, dtype=bool), bins=4)
    assert table.count.tolist() == [200, 0, 0, 200]
    assert table.mean[1] == table.mean[0] and table.mean[2] == table.mean[3]
    with pytest.raises(ValueError, match="healthy brain pixels"):
        IntensityCalibration.fit(scores[:, :2, :2], source[:, :2, :2], np.ones((1, 2, 2), bool))


def test_calibrated_method_is_the_base_map_through_the_table():
    method, batch = make_method(), slices()
    settings = method.cfg.score
    raw = method.score(batch, settings, torch.Generator().manual_seed(0)).anomaly_map
    table = IntensityCalibration(np.linspace(0, 1, 8, dtype=np.float32), np.full(8, 2.0, np.float32),
                                 np.full(8, 100))
    cal = Calibrated(method, table).score(batch, settings, torch.Generator().manual_seed(0))
    torch.testing.assert_close(cal.anomaly_map, table.apply(raw, batch.source, batch.brain_mask))
    assert cal.anomaly_map.shape == raw.shape and torch.isfinite(cal.anomaly_map).all()


# ---------------------------------------------------------------- iterative refinement


def test_refinement_is_deterministic_and_keeps_the_contract():
    method, batch = make_method(), slices()
    settings = dataclasses.replace(method.cfg.score, refine_iterations=2)
    a = method.score(batch, settings, torch.Generator().manual_seed(0))
    b = method.score(batch, settings, torch.Generator().manual_seed(0))
    assert torch.equal(a.anomaly_map, b.anomaly_map)
    assert a.anomaly_map.shape == batch.source.shape and torch.isfinite(a.anomaly_map).all()
    assert (a.anomaly_map[~batch.brain_mask] == 0).all() and (a.anomaly_map >= 0).all()
    plain = method.score(batch, method.cfg.score, torch.Generator().manual_seed(0))
    assert not torch.equal(a.anomaly_map, plain.anomaly_map)  # refinement changed the map


def test_refinement_reveals_what_it_can_explain_and_keeps_the_anomaly_hidden(monkeypatch):
    """A toy model: the first pass explains healthy tissue up to a small error, a candidate seen again with more
    context is explained exactly, and a planted anomaly is never explained. The hidden region only shrinks,
    the rounds are bounded, and the anomaly stays hidden with its high score."""
    method, batch = make_method(), slices(1)
    healthy = batch.source.clone()
    anomaly = torch.zeros_like(healthy, dtype=torch.bool)
    anomaly[..., 8:11, 8:11] = True
    source = torch.where(anomaly, healthy + 1.5, healthy)  # a bright blob no healthy tissue looks like
    batch = dataclasses.replace(batch, source=source, target=-source)
    wobble = 0.05 * torch.sin(torch.arange(SIZE * SIZE, dtype=torch.float32)).reshape(1, 1, SIZE, SIZE)
    hidden_area: list[float] = []

    def toy_sample(model: object, schedule: object, src: Tensor, mask: Tensor, **_: object) -> Tensor:
        hidden_area.append(float((1 - mask).sum()))
        first_pass = len(hidden_area) == 1  # one call: the 8 tiling stripes of the one slice (mask_batch 8)
        return -(healthy.expand_as(src) + (wobble if first_pass else 0.0))  # the target of HEALTHY tissue

    monkeypatch.setattr(mmccd_scoring, "sample_masked", toy_sample)
    method.nets["target_to_source"] = _Negate()
    settings = dataclasses.replace(method.cfg.score, refine_iterations=5, refine_quantile=0.9)
    out = method.score(batch, settings, torch.Generator().manual_seed(0)).anomaly_map
    inside = batch.brain_mask
    assert (out[anomaly] > 1.0).all()  # the anomaly kept its error: it stayed hidden
    assert (out[inside & ~anomaly] < 0.01).all()  # every healthy pixel is explained
    rounds = hidden_area[1:]  # one call per refinement round: its rows' hidden area, summed
    assert 1 <= len(rounds) <= 5
    assert all(later <= earlier for earlier, later in zip(rounds, rounds[1:], strict=False))  # hidden only shrinks
    assert rounds[-1] == pytest.approx(2 * float(anomaly.sum()))  # at the end only the anomaly: in 2 stripes each


class _Negate(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return -x



# ---------------------------------------------------------------- multi-target cycles


def test_multi_target_combination_is_the_mean_of_the_calibrated_maps():
    from mmccd.scoring.calibration import MultiTarget

    batch = slices(1)
    method_a, method_b = make_method(), make_method()
    with torch.no_grad():  # a second, different network
        for p in method_b.nets.parameters():
            p.add_(0.01)
    flat = lambda mean, std: IntensityCalibration(np.full(4, mean, np.float32), np.full(4, std, np.float32),  # noqa: E731
                                                  np.full(4, 100))
    a, b = Calibrated(method_a, flat(0.1, 2.0)), Calibrated(method_b, flat(-0.3, 0.5))
    settings = method_a.cfg.score
    raw_a = method_a.score(batch, settings, torch.Generator().manual_seed(0)).anomaly_map
    raw_b = method_b.score(batch, settings, torch.Generator().manual_seed(0)).anomaly_map
    expected = ((raw_a - 0.1) / 2.0 + (raw_b + 0.3) / 0.5) / 2 * batch.brain_mask  # by hand: mean of two z-scores
    got = MultiTarget({"t2": a, "t1": b}).score(batch, settings, torch.Generator().manual_seed(0)).anomaly_map
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- coarse noise on the forward networks' source


@pytest.mark.parametrize("name", ["mmccd", "cyclic-unet"])
def test_source_noise_corrupts_only_the_forward_networks_input(name):
    from mmccd.scoring import build_method
    from mmccd.scoring.cyclic_unet import noisy_source

    cfg = merge(ExperimentConfig(), {**TINY, "method": name})
    noisy_cfg = merge(cfg, {"train": {"source_noise_std": 0.2, "source_noise_resolution": 4}})
    batch = slices(2)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(noisy_source(batch, cfg.train, g()), batch.source)  # off by default
    x = noisy_source(batch, noisy_cfg.train, g())
    assert torch.equal(x, noisy_source(batch, noisy_cfg.train, g()))  # from the generator: reproducible
    assert torch.equal(x[~batch.brain_mask], batch.source[~batch.brain_mask])  # only inside the brain
    assert 0.05 < float((x - batch.source)[batch.brain_mask].std()) < 0.3
    torch.manual_seed(0)
    plain, noisy = build_method(cfg), build_method(noisy_cfg)
    noisy.nets.load_state_dict(plain.nets.state_dict())
    for method in (plain, noisy):
        for p in method.nets.parameters():
            if p.dim() > 1 and p.abs().max() == 0:
                p.data.fill_(0.01)
    fwd = [m.losses()["source_to_target"](m.nets["source_to_target"], batch, g()) for m in (plain, noisy)]
    bwd = [m.losses()["target_to_source"](m.nets["target_to_source"], batch, g()) for m in (plain, noisy)]
    assert not torch.equal(fwd[0], fwd[1]) and torch.equal(bwd[0], bwd[1])  # the backward net learns as before


# ---------------------------------------------------------------- one-sided residuals


def test_one_sided_residual_keeps_only_the_lesion_side():
    from mmccd.scoring.base import residual, residual_side

    a, b = torch.tensor([0.5, -0.2, 0.1]), torch.tensor([0.1, 0.3, 0.1])
    assert torch.allclose(residual(a, b), torch.tensor([0.16, 0.25, 0.0]))
    assert torch.allclose(residual(a, b, "bright"), torch.tensor([0.16, 0.0, 0.0]))
    assert torch.allclose(residual(a, b, "dark"), torch.tensor([0.0, 0.25, 0.0]))
    auto = dataclasses.replace(merge(ExperimentConfig(), TINY).score, residual="auto")
    assert [residual_side(auto, c) for c in ("flair", "t2", "t1ce", "t1")] == ["bright", "bright", "bright", "dark"]
    method, batch = make_method(), slices()
    both = method.score(batch, method.cfg.score, torch.Generator().manual_seed(0))
    bright = method.score(batch, dataclasses.replace(method.cfg.score, residual="bright"),
                          torch.Generator().manual_seed(0))
    expected = (batch.source - both.reconstruction).clamp_min(0).pow(2) * batch.brain_mask
    torch.testing.assert_close(bright.anomaly_map, expected)
    assert (bright.anomaly_map <= both.anomaly_map + 1e-6).all()
