"""Mixed precision on the test device: a training step of MMCCD's two networks and scoring per AMP mode.

One AMP rule (runtime.autocast_dtype) for training and scoring: none = fp32, bf16 (CPU or a GPU that has
it, no loss scaling), fp16 (CUDA only, with GradScaler). On a CPU, fp16 is a ConfigError naming the fix.
"""

from __future__ import annotations

import pytest
import torch
from gpu_helpers import SliceItems, settings, slices, state_on_cpu, tiny_cfg, tiny_mmccd

from mmccd.checkpoints import load_checkpoint
from mmccd.errors import ConfigError
from mmccd.runtime import autocast_dtype
from mmccd.training import train_network

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_a_training_step_per_amp_mode(amp: str, device: torch.device, tmp_path) -> None:
    cfg = tiny_cfg(train={"amp": amp, "iterations": 6})  # fp16: the first steps may overflow and be skipped
    method = tiny_mmccd(cfg)
    if amp == "fp16" and device.type != "cuda":
        with pytest.raises(ConfigError, match="train.amp fp16 needs a CUDA device.*use bf16 or none"):
            train_network(method.nets["source_to_target"], method.losses()["source_to_target"], SliceItems(), cfg,
                          tmp_path / "f.pt", "source_to_target", device)
        return
    for name, loss_fn in method.losses().items():
        net = method.nets[name]
        before = state_on_cpu(net)
        result = train_network(net, loss_fn, SliceItems(), cfg, tmp_path / f"{name}.pt", name, device)
        assert result.steps == 6 and torch.isfinite(torch.tensor(result.final_loss)), (name, result)
        params = list(net.parameters())
        assert all(p.device.type == device.type and p.dtype == torch.float32 for p in params)  # fp32 master weights
        after = state_on_cpu(net)
        assert any(not torch.equal(before[k], after[k]) for k in before), f"{name}: no step was taken"
        scaler = load_checkpoint(tmp_path / f"{name}.pt")["scaler"]
        if amp == "fp16":  # loss scaling on, and not stuck skipping every step
            assert 0 < scaler["scale"] <= 65536.0
        else:
            assert scaler == {}  # bf16 and fp32 need no loss scaling


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_scoring_per_amp_mode(amp: str, device: torch.device) -> None:
    method, batch = tiny_mmccd().to(device), slices().to(device)
    if amp == "fp16" and device.type != "cuda":
        with pytest.raises(ConfigError, match="score.amp fp16 needs a CUDA device"):
            method.score(batch, settings(amp=amp))
        return
    fp32 = method.score(batch, settings(), torch.Generator(device=device).manual_seed(0)).anomaly_map
    out = method.score(batch, settings(amp=amp), torch.Generator(device=device).manual_seed(0)).anomaly_map
    assert out.dtype == torch.float32 and out.device.type == device.type and torch.isfinite(out).all()
    assert (out - fp32).abs().max() <= 0.1 * fp32.abs().max()


def test_fp16_needs_cuda_is_said_on_the_cpu() -> None:
    """The CPU message itself, whatever the test device (what a laptop user sees)."""
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        autocast_dtype("fp16", torch.device("cpu"), "train.amp")
