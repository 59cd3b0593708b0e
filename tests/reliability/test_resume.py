"""Issue 7.3: a run killed with SIGKILL resumes from what it finished and ends where an uninterrupted run ends.

- `mmccd train`: killed after its first checkpoint, resumed with --resume; the final weights (model and
  EMA of every network) are bit-identical to those of an uninterrupted run with the same seed (CPU).
- `mmccd prepare`: killed in the middle of writing a case; the rerun redoes that case and the ones after
  it, reuses the finished one untouched, and the store equals one prepared without interruption."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import torch
from reliability_helpers import SUBPROCESS_ENV

TRAIN = ("--quiet", "train", "--method", "cyclic-unet", "--set", "train.iterations=20", "--set",
         "train.checkpoint_every=5")  # as the session's Cyclic UNet run (conftest.RUN_OVERRIDES)


def _train(prepared, preset, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "mmccd.cli", *TRAIN, "--prepared", str(prepared),
                             "--preset", str(preset), "--out", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=SUBPROCESS_ENV)


def _wait_for(path, proc, timeout=120.0):
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared: {proc.stderr.read()}"
        assert time.monotonic() < end, f"no {path} after {timeout} s"
        time.sleep(0.02)


def _weights(run):
    out = {}
    for net in ("source_to_target", "target_to_source"):
        ckpt = torch.load(run / "checkpoints" / f"{net}.pt", map_location="cpu", weights_only=True)
        assert ckpt["finished"] and ckpt["step"] == 20
        out[net] = (ckpt["model"], ckpt["ema"])
    return out


def test_training_killed_and_resumed_equals_an_uninterrupted_run(prepared, small_preset, runs, run_cli, tmp_path):
    """The uninterrupted run is the session's Cyclic UNet run (same config and seed, one thread, CPU)."""
    killed = _train(prepared, small_preset, tmp_path / "killed")
    first = tmp_path / "killed" / "checkpoints" / "source_to_target.pt"
    try:
        _wait_for(first, killed)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
    finally:
        killed.kill()
    step = torch.load(first, map_location="cpu", weights_only=True)["step"]
    assert 5 <= step < 20, step  # killed mid-run, after at least one checkpoint

    # an interrupted run is refused by the later stages, with the command that finishes it
    for argv in (("evaluate", "--run", tmp_path / "killed"),
                 ("score", "--run", tmp_path / "killed", "--case", tmp_path, "--out", tmp_path / "maps")):
        result = run_cli(*argv)
        assert result.code == 2 and "unfinished training run" in result.err and "--resume" in result.err, result

    resumed = _train(prepared, small_preset, tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    for proc in (killed, resumed):
        proc.stderr.close()

    want, got = _weights(runs["cyclic-unet"]), _weights(tmp_path / "killed")
    for net in want:
        for what, a, b in (("model", want[net][0], got[net][0]), ("EMA", want[net][1], got[net][1])):
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), f"{net} {what} {key} differs after resume"


KILL_DURING_SECOND_CASE = textwrap.dedent("""
    import os, signal, sys
    import mmccd.data.prepare as prepare
    from mmccd.atomic import atomic_save_npy
    from mmccd.data.store import case_dir

    real_write_case, written = prepare.write_case, []

    def write_case_then_die(root, case_id, images, brain, seg, meta):
        written.append(case_id)
        if len(written) == 2:  # half of the second case is on disk, then the process is killed
            (case_dir(root, case_id) / "meta.json").unlink(missing_ok=True)
            atomic_save_npy(case_dir(root, case_id) / "images.npy", images.astype("float16"))
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write_case(root, case_id, images, brain, seg, meta)

    prepare.write_case = write_case_then_die
    from mmccd.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_prepare_killed_mid_case_redoes_only_unfinished_cases(phantom, prepared, small_preset, run_cli, tmp_path):
    out = tmp_path / "store"
    argv = ("prepare", "--data", phantom, "--out", out, "--preset", small_preset, "--workers", "1")
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SECOND_CASE, *map(str, argv)], capture_output=True,
                          text=True, env=SUBPROCESS_ENV, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    cases = out / "cases"
    assert (cases / "Phantom_00000" / "meta.json").exists()
    assert (cases / "Phantom_00001" / "images.npy").exists() and not (cases / "Phantom_00001" / "meta.json").exists()
    assert not (out / "splits.json").exists()
    done = {p: p.stat().st_mtime_ns for p in (cases / "Phantom_00000").iterdir()}

    result = run_cli(*argv)
    assert result.code == 0 and "prepared 3 case(s), reused 1, skipped 0" in result.out, result
    assert done == {p: p.stat().st_mtime_ns for p in (cases / "Phantom_00000").iterdir()}  # not redone
    # the resumed store is the store prepared in one go (same inputs and settings)
    assert (out / "splits.json").read_text() == (prepared / "splits.json").read_text()
    for case in sorted(p.name for p in (prepared / "cases").iterdir()):
        for name in ("images.npy", "brain.npy", "seg.npy"):
            assert np.array_equal(np.load(cases / case / name), np.load(prepared / "cases" / case / name)), (case, name)


class _PoolWhoseWorkersDie:
    """Stands in for ProcessPoolExecutor when the kernel's out-of-memory killer ends the workers."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        future = Future()
        future.set_exception(BrokenProcessPool("A process in the process pool was terminated abruptly"))
        return future


def test_prepare_whose_worker_is_killed_says_how_to_resume(phantom, small_preset, run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr("mmccd.data.prepare.ProcessPoolExecutor", _PoolWhoseWorkersDie)
    result = run_cli("prepare", "--data", phantom, "--out", tmp_path / "store", "--preset", small_preset,
                     "--workers", "2")
    assert result.code == 2 and "worker process died" in result.err and "--workers 1" in result.err, result


def test_resuming_a_finished_run_keeps_the_code_that_trained_it(run_copy, prepared, small_preset, monkeypatch):
    """`train --resume` of a finished run trains nothing, so run_info must still name the code that trained it
    (export and the benchmark's `trained_with_code` read it); a resume that trains records the new code too."""
    import json

    from mmccd import provenance
    from mmccd.config import load_config
    from mmccd.pipeline.runs import train_run

    run = run_copy("cyclic-unet")
    before = json.loads((run / "run_info.json").read_text())
    monkeypatch.setattr(provenance, "code_version", lambda: "later-code")
    cfg = load_config(small_preset, {"method": "cyclic-unet", "train": {"iterations": 20, "checkpoint_every": 5}})
    train_run(prepared, run, cfg, resume=True)
    after = json.loads((run / "run_info.json").read_text())
    assert after["code_version"] == before["code_version"] != "later-code"
    assert after["time"] == before["time"] and after["train_seconds"] == before["train_seconds"]
    # a run recorded before run_info named the processor: a resume that trains nothing must not name this one
    (run / "run_info.json").write_text(json.dumps({k: v for k, v in after.items() if k != "cpu"}))
    train_run(prepared, run, cfg, resume=True)
    assert "cpu" not in json.loads((run / "run_info.json").read_text())
    longer = load_config(small_preset, {"method": "cyclic-unet", "train": {"iterations": 25, "checkpoint_every": 5}})
    train_run(prepared, run, longer, resume=True)
    after = json.loads((run / "run_info.json").read_text())
    assert after["code_version"] == "later-code"
    assert after["code_version_by_net"] == {"source_to_target": "later-code", "target_to_source": "later-code"}
