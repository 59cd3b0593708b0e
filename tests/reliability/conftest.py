"""Shared pieces of the reliability tests: a SYNTHETIC phantom, a prepared store, two tiny trained runs,
and `run_cli` (the `mmccd` command in this process, output captured, no traceback allowed).

Everything is small (48 x 48 x 32 voxels, 32 px slices, a 2-level UNet of width 8, a few steps) and
single-threaded, so that the folder runs in well under a minute beside other jobs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mmccd.cli import main
from mmccd.config import load_config
from mmccd.data.phantom import write_phantom_dataset
from mmccd.data.prepare import prepare_dataset
from mmccd.pipeline.runs import train_run

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


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys):
    """`mmccd ARGS` in this process: (exit code, stdout, stderr); fails on a traceback in stderr."""

    def run(*argv: str | Path) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        return CliResult(code, out, err)

    return run


def run_mmccd(*argv: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`mmccd ARGS` in a fresh process (what a user sees in a terminal)."""
    return subprocess.run([sys.executable, "-m", "mmccd.cli", *map(str, argv)], capture_output=True, text=True,
                          env=SUBPROCESS_ENV, timeout=timeout)


@pytest.fixture(scope="session")
def small_preset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("preset") / "small.yaml"
    path.write_text(SMALL_PRESET)
    return path


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> Path:
    """Four SYNTHETIC BraTS-2021-named cases (Phantom_00000 .. 00003), never modified by tests."""
    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root, n_cases=4, seed=1, shape=SHAPE)
    return root


@pytest.fixture
def one_case(phantom, tmp_path):
    """A data folder with a copy of one good case; returns (data folder, case folder) to break."""
    data = tmp_path / "data"
    case = shutil.copytree(phantom / "Phantom_00000", data / "Phantom_00000")
    return data, case


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


@pytest.fixture(scope="session")
def prepared(phantom, small_preset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "store"
    prepare_dataset(phantom, out, load_config(small_preset).prepare)
    return out


# the Cyclic UNet run is also the uninterrupted reference of the kill-and-resume test (test_resume.py)
RUN_OVERRIDES = {"cyclic-unet": {"train": {"iterations": 20, "checkpoint_every": 5}}, "mmccd": {}}


@pytest.fixture(scope="session")
def runs(prepared, small_preset, tmp_path_factory) -> dict[str, Path]:
    """A finished tiny run per method (never modified by tests: copy it first)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method, overrides in RUN_OVERRIDES.items():
        out[method] = root / method
        train_run(prepared, out[method], load_config(small_preset, {"method": method, **overrides}))
    return out


@pytest.fixture
def run_copy(runs, tmp_path):
    def copy(method: str = "cyclic-unet") -> Path:
        return shutil.copytree(runs[method], tmp_path / f"run-{method}")

    return copy
