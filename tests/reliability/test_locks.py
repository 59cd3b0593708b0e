"""Issue 17.4: one writer per output folder. A second `prepare`, `train`, `score` or `benchmark` on a folder that a
live process writes (or on a folder inside it) refuses at once, naming the process and the folder; the lock of a
process that is gone is taken over with a warning; one written on another machine is refused with how to
remove it; the lock goes with the process (also on an exception or Ctrl-C); the benchmark's own job processes
are not blocked by their parent's lock, and under torchrun only rank 0 takes it."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from reliability_helpers import SUBPROCESS_ENV, JobSpec, lock_run_and_record, one_error_line

import mmccd.distributed as distributed
import mmccd.locks as locks
from mmccd.locks import LOCK_NAME, FolderLockedError, folder_lock
from mmccd.pipeline.benchmark.jobs import run_all

TRAIN = ("train", "--method", "cyclic-unet", "--set", "train.iterations=20", "--set", "train.checkpoint_every=5")
# `mmccd train` that stops for a long while after its first checkpoint: a live writer of its run folder
TRAIN_THEN_WAIT = textwrap.dedent("""
    import sys, time
    import mmccd.training as training

    real = training.save_checkpoint

    def save_then_wait(*args, **kwargs):
        real(*args, **kwargs)
        print("checkpoint written", flush=True)
        time.sleep(600)

    training.save_checkpoint = save_then_wait
    from mmccd.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _lock(folder: Path, **fields) -> Path:
    """A lock file written by hand (another process's)."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"pid": 1, "host": socket.gethostname(), "command": "mmccd prepare --data d --out o", "stage": "prepare",
              "started": "2025-01-01T00:00:00+0000", "token": "someone-else", "pid_start": None, **fields}
    (folder / LOCK_NAME).write_text(json.dumps(record))
    return folder / LOCK_NAME


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (the kernel hands pids out in order, not again at once)


def test_a_second_writer_is_refused_and_the_lock_of_a_killed_writer_is_taken_over(
        prepared, small_preset, phantom, runs, run_cli, tmp_path, caplog):
    run = tmp_path / "run"
    argv = (*TRAIN, "--prepared", prepared, "--preset", small_preset, "--out", run)
    first = subprocess.Popen([sys.executable, "-c", TRAIN_THEN_WAIT, *map(str, argv)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=SUBPROCESS_ENV)
    try:
        assert first.stdout.readline().strip() == "checkpoint written"
        holder = json.loads((run / LOCK_NAME).read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        assert holder["command"].startswith("mmccd train") and str(run) in holder["command"]
        before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
        # every stage refuses at once, naming the process and the folder; nothing of the first is touched
        for second in (
            (*argv, "--resume"),
            (*argv, "--overwrite"),
            ("prepare", "--data", phantom, "--out", run, "--workers", "1"),
            ("benchmark", "--data", phantom, "--out", run, "--preset", small_preset),
        ):
            one_error_line(run_cli(*second), f"{run} is being written by process {first.pid} on this machine",
                           "mmccd train", f"kill {first.pid}", f"lock file {run / LOCK_NAME}")
        maps = run / "maps"  # a folder inside the one being written
        one_error_line(run_cli("score", "--run", runs["cyclic-unet"], "--case", phantom / "Phantom_00000", "--out",
                               maps), f"{maps} is inside {run}, which is being written by process {first.pid}")
        assert before == {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        first.stdout.close()

    # killed outright, it left its lock behind: the next run takes it over, says so, and resumes exactly
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == first.pid
    with caplog.at_level(logging.WARNING, logger="mmccd"):
        assert run_cli(*argv, "--resume").code == 0
    (warning,) = [r.getMessage() for r in caplog.records if "taking over the lock" in r.getMessage()]
    assert f"process {first.pid}" in warning and "no longer running" in warning
    assert not (run / LOCK_NAME).exists()
    got, want = (torch.load(r / "checkpoints" / "target_to_source.pt", weights_only=True) for r in (run, runs["cyclic-unet"]))
    assert got["step"] == 20 and all(torch.equal(got["ema"][k], want["ema"][k]) for k in want["ema"])


def test_a_stale_lock_of_a_pid_that_does_not_exist_is_taken_over_with_a_warning(
        phantom, small_preset, prepared, run_cli, tmp_path, caplog):
    out = tmp_path / "store"
    pid = _dead_pid()
    _lock(out, pid=pid)
    with caplog.at_level(logging.WARNING, logger="mmccd"):
        result = run_cli("prepare", "--data", phantom, "--out", out, "--preset", small_preset, "--workers", "1")
    assert result.code == 0 and "prepared 4 case(s)" in result.out, result
    (warning,) = [r.getMessage() for r in caplog.records if "taking over the lock" in r.getMessage()]
    assert str(out / LOCK_NAME) in warning and f"process {pid}" in warning and "no longer running" in warning
    assert not (out / LOCK_NAME).exists() and (out / "splits.json").read_text() == (prepared / "splits.json").read_text()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times are read from /proc (Linux)")
def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path, caplog):
    lock = _lock(tmp_path / "out", pid=os.getpid(), pid_start="1")  # a live pid, started after the lock was written
    with caplog.at_level(logging.WARNING, logger="mmccd"), folder_lock(tmp_path / "out", "score"):
        assert json.loads(lock.read_text())["token"] != "someone-else"
    assert any("taking over the lock" in r.getMessage() for r in caplog.records)


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(phantom, run_cli, tmp_path):
    out = tmp_path / "store"
    lock = _lock(out, host="node17.cluster", pid=4242)
    one_error_line(run_cli("prepare", "--data", phantom, "--out", out, "--workers", "1"),
                   f"{out} is being written by process 4242 on host node17.cluster", "another machine",
                   f"if it is gone, delete {lock} and run again")
    assert [p.name for p in out.iterdir()] == [LOCK_NAME] and json.loads(lock.read_text())["pid"] == 4242


@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt])
def test_the_lock_goes_with_an_exception_and_ctrl_c(stop, tmp_path):
    with pytest.raises(stop), folder_lock(tmp_path / "out", "train"):
        assert (tmp_path / "out" / LOCK_NAME).exists()
        raise stop()
    assert not (tmp_path / "out").exists()  # created for the lock, empty again: removed
    assert locks.TOKENS_ENV not in os.environ  # nothing held: no token passed to processes started later


def test_benchmark_jobs_are_not_blocked_by_the_benchmarks_lock(tmp_path):
    """The benchmark holds its folder; its parallel jobs (other processes) each lock their own run inside it,
    which an unrelated process may not."""
    bench = tmp_path / "bench"
    specs = [JobSpec(bench / "runs" / name, name) for name in ("a", "b")]
    with folder_lock(bench, "benchmark"):
        run_all(bench / "prepared", specs, plan=None, jobs=2, threads=1, job=lock_run_and_record)
        other = subprocess.run(
            [sys.executable, "-c", "import sys; from mmccd.locks import folder_lock\n"
                                   "with folder_lock(sys.argv[1], 'train'): pass", str(specs[0].run)],
            capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=120)
    for spec in specs:
        job = json.loads((spec.run / "job.json").read_text())
        assert job["pid"] != os.getpid() and job["lock_pid"] == job["pid"]  # a worker process held its run
        assert not (spec.run / LOCK_NAME).exists()
    assert other.returncode != 0 and "FolderLockedError" in other.stderr
    assert f"is inside {bench}, which is being written by process {os.getpid()}" in other.stderr
    assert not (bench / LOCK_NAME).exists()


def test_under_torchrun_only_rank_0_takes_the_lock_and_every_rank_hears_a_refusal(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "dist_info", lambda: (1, 2))
    monkeypatch.setattr(distributed, "gather_objects", lambda own: [None, own])  # rank 0 got the lock
    with folder_lock(tmp_path / "out", "train"):
        assert not (tmp_path / "out" / LOCK_NAME).exists()
    refused = f"{tmp_path / 'out'} is being written by process 7 on this machine"
    monkeypatch.setattr(distributed, "gather_objects", lambda own: [refused, own])  # rank 0 was refused
    with pytest.raises(FolderLockedError, match="process 7"), folder_lock(tmp_path / "out", "train"):
        pytest.fail("rank 1 went on although rank 0 was refused")


def test_a_requeued_slurm_job_takes_over_the_lock_of_its_earlier_run_on_another_node(tmp_path, monkeypatch, caplog):
    """SLURM runs a job once at a time: a lock of the same job id with another restart count is of a run that is
    gone (preempted or requeued, on another node). Any other lock from another node is still refused."""
    monkeypatch.setenv("SLURM_JOB_ID", "81234")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _lock(tmp_path / "run", host="gpu-node-07", pid=4242, slurm_job="81234", slurm_restart="0")
    with caplog.at_level(logging.WARNING, logger="mmccd"), folder_lock(tmp_path / "run", "train"):
        assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["slurm_restart"] == "1"
    assert any("taking over the lock" in r.getMessage() and "gpu-node-07" in r.getMessage() for r in caplog.records)
    for other in ({"slurm_job": "81234", "slurm_restart": "1"}, {"slurm_job": "99999", "slurm_restart": "0"}):
        _lock(tmp_path / "other", host="gpu-node-07", pid=4242, **other)  # the same run, or another job
        with pytest.raises(FolderLockedError, match="another machine"), folder_lock(tmp_path / "other", "train"):
            pass


RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mmccd.locks import FolderLockedError, acquire, release

    folder, go = Path(sys.argv[1]), Path(sys.argv[2])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    try:
        record = acquire(folder, "train")
    except FolderLockedError:
        print("refused", flush=True)
    else:
        print("got", flush=True)
        time.sleep(1)  # held while the others try
        release(folder, record)
""")


@pytest.mark.parametrize("before", ["no lock", "a stale lock"])
def test_of_processes_starting_together_exactly_one_gets_the_lock(before, tmp_path):
    folder, go = tmp_path / "run", tmp_path / "go"
    if before == "a stale lock":  # every racer sees it stale and takes it over: still one winner
        _lock(folder, pid=_dead_pid())
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(folder), str(go)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=SUBPROCESS_ENV) for _ in range(4)]
    assert [racer.stdout.readline().strip() for racer in racers] == ["ready"] * 4
    go.touch()  # let go together
    results = [racer.communicate(timeout=120) for racer in racers]
    assert sorted(out.strip() for out, _ in results) == ["got", "refused", "refused", "refused"], results
    assert not (folder / LOCK_NAME).exists() and [p.name for p in folder.iterdir()] == []
