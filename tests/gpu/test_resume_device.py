"""Exact resume on the test device, and checkpoints resumed on another kind of device.

On the device: a run stopped between checkpoints and resumed from its file (fresh weights, as a new process)
ends bit-identical to an uninterrupted one, per AMP mode (loss noise from a generator on the device,
dropout from the device's global RNG, flips, GradScaler state for fp16). On a GPU this needs deterministic
cuDNN kernels (`exact_cuda_kernels`), which the toolkit does not switch on by itself.

Across devices (a CPU checkpoint resumed on a GPU and back): a CPU generator state (5,056 bytes) does not
fit a CUDA generator (16 bytes), so the run continues the data order exactly and reseeds the loss noise,
with a warning, instead of failing.
"""

from __future__ import annotations

import logging

import pytest
import torch
from gpu_helpers import NEEDS_CUDA, SliceItems, exact_cuda_kernels, noisy_loss, state_on_cpu, toy_cfg, toy_net

import mmccd.training as training
from mmccd.checkpoints import atomic_torch_save, load_checkpoint
from mmccd.training import train_network

pytestmark = pytest.mark.gpu
STOP = 4  # the interrupted run stops here: after the checkpoint at step 3, before the one at 6


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_killed_and_resumed_equals_uninterrupted_on_the_device(amp: str, device: torch.device, tmp_path) -> None:
    if amp == "fp16" and device.type != "cuda":
        pytest.skip(f"fp16 {NEEDS_CUDA} (on the CPU it is a ConfigError: test_amp.py)")
    cfg, data = toy_cfg(10, amp), SliceItems()
    with exact_cuda_kernels():
        full = toy_net()
        train_network(full, noisy_loss, data, cfg, tmp_path / "full.pt", "toy", device)
        part = toy_net()
        train_network(part, noisy_loss, data, cfg, tmp_path / "part.pt", "toy", device, stop_after=STOP)
        assert load_checkpoint(tmp_path / "part.pt")["step"] == STOP
        resumed = toy_net()  # fresh weights: the checkpoint must restore everything
        train_network(resumed, noisy_loss, data, cfg, tmp_path / "part.pt", "toy", device)
    want, got = state_on_cpu(full), state_on_cpu(resumed)
    for key in want:
        assert torch.equal(want[key], got[key]), key
    rng = load_checkpoint(tmp_path / "full.pt")["rng"]
    assert rng["device"] == device.type and ("cuda" in rng) == (device.type == "cuda")


def _fake_cuda_rng(path) -> None:
    """Rewrite a CPU checkpoint's RNG as a CUDA run writes it: 16-byte Philox states (seed, offset)."""
    ckpt = load_checkpoint(path)
    philox = torch.zeros(16, dtype=torch.uint8)
    ckpt["rng"] = {**ckpt["rng"], "generator": [philox], "cuda": [philox.clone()], "device": "cuda"}
    atomic_torch_save(ckpt, path)


@pytest.mark.parametrize("recorded", [True, False], ids=["device-recorded", "older-checkpoint"])
def test_a_checkpoint_from_a_cuda_run_resumes_on_the_cpu(recorded: bool, tmp_path, caplog) -> None:
    """Device-independent cause: a CUDA generator state restored into a CPU generator raised
    'Expected a CPUGeneratorImplState of size 5056 but found ... 16'. Older checkpoints have no
    "device" field: their "cuda" entry says the generator was on CUDA."""
    cfg, data, cpu = toy_cfg(10), SliceItems(), torch.device("cpu")
    train_network(toy_net(), noisy_loss, data, cfg, tmp_path / "a.pt", "toy", cpu, stop_after=STOP)
    _fake_cuda_rng(tmp_path / "a.pt")
    if not recorded:
        ckpt = load_checkpoint(tmp_path / "a.pt")
        del ckpt["rng"]["device"]
        atomic_torch_save(ckpt, tmp_path / "a.pt")
    with caplog.at_level(logging.WARNING, logger="mmccd"):
        result = train_network(toy_net(), noisy_loss, data, cfg, tmp_path / "a.pt", "toy", cpu)
    assert result.steps == 10 and load_checkpoint(tmp_path / "a.pt")["finished"]
    assert "drew its loss noise on cuda, this run draws on cpu" in caplog.text
    assert load_checkpoint(tmp_path / "a.pt")["rng"]["device"] == "cpu"


@pytest.mark.parametrize("first, second", [("cpu", "device"), ("device", "cpu")])
def test_resume_on_another_kind_of_device(first: str, second: str, device: torch.device, tmp_path, caplog) -> None:
    if device.type != "cuda":
        pytest.skip(NEEDS_CUDA)
    devices = {"cpu": torch.device("cpu"), "device": device}
    cfg, data = toy_cfg(10), SliceItems()
    train_network(toy_net(), noisy_loss, data, cfg, tmp_path / "x.pt", "toy", devices[first], stop_after=STOP)
    net = toy_net()
    with caplog.at_level(logging.WARNING, logger="mmccd"):
        result = train_network(net, noisy_loss, data, cfg, tmp_path / "x.pt", "toy", devices[second])
    assert result.steps == 10 and "loss noise and dropout are reseeded" in caplog.text
    assert next(net.parameters()).device.type == devices[second].type
    assert load_checkpoint(tmp_path / "x.pt")["rng"]["device"] == devices[second].type


def test_fp16_resume_of_a_run_without_loss_scaling_starts_a_fresh_scale(tmp_path, caplog, monkeypatch) -> None:
    """`train.amp auto` is bf16 on a CPU or a recent GPU and fp16 on a GPU without bf16: a run resumed there
    had GradScaler.load_state_dict({}) raise 'The source state dict is empty'. Stood in for on the CPU by
    making the AMP rule answer fp16 (CPU autocast has fp16, GradScaler('cpu') scales)."""
    cfg, data, cpu = toy_cfg(8, "auto"), SliceItems(), torch.device("cpu")
    monkeypatch.setattr(training, "autocast_dtype", lambda *a: None)  # the first machine: no loss scaling
    train_network(toy_net(), noisy_loss, data, cfg, tmp_path / "s.pt", "toy", cpu, stop_after=STOP)
    assert load_checkpoint(tmp_path / "s.pt")["scaler"] == {}
    monkeypatch.setattr(training, "autocast_dtype", lambda *a: torch.float16)  # the second: fp16
    with caplog.at_level(logging.WARNING, logger="mmccd"):
        result = train_network(toy_net(), noisy_loss, data, cfg, tmp_path / "s.pt", "toy", cpu)
    assert result.steps == 8 and "starting from a fresh scale" in caplog.text
    assert load_checkpoint(tmp_path / "s.pt")["scaler"]["scale"] > 0
