"""Shared pieces of the device tests: which device to test on, tiny MMCCD nets, toy training data.

MMCCD_TEST_DEVICE selects the device: unset or "cpu" (CI), "cuda" / "cuda:N" on a GPU machine. Tests
that make sense on a CPU run there too (the same code as on the GPU); the parts that need CUDA skip
with NEEDS_CUDA.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmccd.config import ExperimentConfig, ScoreConfig, merge
from mmccd.data.batch import SliceBatch
from mmccd.scoring.mmccd import MMCCD

DEVICE_ENV = "MMCCD_TEST_DEVICE"
NEEDS_CUDA = "needs CUDA (set MMCCD_TEST_DEVICE=cuda on a GPU machine)"
SIZE = 16  # px: the tiny nets of tests/scoring/test_mmccd.py
TINY = {"prepare": {"size": SIZE}, "method": "mmccd",
        "network": {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [8],
                    "num_head_channels": 8, "dropout": 0.0},
        "diffusion": {"stripe_width": 32},  # 4 px at 16 px
        "train": {"iterations": 3, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 100, "log_every": 100},
        "score": {"num_masks": 8, "ddim_steps": 3, "mask_batch": 8}}


def device_under_test() -> torch.device:
    """The device named by MMCCD_TEST_DEVICE ("cpu" when unset); a skip when it asks for CUDA that is not here."""
    name = os.environ.get(DEVICE_ENV, "").strip() or "cpu"
    if name != "cpu" and not name.startswith("cuda"):
        raise pytest.UsageError(f"{DEVICE_ENV}={name}: expected cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"{DEVICE_ENV}={name} but CUDA is not available here (a CPU build of torch, or no driver)")
    device = torch.device(name)
    return torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" and device.index is None else device


def require_cuda(device: torch.device) -> None:
    if device.type != "cuda":
        pytest.skip(NEEDS_CUDA)


@contextmanager
def exact_cuda_kernels() -> Iterator[None]:
    """Deterministic cuDNN and no TF32 (bit-exact comparisons on a GPU); nothing changes on the CPU."""
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = saved


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- tiny MMCCD


def tiny_cfg(**sections: dict) -> ExperimentConfig:
    cfg = merge(ExperimentConfig(), TINY)
    return merge(cfg, sections) if sections else cfg


def settings(**score: object) -> ScoreConfig:
    """The tiny config's score section with `score` changed."""
    return merge(tiny_cfg().score, score)


def tiny_mmccd(cfg: ExperimentConfig | None = None) -> MMCCD:
    """Tiny MMCCD with its zero-initialised layers perturbed (else every map is 0), in eval mode, on the CPU."""
    torch.manual_seed(0)
    method = MMCCD(cfg or tiny_cfg())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in method.nets.parameters():
            if p.dim() > 1 and p.abs().max() == 0:
                p.normal_(0, 0.05, generator=g)
    return method.eval()


def slices(n: int = 3, seed: int = 0) -> SliceBatch:
    """n smooth SIZE x SIZE slices in [-1, 1], target = -source, brain everywhere but the top two rows (CPU)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=g) * 2 - 1
    source = F.interpolate(coarse, size=SIZE, mode="bilinear", align_corners=False)
    brain = torch.ones(n, 1, SIZE, SIZE, dtype=torch.bool)
    brain[..., :2, :] = False
    return SliceBatch(source=source, target=-source, brain_mask=brain, gt_mask=torch.zeros_like(brain),
                      subject_id=[f"s{i}" for i in range(n)], slice_index=torch.arange(n))


class SliceItems(torch.utils.data.Dataset):
    """Dataset items (what SliceDataset yields) of `slices(n)`: for train_network."""

    def __init__(self, n: int = 12, seed: int = 0):
        self.batch = slices(n, seed)

    def __len__(self) -> int:
        return len(self.batch)

    def __getitem__(self, i: int) -> dict:
        b = self.batch
        return {"source": b.source[i], "target": b.target[i], "brain_mask": b.brain_mask[i],
                "gt_mask": b.gt_mask[i] if b.gt_mask is not None else None, "subject_id": b.subject_id[i],
                "slice_index": int(b.slice_index[i])}


# ---------------------------------------------------------------- a toy network (as tests/test_training.py)


def toy_net(dropout: float = 0.2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(8, 1, 3, padding=1))


def noisy_loss(net: nn.Module, batch: SliceBatch, generator: torch.Generator) -> torch.Tensor:
    """Loss noise from the training generator (on its device), dropout from the global RNG of the device."""
    noise = torch.randn(batch.source.shape, generator=generator, device=generator.device) * 0.1
    return F.mse_loss(net(batch.source + noise.to(batch.source.device)), batch.target)


def toy_cfg(iterations: int = 10, amp: str = "none") -> ExperimentConfig:
    return merge(ExperimentConfig(), {"train": {"iterations": iterations, "batch_size": 4, "lr": 1e-2,
                                                "checkpoint_every": 3, "log_every": 5, "amp": amp}})


def state_on_cpu(net: nn.Module) -> dict[str, torch.Tensor]:
    """A copy (on the CPU, `.cpu()` alone would alias the live weights)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
