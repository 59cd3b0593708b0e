"""Helpers of the reliability tests (a module of its own: every test folder has a `conftest`)."""

from __future__ import annotations

import gzip
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


def set_header_affine(path: Path, affine: np.ndarray) -> Path:
    """Write `affine` into the sform of the .nii.gz `path` byte by byte (qform off): nibabel refuses to build an image
    with a NaN or singular affine, but such files exist (a converter's bug, a hand-edited header)."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[280:328] = np.asarray(affine[:3], "<f4").tobytes()  # srow_x, srow_y, srow_z
    raw[252:256] = np.asarray([0, 1], "<i2").tobytes()  # qform_code 0, sform_code 1 (scanner)
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


BRATS2023 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}


def to_brats2023(case: Path, keys=tuple(BRATS2023)) -> None:
    """Rename `keys` of a BraTS-2021-named case to the 2023 naming (<case>-t2f.nii.gz, ...); labels 4 -> 3."""
    for key in keys:
        path = image(case, key)
        if key == "seg":
            seg, _ = voxels(case, "seg")
            rewrite(case, "seg", np.where(seg == 4, 3, seg).astype(np.uint8))
        path.rename(case / f"{case.name}-{BRATS2023[key]}.nii.gz")


def skipped_case(result: CliResult, *fragments: str, case: str = "Phantom_00000", prepared: int = 0,
                 skipped: int = 1) -> str:
    """`mmccd prepare` skipped `case` (listed with its reason, which holds `fragments`); by default the data folder
    held only that case: nothing prepared, exit 1. Returns the reason's line."""
    assert result.code == (0 if prepared else 1), result
    assert f"prepared {prepared} case(s)" in result.out and f"skipped {skipped}" in result.out, result
    (line,) = [s for s in result.err.splitlines() if f"skipped {case}:" in s]
    for f in fragments:
        assert f in line, line
    return line


def one_error_line(result: CliResult, *fragments: str, code: int = 2) -> str:
    """The command failed with exit `code` and exactly one `error:` line, holding `fragments`."""
    assert result.code == code, result
    lines = [s for s in result.err.splitlines() if "error:" in s]
    assert len(lines) == 1, result.err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@dataclass(frozen=True)
class JobSpec:
    """What `benchmark.jobs.run_all` reads of a run (a stand-in for RunSpec in tests of its processes)."""

    run: Path
    label: str
    reuse: Path | None = None
    mirror: Path | None = None
    after: tuple[Path, ...] = ()
    shares_run: bool = False


def lock_run_and_record(prepared: Path, spec: JobSpec, plan: object) -> str:
    """A benchmark job (run in a worker process): lock its run folder as `train_run` does; record who holds it."""
    import json

    from mmccd.locks import LOCK_NAME, folder_lock

    with folder_lock(spec.run, "train"):
        holder = json.loads((spec.run / LOCK_NAME).read_text())
        (spec.run / "job.json").write_text(json.dumps({"pid": os.getpid(), "lock_pid": holder["pid"]}))
    return spec.label
