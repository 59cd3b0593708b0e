"""Helpers of the reliability tests (a module of its own: every test folder has a `conftest`)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (48, 48, 32)
# smaller than the `tiny` preset: seconds per run on one core
SMALL_PRESET = """\
name: reliability
prepare: {size: 32, min_brain_fraction: 0.15, workers: 1}
network: {base_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_resolutions: [],
          num_head_channels: 8, dropout: 0.1}
diffusion: {stripe_width: 32}
train: {iterations: 4, batch_size: 4, lr: 0.001, checkpoint_every: 2, log_every: 2}
score: {num_masks: 8, ddim_steps: 2, mask_batch: 8}
device: cpu
"""
# one thread everywhere: deterministic CPU kernels, and no contention with other jobs
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_mmccd(*argv: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`mmccd ARGS` in a fresh process (what a user sees in a terminal)."""
    return subprocess.run([sys.executable, "-m", "mmccd.cli", *map(str, argv)], capture_output=True, text=True,
                          env=SUBPROCESS_ENV, timeout=timeout)


def image(case: Path, key: str) -> Path:
    return case / f"{case.name}_{key}.nii.gz"


def rewrite(case: Path, key: str, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Replace one file of `case` by `data` (the original affine unless given)."""
    path = image(case, key)
    ref = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(data), ref.affine if affine is None else affine), str(path))
    return path


def voxels(case: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(image(case, key))
    return np.asarray(img.dataobj), img.affine.copy()
