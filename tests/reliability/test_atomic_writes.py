"""Issue 7.2: every file is written under a temporary name and renamed, so a writer killed (or failing)
mid-write never leaves a truncated file under the final name, and the previous content survives."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
import torch
from reliability_helpers import SUBPROCESS_ENV

import mmccd.atomic as mmccd_atomic
import mmccd.checkpoints as checkpoints
from mmccd.atomic import DiskFullError, atomic_save_npy, atomic_write_text
from mmccd.checkpoints import atomic_torch_save
from mmccd.data.io import save_nifti_like
from mmccd.data.store import write_case

WRITER = textwrap.dedent("""
    import sys, time
    from mmccd.atomic import atomic_write
    with atomic_write(sys.argv[1]) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"half of the new content")
            f.flush()
            print("inside", flush=True)
            time.sleep(60)  # killed here
""")


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old complete content")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env=SUBPROCESS_ENV)
    try:
        assert proc.stdout.readline().strip() == "inside"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.stdout.close()
    assert path.read_bytes() == b"old complete content"
    # the half-written file exists only under a hidden temporary name, which nothing reads
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-") and leftovers[0].endswith("model.pt")


def _fail(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("writer", ["npy", "text", "nifti", "checkpoint"])
def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, writer):
    names = {"npy": "images.npy", "text": "meta.json", "nifti": "map.nii.gz", "checkpoint": "net.pt"}
    path = tmp_path / names[writer]
    path.write_bytes(b"old")

    def write_half_then_fail(obj, file, *args, **kwargs):  # the library wrote part of the file, then failed
        if hasattr(file, "write"):  # a stream (checkpoints are written through one)
            file.write(b"partial")
            file.flush()
        else:
            with open(file, "wb") as f:
                f.write(b"partial")
        _fail()

    if writer == "npy":
        monkeypatch.setattr(np, "save", lambda file, arr, *a, **k: write_half_then_fail(arr, file))
        call = lambda: atomic_save_npy(path, np.zeros(3))  # noqa: E731
    elif writer == "text":
        monkeypatch.setattr(mmccd_atomic.Path, "write_text", lambda self, *a, **k: write_half_then_fail(None, self))
        call = lambda: atomic_write_text(path, "{}")  # noqa: E731
    elif writer == "nifti":
        monkeypatch.setattr(nib, "save", lambda img, file: write_half_then_fail(img, file))
        ref = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
        call = lambda: save_nifti_like(np.ones((2, 2, 2), np.float32), ref, path)  # noqa: E731
    else:
        monkeypatch.setattr(checkpoints.torch, "save", write_half_then_fail)
        call = lambda: atomic_torch_save({"w": torch.zeros(3)}, path)  # noqa: E731
    with pytest.raises(DiskFullError, match=f"no space left to write {path}.* free on its disk") as err:
        call()
    assert "run the same command again" in str(err.value)  # one actionable line, not an errno dump
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_case_interrupted_before_meta_json_is_not_complete(tmp_path, monkeypatch):
    """The store marks a case complete by writing meta.json last; a failure before it leaves it incomplete,
    and a rewrite removes what a killed writer left behind."""
    from mmccd.data.store import is_complete

    images = np.zeros((2, 4, 8, 8), np.float32)
    brain = np.ones((2, 8, 8), np.uint8)
    write_case(tmp_path, "C1", images, brain, None, {"case_id": "C1"})
    assert is_complete(tmp_path, "C1")
    calls = []

    def fail_on_brain(path, array):
        calls.append(path.name)
        if path.name == "brain.npy":
            _fail()
        real(path, array)

    real = mmccd_atomic.atomic_save_npy
    monkeypatch.setattr("mmccd.data.store.atomic_save_npy", fail_on_brain)
    with pytest.raises(OSError):  # injected in place of the atomic writer itself: the raw error
        write_case(tmp_path, "C1", images + 1, brain, None, {"case_id": "C1"})
    assert not is_complete(tmp_path, "C1")  # never trusted by a resumed prepare or by training
    monkeypatch.undo()
    folder = tmp_path / "cases" / "C1"
    (folder / ".tmp-123-abcdef01-images.npy").write_bytes(b"left by a killed writer")
    write_case(tmp_path, "C1", images, brain, None, {"case_id": "C1"})
    assert is_complete(tmp_path, "C1") and json.loads((folder / "meta.json").read_text()) == {"case_id": "C1"}
    assert sorted(p.name for p in folder.iterdir()) == ["brain.npy", "images.npy", "meta.json"]
