"""Shared pieces of the reliability tests: a SYNTHETIC phantom, a prepared store, two tiny trained runs,
and `run_cli` (the `mmccd` command in this process, output captured, no traceback allowed).

Everything is small (48 x 48 x 32 voxels, 32 px slices, a 2-level UNet of width 8, a few steps) and
single-threaded (about 45 s of CPU for the folder), so that it can run beside other jobs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from reliability_helpers import SHAPE, SMALL_PRESET, CliResult

from mmccd.cli import main
from mmccd.config import load_config
from mmccd.data.phantom import write_phantom_dataset
from mmccd.data.prepare import prepare_dataset
from mmccd.pipeline.runs import train_run


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture
def prepare(run_cli, small_preset, tmp_path):
    """`mmccd prepare --data DATA --out tmp/out` with the small preset, one process."""

    def run(data, *extra):
        return run_cli("prepare", "--data", data, "--out", tmp_path / "out", "--preset", small_preset,
                       "--workers", "1", *extra)

    return run


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
