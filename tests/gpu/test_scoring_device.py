"""Scoring on the test device: every method, MMCCD's per-row noise streams with a generator on the device.

A map must depend only on the generator's seed and the slice's position in its stream, not on how
(slice, mask) rows are batched, on the GPU too. On CUDA, float sums use atomics (index_add_), so
"the same map" means equal to float rounding there and bit-identical on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from gpu_helpers import NEEDS_CUDA, exact_cuda_kernels, settings, slices, tiny_cfg, tiny_mmccd

from mmccd.config import METHODS
from mmccd.scoring import build_method
from mmccd.scoring.slices import score_batches

pytestmark = pytest.mark.gpu


def _close(a: torch.Tensor, b: torch.Tensor, device: torch.device) -> None:
    """Equal up to the batching's float rounding (looser on a GPU: other kernels per batch size)."""
    tol = {"rtol": 1e-4, "atol": 1e-5} if device.type == "cpu" else {"rtol": 1e-3, "atol": 1e-4}
    torch.testing.assert_close(a, b, **tol)


def _map(method, batch, device: torch.device, seed: int = 0, **score: object) -> torch.Tensor:
    return method.score(batch, settings(**score), torch.Generator(device=device).manual_seed(seed)).anomaly_map


def test_same_generator_same_map_on_the_device(device: torch.device) -> None:
    method, batch = tiny_mmccd().to(device), slices().to(device)
    a, b, other = _map(method, batch, device, 0), _map(method, batch, device, 0), _map(method, batch, device, 1)
    assert a.device.type == device.type and torch.isfinite(a).all() and a.max() > 0
    if device.type == "cpu":
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(a, other)
    no_generator = method.score(batch, settings()).anomaly_map  # seeded from settings.seed on the method's device
    torch.testing.assert_close(no_generator, a, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("composite", [False, True])
def test_the_map_does_not_depend_on_batching_on_the_device(composite: bool, device: torch.device) -> None:
    method, batch = tiny_mmccd().to(device), slices(4).to(device)
    with exact_cuda_kernels():
        one = _map(method, batch, device, composite=composite, mask_batch=1, slice_batch=1)
        for mask_batch, slice_batch in ((8, 1), (3, 1), (8, 4), (3, 2)):
            _close(_map(method, batch, device, composite=composite, mask_batch=mask_batch, slice_batch=slice_batch),
                   one, device)
        first_two = slices(2).to(device)  # a slice's map depends on its place in the stream, not on its companions
        _close(_map(method, first_two, device, composite=composite), one[:2], device)


def test_channels_last_equals_contiguous_on_the_device(device: torch.device) -> None:
    method, batch = tiny_mmccd().to(device), slices().to(device)
    with exact_cuda_kernels():
        _close(_map(method, batch, device, channels_last=True), _map(method, batch, device), device)
    assert next(method.nets.parameters()).is_contiguous()  # the weights are left as found


def test_a_cpu_generator_gives_the_cpu_map_on_a_gpu(device: torch.device) -> None:
    """Noise drawn from a CPU generator is moved to the data's device: CPU and GPU maps then agree."""
    if device.type != "cuda":
        pytest.skip(NEEDS_CUDA)
    method, batch = tiny_mmccd(), slices()
    with exact_cuda_kernels():
        on_cpu = method.score(batch, settings(), torch.Generator().manual_seed(0)).anomaly_map
        method.to(device)
        on_gpu = method.score(batch.to(device), settings(), torch.Generator().manual_seed(0)).anomaly_map
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-3, atol=1e-5)


@pytest.mark.slow  # compilation: tens of seconds even for tiny networks
def test_compiled_networks_give_the_eager_map_on_a_gpu(device: torch.device) -> None:
    """torch.compile on the GPU (each network of the ModuleDict compiled on its own; minutes on a CPU: GPU only)."""
    if device.type != "cuda":
        pytest.skip(f"{NEEDS_CUDA}; torch.compile takes minutes on a CPU and is opt-in there")
    method, batch = tiny_mmccd().to(device), slices().to(device)
    eager = _map(method, batch, device, ddim_steps=1, composite=True)
    compiled = _map(method, batch, device, ddim_steps=1, composite=True, compile=True, channels_last=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_and_scores_on_the_device(name: str, device: torch.device) -> None:
    """A loss + backward per network with a generator on the device, then `score_batches` (its generator on
    the method's device): tensors created by a method follow the input's device."""
    method = build_method(tiny_cfg(method=name))
    method.to(device)
    batch = slices(2).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    for key, loss_fn in method.losses().items():
        net = method.nets[key].train()
        loss = loss_fn(net, batch, generator)
        loss.backward()
        assert loss.device.type == device.type and torch.isfinite(loss), key
        assert all(p.grad is None or p.grad.device.type == device.type for p in net.parameters())
    method.eval()
    [(scored, out)] = list(score_batches(method, settings(), [slices(2)], progress=False))
    amap = out.anomaly_map
    assert amap.shape == (2, 1, 16, 16) and amap.device.type == device.type and torch.isfinite(amap).all()
    assert (amap[~scored.brain_mask] == 0).all()
