"""Self-describing checkpoints: weights, EMA weights, optimizer, RNG, the resolved config, the code version.

Loaded with `torch.load(weights_only=True)`: mmccd never unpickles objects from a file. A file that is
missing, damaged, not an mmccd checkpoint, from a newer format, or of another architecture gets one
CheckpointError saying which and what to do.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmccd.atomic import atomic_stream
from mmccd.config import ExperimentConfig, to_dict
from mmccd.errors import CheckpointError
from mmccd.provenance import code_version

FORMAT_VERSION = 1
CHECKPOINT_FORMAT = f"mmccd-checkpoint-v{FORMAT_VERSION}"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary name and rename: a killed process never leaves a truncated file, and a full
    disk is a DiskFullError with the checkpoint's size (written through a Python stream, which keeps the errno)."""
    with atomic_stream(path, _tensor_bytes(obj)) as stream:
        torch.save(obj, stream)


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested dict / list: about the size of its checkpoint."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(path: Path, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, rng: dict[str, Any], step: int, cfg: ExperimentConfig,
                    net_name: str, train_seconds: float) -> None:
    """Everything a resumed run needs to continue exactly, and what scoring needs to rebuild the network."""
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT,
        "net_name": net_name,
        "method": cfg.method,
        "config": to_dict(cfg),
        "code_version": code_version(),
        "step": step,
        "finished": step >= cfg.train.iterations,
        "model": net.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng,  # per-rank lists (training._gather_rng)
        "train_seconds": train_seconds,  # wall time summed over all sessions of this run
    }, path)


def check_format(found: Any, path: Path, expected: str = CHECKPOINT_FORMAT, what: str = "checkpoint") -> None:
    """CheckpointError unless `found` (the file's "format" field) is `expected` ("<kind>-v<N>"); a file of the
    same kind with a higher version says it was written by a newer mmccd."""
    if found == expected:
        return
    prefix, _, version = expected.rpartition("-v")
    match = re.fullmatch(re.escape(prefix) + r"-v(\d+)", str(found))
    if match and int(match.group(1)) > int(version):
        raise CheckpointError(f"{what} {path} was written by a newer mmccd (format {found}; this version reads "
                              f"{expected}): upgrade mmccd (`pip install -U mmccd`) to read it")
    raise CheckpointError(f"{path} is not an mmccd {what} (expected format {expected}, found "
                          f"{found if found is not None else 'no format field'})")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load safely (weights_only) and check the format; clear errors for missing/corrupt files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: train first (`mmccd train ...`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt zips/pickles
        raise CheckpointError(
            f"checkpoint {path} cannot be read as plain tensors ({type(exc).__name__}); mmccd never unpickles "
            "objects from checkpoints (torch.load weights_only=True), so "
            "it is corrupt or not an mmccd checkpoint: delete it and train again") from None
    check_format(ckpt.get("format") if isinstance(ckpt, dict) else None, path)
    return ckpt


def load_state_checked(module: nn.Module, state: dict[str, Tensor], path: Path, what: str = "model") -> None:
    """load_state_dict with an error that says the checkpoint is from another architecture."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", mismatched))
            if keys
        )
        raise CheckpointError(
            f"checkpoint {path} holds a {what} of another architecture than the configured one ({detail}); "
            "use the config saved with that checkpoint or train again")
    module.load_state_dict(state)


__all__ = ["CHECKPOINT_FORMAT", "FORMAT_VERSION", "atomic_torch_save", "check_format", "load_checkpoint",
           "load_state_checked", "save_checkpoint"]
