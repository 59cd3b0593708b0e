"""Issue 17.2: a disk that fills up while `prepare`, `train` (a checkpoint), `score` or `evaluate` (a report) writes.

Each test leaves little space on a small disk, runs the command through the CLI and checks: one `error:` line
naming the file and "no space left" (no traceback), no truncated file under a final name (nor a `.tmp-*`
left), and after freeing the space the same command (train: with --resume) completes with what an
uninterrupted command makes.

The small disk is a real size-limited tmpfs where this machine lets the tests mount one (root), filled with a
ballast file that "freeing space" deletes; and, everywhere, a byte budget on mmccd's atomic writes (the one
write helper: its rename fails with ENOSPC once the budget is spent), so that the tests run without root too.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from reliability_helpers import one_error_line

import mmccd.atomic

KB, MB = 1 << 10, 1 << 20


class _BudgetOs:
    """`os` as mmccd.atomic sees it, with a budget of bytes for the files it renames into place."""

    def __init__(self, budget: int):
        self.left = budget

    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, src, dst):
        size = Path(src).stat().st_size
        if size > self.left:
            raise OSError(errno.ENOSPC, "No space left on device (byte budget of the test)", str(src))
        self.left -= size
        os.replace(src, dst)


class SmallDisk:
    """A folder `path` whose free space a test sets (`leave_free`) and gives back (`free_space`)."""

    def __init__(self, kind: str, path: Path, monkeypatch: pytest.MonkeyPatch):
        self.kind, self.path, self._monkeypatch = kind, path, monkeypatch

    def leave_free(self, nbytes: int) -> None:
        if self.kind == "budget":
            self._monkeypatch.setattr(mmccd.atomic, "os", _BudgetOs(nbytes))
            return
        ballast = self.path / "ballast"
        with ballast.open("wb") as f:
            f.write(b"\0" * (shutil.disk_usage(self.path).free - nbytes))

    def free_space(self) -> None:
        if self.kind == "budget":
            self._monkeypatch.setattr(mmccd.atomic, "os", os)
        else:
            (self.path / "ballast").unlink()


@pytest.fixture(params=["tmpfs", "budget"])
def disk(request, tmp_path, monkeypatch):
    path = tmp_path / "disk"
    path.mkdir()
    if request.param == "budget":
        yield SmallDisk("budget", path, monkeypatch)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(path)], capture_output=True,
                             text=True) if shutil.which("mount") else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root or CAP_SYS_ADMIN): "
                    f"{mounted.stderr.strip() if mounted else 'no mount command'}; the byte-budget variant runs")
    try:
        yield SmallDisk("tmpfs", path, monkeypatch)
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _no_temporaries(root: Path) -> None:
    assert [p for p in root.rglob(".tmp-*")] == []


def _full(result, under: Path) -> str:
    """The one error line: the disk is full, the file (under `under`), what to do."""
    return one_error_line(result, "no space left to write", str(under), "free some space")


# ---------------------------------------------------------------- prepare


def test_prepare_on_a_full_disk_keeps_finished_cases_and_completes_after_freeing_space(
        disk, phantom, prepared, small_preset, run_cli):
    out = disk.path / "store"
    argv = ("prepare", "--data", phantom, "--out", out, "--preset", small_preset, "--workers", "1")
    disk.leave_free(700 * KB)  # two of the four cases (about 280 kB each)
    _full(run_cli(*argv), out / "cases")
    _no_temporaries(disk.path)
    complete = sorted(p.parent.name for p in (out / "cases").glob("*/meta.json"))
    assert 1 <= len(complete) < 4 and not (out / "splits.json").exists()
    for case in (out / "cases").iterdir():  # every array under its final name is whole: the reference's
        for array in case.glob("*.npy"):
            assert np.array_equal(np.load(array), np.load(prepared / "cases" / case.name / array.name)), array

    disk.free_space()
    result = run_cli(*argv)
    assert result.code == 0 and f"prepared {4 - len(complete)} case(s), reused {len(complete)}" in result.out, result
    assert (out / "splits.json").read_text() == (prepared / "splits.json").read_text()
    for case in (prepared / "cases").iterdir():
        for array in case.glob("*.npy"):
            assert np.array_equal(np.load(out / "cases" / case.name / array.name), np.load(array)), array
    assert not (out / ".mmccd.lock").exists()


# ---------------------------------------------------------------- a checkpoint during training

TRAIN = ("train", "--method", "cyclic-unet", "--set", "train.iterations=20", "--set", "train.checkpoint_every=5")


def _weights(run):
    out = {}
    for net in ("source_to_target", "target_to_source"):
        ckpt = torch.load(run / "checkpoints" / f"{net}.pt", map_location="cpu", weights_only=True)
        assert ckpt["finished"] and ckpt["step"] == 20
        out[net] = (ckpt["model"], ckpt["ema"])
    return out


def test_training_whose_checkpoint_fills_the_disk_resumes_bit_identically(disk, prepared, small_preset, runs,
                                                                          run_cli):
    """The uninterrupted reference is the session's Cyclic UNet run (same config and seed, one thread, CPU)."""
    run = disk.path / "run"
    argv = (*TRAIN, "--prepared", prepared, "--preset", small_preset, "--out", run)
    size = (runs["cyclic-unet"] / "checkpoints" / "source_to_target.pt").stat().st_size
    disk.leave_free(size + size // 2)  # the checkpoint of step 5 fits, the one of step 10 (beside it) does not
    ckpt = run / "checkpoints" / "source_to_target.pt"
    line = _full(run_cli(*argv), ckpt)
    assert "then --resume (a benchmark: the same command) continues from step 5 of 20" in line and "the file needed about" in line, line
    _no_temporaries(disk.path)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)  # whole, the last one that fitted
    assert saved["step"] == 5 and not saved["finished"]
    assert not (run / "checkpoints" / "target_to_source.pt").exists()

    disk.free_space()
    assert run_cli(*argv, "--resume").code == 0
    want, got = _weights(runs["cyclic-unet"]), _weights(run)
    for net in want:
        for what, a, b in (("model", *(w[net][0] for w in (want, got))), ("EMA", *(w[net][1] for w in (want, got)))):
            assert all(torch.equal(a[k], b[k]) for k in a), f"{net} {what} differs after the resume"
    log = (run / "logs" / "source_to_target.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in log[1:]] == list(range(2, 21, 2))  # rows past step 5 were redone once


# ---------------------------------------------------------------- score

CASES = ("Phantom_00000", "Phantom_00001")


def test_score_on_a_full_disk_stops_keeps_whole_cases_and_a_rerun_scores_the_rest(disk, phantom, runs, run_cli,
                                                                                  tmp_path):
    run = runs["cyclic-unet"]
    cases = [phantom / c for c in CASES]
    reference = tmp_path / "reference"
    assert run_cli("score", "--run", run, "--case", *cases, "--out", reference, "--threshold", "0.1").code == 0
    out = disk.path / "maps"
    argv = ("score", "--run", run, "--case", *cases, "--out", out, "--threshold", "0.1")
    disk.leave_free(3500 * KB)  # the first case (about 2.7 MB, mostly its view) fits, the second does not
    line = _full(run_cli(*argv), out / CASES[1])
    assert f"run the same command again; the 1 case(s) scored before it ({CASES[0]}) are kept" in line, line
    _no_temporaries(disk.path)
    first = sorted(p.name for p in out.glob(f"{CASES[0]}_*"))
    assert first == sorted(p.name for p in reference.glob(f"{CASES[0]}_*")) and len(first) == 4
    assert list(out.glob(f"{CASES[1]}_*")) == []  # all or nothing per case
    assert list(json.loads((out / "score_info.json").read_text())["cases"]) == [CASES[0]]

    disk.free_space()
    result = run_cli(*argv)
    assert result.code == 0 and f"skipped {CASES[0]}" in result.err and "exists" in result.err, result
    assert list(json.loads((out / "score_info.json").read_text())["cases"]) == list(CASES)
    for case in CASES:
        for kind in ("anomaly", "pred_mask"):
            got, want = (np.asarray(nib.load(d / f"{case}_{kind}.nii.gz").dataobj) for d in (out, reference))
            assert np.array_equal(got, want), (case, kind)


# ---------------------------------------------------------------- a report


def test_evaluate_on_a_full_disk_writes_no_metrics_and_a_rerun_completes(disk, run_copy, run_cli, tmp_path):
    run = run_copy("cyclic-unet")
    assert run_cli("evaluate", "--run", run, "--out", tmp_path / "reference").code == 0  # caches the maps too
    out = disk.path / "evaluation"
    disk.leave_free(1 * MB)  # the figures fit, a case view (about 2.5 MB) does not
    _full(run_cli("evaluate", "--run", run, "--out", out), out)
    _no_temporaries(disk.path)
    assert not (out / "metrics.json").exists()  # written last: an evaluation without it is redone, never reused

    disk.free_space()
    assert run_cli("evaluate", "--run", run, "--out", out).code == 0
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (out, tmp_path / "reference"))
    for key in ("threshold", "subject_mean_dice", "oracle_dice_test", "fingerprint"):
        assert got[key] == want[key], key
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "reference").iterdir())
