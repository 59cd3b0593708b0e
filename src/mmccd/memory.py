"""Running out of memory: a CUDA or CPU allocation failure becomes one OutOfMemoryError naming the settings to
lower, with the values in use, and the device.

Caught in two places: around training one network (`explain_training_failure`, pipeline/runs.py), and around
each scoring call (`score_batch`, the loop `scoring.slices.score_batches` that every caller uses). A full disk
while training gets the same resume hint (the checkpoint it stopped after).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mmccd.atomic import DiskFullError, disk_full_error
from mmccd.distributed import dist_info
from mmccd.errors import MmccdError

if TYPE_CHECKING:
    from mmccd.config import ExperimentConfig, ScoreConfig
    from mmccd.data.batch import SliceBatch
    from mmccd.scoring.base import AnomalyMethod, ScoreOutput

# what torch and the CUDA libraries say when an allocation fails (a CPU tensor: "DefaultCPUAllocator: can't
# allocate memory: you tried to allocate N bytes")
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "DefaultCPUAllocator", "CUBLAS_STATUS_ALLOC_FAILED",
                  "CUDNN_STATUS_ALLOC_FAILED", "failed to allocate")


class OutOfMemoryError(MmccdError):
    """A step ran out of (GPU or CPU) memory: names the settings to lower and their values, and the device."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch.cuda.OutOfMemoryError, MemoryError and torch's allocation-failure RuntimeErrors."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _OUT_OF_MEMORY)


def describe_device(device: torch.device) -> str:
    """'cuda:0 (NVIDIA H200, 139 GB)' or 'cpu'."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        try:
            props = torch.cuda.get_device_properties(device)
            return f"{device} ({props.name}, {props.total_memory / 2**30:.0f} GB)"
        except (RuntimeError, AssertionError):
            pass
    return str(device)


def _what_failed(exc: BaseException) -> str:
    """The allocation that failed, in a few words (torch's first line, shortened)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first if len(first) <= 140 else first[:137] + "..."


# ---------------------------------------------------------------- training


def last_checkpoint_step(checkpoint: Path) -> int | None:
    """The step of the checkpoint on disk (memory-mapped: cheap even after running out of memory); None if none."""
    if not checkpoint.exists():
        return None
    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:  # an unreadable checkpoint is reported by the resumed run itself
        return None


def _resume_hint(checkpoint: Path, iterations: int) -> str:
    """What continues the run: `mmccd train ... --resume`, or the same `mmccd benchmark` command."""
    step = last_checkpoint_step(checkpoint)
    if step is None:
        return (f"--resume (a benchmark: the same command) starts {checkpoint.stem} again from step 0 (no checkpoint "
                "of it was written yet)")
    return (f"--resume (a benchmark: the same command) continues from step {step} of {iterations} (the last "
            f"checkpoint, {checkpoint}, is intact)")


@contextmanager
def explain_training_failure(cfg: ExperimentConfig, device: torch.device, checkpoint: Path,
                             net_name: str) -> Iterator[None]:
    """Around training one network: out of memory -> OutOfMemoryError naming --batch-size (train.batch_size) and
    train.amp with their values, the device and the step --resume continues from; a full disk -> the same
    DiskFullError with that resume hint."""
    try:
        yield
    except DiskFullError as exc:
        raise disk_full_error(exc.path, exc.needed, exc.at_least,
                              then=_resume_hint(checkpoint, cfg.train.iterations)) from exc
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        tc, world = cfg.train, dist_info()[1]
        per_rank = f", {tc.batch_size // world} per process" if world > 1 else ""
        raise OutOfMemoryError(
            f"out of memory training {net_name} on {describe_device(device)} with --batch-size {tc.batch_size} "
            f"(train.batch_size = {tc.batch_size}{per_rank}), train.amp = {tc.amp}, image size "
            f"{cfg.prepare.size} px ({_what_failed(exc)}); once memory is free (other processes on the device, a "
            f"larger device) {_resume_hint(checkpoint, tc.iterations)} with the same settings; or train again "
            f"(--overwrite, or another --out) with a lower --batch-size (e.g. {max(1, tc.batch_size // 2)})"
            f"{' or --amp bf16' if tc.amp == 'none' and torch.device(device).type == 'cuda' else ''}") from exc


# ---------------------------------------------------------------- scoring


def scoring_settings(method: AnomalyMethod, settings: ScoreConfig, slices: int) -> str:
    """The scoring settings that decide the memory of one network call, with their values."""
    size = method.cfg.prepare.size
    if method.name == "mmccd":
        return (f"a network call holds score.mask_batch x score.slice_batch = {settings.mask_batch} x "
                f"{settings.slice_batch} images of {size} px (score.amp = {settings.amp}); lower score.mask_batch "
                f"({settings.mask_batch} now) or score.slice_batch ({settings.slice_batch} now) with --scoring "
                f"FILE.yaml, e.g. `extends: fast` and `score: {{mask_batch: {max(1, settings.mask_batch // 2)}}}` "
                "(speed only: the maps and the threshold stay the same)")
    return (f"a network call holds {slices} slices of {size} px (score.amp = {settings.amp}); free memory on the "
            "device or score on another one (--device)")


def score_batch(method: AnomalyMethod, batch: SliceBatch, settings: ScoreConfig,
                generator: torch.Generator) -> ScoreOutput:
    """`method.score(batch, settings, generator)`; running out of memory is an OutOfMemoryError naming the
    settings to lower (scoring_settings) and the device."""
    try:
        return method.score(batch, settings, generator)
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise OutOfMemoryError(
            f"out of memory scoring with {method.name} on {describe_device(method.device)} ({_what_failed(exc)}): "
            f"{scoring_settings(method, settings, len(batch))}") from exc


__all__ = ["OutOfMemoryError", "describe_device", "explain_training_failure", "is_out_of_memory",
           "last_checkpoint_step", "score_batch", "scoring_settings"]
