"""Where and how networks run: the device, the seeds, and the one mixed-precision (AMP) rule.

Training and scoring both ask `autocast_dtype(amp, device)`; a setting the device cannot honour is a
ConfigError naming the fix, in training and in scoring alike.
"""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import numpy as np
import torch

from mmccd.distributed import local_rank
from mmccd.errors import ConfigError

Amp = Literal["none", "bf16", "fp16", "auto"]
AMP_CHOICES: tuple[str, ...] = ("none", "bf16", "fp16", "auto")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' = the local CUDA device if present, else CPU. Under torchrun 'auto' and 'cuda' mean
    the rank's own GPU, cuda:LOCAL_RANK."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank())
        return torch.device("cpu")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{local_rank()}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}': expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available here; use --device cpu or auto")
    if device.type == "cuda" and "LOCAL_RANK" in os.environ and device.index != local_rank():
        # the process group is bound to cuda:LOCAL_RANK (distributed.init_distributed); a fixed cuda:N would put
        # every rank on one GPU, or the model on another GPU than its collectives
        raise ConfigError(f"device '{name}' under torchrun: each process uses the GPU of its LOCAL_RANK (this one "
                          f"cuda:{local_rank()}); use --device cuda or auto, and choose GPUs with CUDA_VISIBLE_DEVICES")
    return device


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (CPU and every CUDA device) global RNGs from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def native_bf16(device: torch.device) -> bool:
    """bf16 computed natively: CUDA with bf16 support, or a CPU with avx512_bf16 / AMX (emulated bf16 on
    an older CPU is slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = [getattr(torch.cpu, f, None) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(f() for f in probes if f is not None)
    return False


def autocast_dtype(amp: str, device: torch.device, setting: str = "amp") -> torch.dtype | None:
    """The autocast dtype for an AMP setting on `device`, or None for float32. The one AMP rule.

    none: float32 · bf16: bfloat16 (CPU or a CUDA GPU that has it) · fp16: float16, CUDA only ·
    auto: bf16 where computed natively (`native_bf16`), else fp16 on CUDA, else float32.
    `setting` names the config key in errors (e.g. "train.amp")."""
    if amp not in AMP_CHOICES:
        raise ConfigError(f"{setting}: expected one of {', '.join(AMP_CHOICES)}, found '{amp}'")
    if amp == "auto":
        if native_bf16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"{setting} fp16 needs a CUDA device (found {device}); on a CPU use bf16 or none")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{setting} bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use fp16 or none")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


def autocast(dtype: torch.dtype | None, device: torch.device) -> AbstractContextManager:
    """torch.autocast for `dtype` on `device`, or a no-op for float32 (dtype None)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


__all__ = ["AMP_CHOICES", "Amp", "autocast", "autocast_dtype", "native_bf16", "resolve_device", "seed_everything"]
