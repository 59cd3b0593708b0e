"""MMCCD scoring: every fast option gives the slow path's map where they are mathematically equal.

Tiny nets at 16 px with perturbed weights (zero-initialised output layers would make every map 0).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

import mmccd.scoring.mmccd as mmccd_scoring
from mmccd.config import ExperimentConfig, ScoreConfig, load_score_preset, merge
from mmccd.data.batch import SliceBatch
from mmccd.masks import coverage
from mmccd.models.noise_schedule import NoiseSchedule
from mmccd.scoring.base import ScoreOutput
from mmccd.scoring.mmccd import MMCCD

SIZE = 16
TINY = {"prepare": {"size": SIZE}, "method": "mmccd",
        "network": {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [8],
                    "num_head_channels": 8, "dropout": 0.0},
        "diffusion": {"stripe_width": 32},  # 4 px at 16 px
        "score": {"num_masks": 8, "ddim_steps": 3, "mask_batch": 8}}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP spin-waiting makes tiny ops 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def settings(**score: object) -> ScoreConfig:
    """The tiny config's score section with `score` changed."""
    return dataclasses.replace(merge(ExperimentConfig(), TINY).score, **score)


def make_method() -> MMCCD:
    cfg = merge(ExperimentConfig(), TINY)
    torch.manual_seed(0)
    method = MMCCD(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # undo zero-init so outputs depend on inputs and noise
        for p in method.nets.parameters():
            if p.dim() > 1 and p.abs().max() == 0:
                p.normal_(0, 0.05, generator=g)
    return method.eval()


def slices(n: int = 3, seed: int = 0) -> SliceBatch:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=g) * 2 - 1
    source = nn.functional.interpolate(coarse, size=SIZE, mode="bilinear", align_corners=False)
    brain = torch.ones(n, 1, SIZE, SIZE, dtype=torch.bool)
    brain[..., :2, :] = False
    return SliceBatch(source=source, target=-source, brain_mask=brain, subject_id=[f"s{i}" for i in range(n)],
                      slice_index=torch.arange(n))


def run(method: MMCCD, batch: SliceBatch, seed: int = 0, **score: object) -> dict[str, Tensor]:
    out = method.score(batch, settings(**score), torch.Generator().manual_seed(seed))
    return {k: getattr(out, k) for k in ("anomaly_map", "translation", "reconstruction")}


def test_output_contract_and_network_evaluations():
    method, batch = make_method(), slices()
    out = run(method, batch)
    for key in ("anomaly_map", "translation", "reconstruction"):
        assert out[key].shape == batch.source.shape and torch.isfinite(out[key]).all()
    assert (out["anomaly_map"][~batch.brain_mask] == 0).all() and out["anomaly_map"].max() > 0
    assert method.network_evaluations(settings()) == 8 * 3 + 8
    assert method.network_evaluations(settings(composite=True, ddim_steps=1), slices=2) == 2 * (8 + 1)


def test_reproducible_with_the_same_generator():
    method, batch = make_method(), slices()
    a, b, c = run(method, batch, 0), run(method, batch, 0), run(method, batch, 1)
    assert torch.equal(a["anomaly_map"], b["anomaly_map"])
    assert not torch.allclose(a["anomaly_map"], c["anomaly_map"])
    d = method.score(batch, settings()).anomaly_map  # no generator: seeded from settings.seed
    assert isinstance(method.score(batch, settings()), ScoreOutput)
    assert torch.equal(d, method.score(batch, settings()).anomaly_map)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_batched_masks_equal_one_mask_at_a_time(eta: float):
    method, batch = make_method(), slices()
    loop = run(method, batch, eta=eta, mask_batch=1, slice_batch=1)
    batched = run(method, batch, eta=eta, mask_batch=8, slice_batch=1)
    uneven = run(method, batch, eta=eta, mask_batch=3, slice_batch=1)  # chunks cross mask boundaries
    for out in (batched, uneven):
        for key in loop:
            torch.testing.assert_close(out[key], loop[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("composite", [False, True])
def test_several_slices_per_call_equal_one_slice_per_call(composite: bool):
    method, batch = make_method(), slices(4)
    one = run(method, batch, composite=composite, slice_batch=1)
    many = run(method, batch, composite=composite, slice_batch=4)
    for key in one:
        torch.testing.assert_close(many[key], one[key], rtol=1e-4, atol=1e-5)
    # a slice's map depends on its position in the generator's stream, not on the slices scored with it
    first_two = dataclasses.replace(batch, source=batch.source[:2], target=batch.target[:2],
                                    brain_mask=batch.brain_mask[:2], subject_id=batch.subject_id[:2],
                                    slice_index=batch.slice_index[:2])
    torch.testing.assert_close(run(method, first_two, composite=composite)["anomaly_map"], many["anomaly_map"][:2],
                               rtol=1e-4, atol=1e-5)


def test_channels_last_equals_contiguous():
    batch = slices()
    contiguous = run(make_method(), batch)
    last = run(make_method(), batch, channels_last=True)
    for key in contiguous:
        torch.testing.assert_close(last[key], contiguous[key], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_close_to_fp32():
    batch = slices()
    fp32 = run(make_method(), batch)["anomaly_map"]
    bf16 = run(make_method(), batch, amp="bf16")["anomaly_map"]
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 0.1 * fp32.abs().max()


class Recorder(nn.Module):
    """Stands in for the forward UNet: records its inputs [x_t, c] and predicts 0.5 * x_t."""

    in_channels, out_channels, time_conditioning = 2, 1, True

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.inputs.append(x.clone())
        return 0.5 * x[:, :1]


def test_condition_has_noise_exactly_where_the_mask_is_zero():
    method, batch = make_method(), slices(1)
    recorder = Recorder()
    method.nets["source_to_target"].net = recorder  # type: ignore[union-attr]
    run(method, batch, mask_batch=8, ddim_steps=2)
    masks = method.masks(settings())
    assert len(recorder.inputs) == 2  # one call per DDIM step, all 8 masks in it
    for x in recorder.inputs:
        c = x[:, 1:]
        visible = masks.bool()
        source = batch.source.expand_as(c)
        assert torch.equal(c[visible], source[visible])
        assert (c[~visible] != source[~visible]).all()  # noise under the stripe
    # fresh noise at every step, and different noise for different masks
    first, second = recorder.inputs[0][:, 1:], recorder.inputs[1][:, 1:]
    assert not torch.allclose(first[~masks.bool()], second[~masks.bool()])
    # every mask's rows start from the slice's one shared x_T
    x_T = recorder.inputs[0][:, :1]
    assert all(torch.equal(x_T[j], x_T[0]) for j in range(len(masks)))


def test_aggregation_is_the_mean_error_over_the_covering_masks(monkeypatch):
    """Mock forward: a known image per mask; mock backward: identity. Then s_hat_j = y_j and the map at
    a pixel is the mean of (s - y_j)^2 over the masks j that hide it (composite: (s - mean_j y_j)^2)."""
    method, batch = make_method(), slices(2)
    masks = method.masks(settings())
    known = torch.rand(len(masks), 1, SIZE, SIZE, generator=torch.Generator().manual_seed(4)) * 2 - 1

    def fake_sample(model: object, schedule: object, source: Tensor, mask: Tensor, **_: object) -> Tensor:
        idx = [next(j for j in range(len(masks)) if torch.equal(m, masks[j])) for m in mask]
        return known[idx]

    monkeypatch.setattr(mmccd_scoring, "sample_masked", fake_sample)
    method.nets["target_to_source"] = nn.Identity()
    out = run(method, batch, mask_batch=3)
    composite = run(method, batch, mask_batch=3, composite=True)
    brain = batch.brain_mask.float()
    for i in range(len(batch)):
        s = batch.source[i, 0]
        for y in range(SIZE):
            for x in range(SIZE):
                hiders = [j for j in range(len(masks)) if masks[j, 0, y, x] == 0]
                errors = [(s[y, x] - known[j, 0, y, x]) ** 2 for j in hiders]
                expected = sum(errors) / len(errors) * brain[i, 0, y, x]
                torch.testing.assert_close(out["anomaly_map"][i, 0, y, x], expected)
                mean_y = sum(known[j, 0, y, x] for j in hiders) / len(hiders)
                torch.testing.assert_close(out["translation"][i, 0, y, x], mean_y)
                torch.testing.assert_close(composite["anomaly_map"][i, 0, y, x], (s[y, x] - mean_y) ** 2 * brain[i, 0, y, x])


def test_mask_families_cover_every_pixel():
    method = make_method()
    tiling = method.masks(settings())
    assert tiling.shape[0] == 8 and coverage(tiling).min() == 2  # 4 + 4 tiling stripes
    merged = method.masks(settings(stripes_per_mask=2))
    assert merged.shape[0] == 4 and torch.equal(coverage(merged), coverage(tiling))
    one_dir = method.masks(settings(stripes_per_mask=1, num_masks=4, mask_directions=("vertical",)))
    assert one_dir.shape[0] == 4 and coverage(one_dir).min() == 1
    board = dict(mask_family="checkerboard", num_masks=8, mask_directions=("vertical", "horizontal"))
    assert method.masks(settings(**board)).shape[0] == 2
    assert torch.equal(coverage(method.masks(settings(**board))), torch.ones(SIZE, SIZE, dtype=torch.long))
    assert torch.isfinite(run(method, slices(1), **board)["anomaly_map"]).all()


def test_trailing_spacing_starts_at_pure_noise():
    schedule = NoiseSchedule(1000)
    assert schedule.timesteps(1, "trailing") == [999]
    assert schedule.timesteps(4, "trailing") == [999, 749, 499, 249]
    assert schedule.timesteps(1, "leading") == [0]  # the reference rule: pure noise treated as t = 0
    assert schedule.timesteps(100, "leading")[:2] == [990, 980]


def test_score_presets():
    fast = load_score_preset("fast")
    assert fast.timestep_spacing == "trailing" and fast.ddim_steps <= 2
    ref = load_score_preset("reference")
    assert (ref.num_masks, ref.ddim_steps, ref.timestep_spacing, ref.composite) == (128, 100, "leading", False)
