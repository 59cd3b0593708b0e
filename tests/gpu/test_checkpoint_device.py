"""A checkpoint moved between devices: trained on one, loaded with `load_method` and scored on the other.

The maps are compared with noise from a CPU generator, which MMCCD moves to the data's device, so that
both devices see the same noise; they agree up to the devices' float arithmetic.
"""

from __future__ import annotations

import pytest
import torch
from gpu_helpers import NEEDS_CUDA, SliceItems, exact_cuda_kernels, settings, slices, tiny_cfg, tiny_mmccd

from mmccd.atomic import atomic_write_text
from mmccd.checkpoints import load_checkpoint
from mmccd.config import dump_yaml
from mmccd.pipeline.runs import load_method
from mmccd.training import train_network

pytestmark = pytest.mark.gpu


def _train_run(run, device: torch.device) -> None:
    """A run folder as `mmccd train` writes it (config.yaml, checkpoints/<net>.pt) with both MMCCD networks."""
    cfg = tiny_cfg(device=str(device))
    atomic_write_text(run / "config.yaml", dump_yaml(cfg))
    method = tiny_mmccd(cfg)
    for name, loss_fn in method.losses().items():
        train_network(method.nets[name], loss_fn, SliceItems(), cfg, run / "checkpoints" / f"{name}.pt", name, device)


@pytest.mark.parametrize("trained_on, scored_on", [("device", "cpu"), ("cpu", "device")])
def test_trained_on_one_device_scored_on_the_other(trained_on: str, scored_on: str, device: torch.device,
                                                    tmp_path) -> None:
    if device.type == "cpu" and trained_on == "cpu":
        pytest.skip(f"{NEEDS_CUDA}: on the CPU both directions are cpu -> cpu, run once")
    devices = {"cpu": torch.device("cpu"), "device": device}
    run = tmp_path / "run"
    _train_run(run, devices[trained_on])
    for name in ("source_to_target", "target_to_source"):
        ckpt = load_checkpoint(run / "checkpoints" / f"{name}.pt")  # map_location cpu: readable anywhere
        assert ckpt["finished"] and all(v.device.type == "cpu" for v in ckpt["ema"].values())
    here, there = load_method(run, str(devices[trained_on])), load_method(run, str(devices[scored_on]))
    assert there.device.type == devices[scored_on].type
    for key in here.nets:  # the same EMA weights on both devices
        for a, b in zip(here.nets[key].state_dict().values(), there.nets[key].state_dict().values(), strict=True):
            assert torch.equal(a.cpu(), b.cpu())
    batch = slices()
    with exact_cuda_kernels():
        maps = [m.score(batch.to(m.device), settings(), torch.Generator().manual_seed(0)).anomaly_map.cpu()
                for m in (here, there)]
    assert maps[0].max() > 0
    torch.testing.assert_close(maps[1], maps[0], rtol=1e-3, atol=1e-5)
