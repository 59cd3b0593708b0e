"""A killed benchmark leaves no worker behind (`kill PID` of the benchmark, not only Ctrl-C of its terminal): its
`--jobs N` workers would otherwise go on training into the run folders that the next benchmark resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import sys, time
from pathlib import Path
from types import SimpleNamespace
from mmccd.pipeline.benchmark.jobs import run_all

def job(prepared, spec, plan):  # a worker that would run for a minute
    Path(spec.label).write_text(str(__import__("os").getpid()))
    time.sleep(60)

if __name__ == "__main__":  # a file, not `python -c`: spawned workers import the job from it
    out = Path(sys.argv[1])
    specs = [SimpleNamespace(run=out / f"run{i}", label=str(out / f"worker{i}.pid"), reuse=None, mirror=None, after=(),
                             shares_run=False) for i in range(2)]
    run_all(out, specs, None, jobs=2, threads=1, job=job)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_workers_end_when_the_benchmark_process_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "benchmark_like.py"
    script.write_text(CHILD)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    files = [tmp_path / f"worker{i}.pid" for i in range(2)]
    try:
        assert _wait_for(lambda: all(f.exists() and f.read_text() for f in files), 120), "the workers did not start"
        workers = [int(f.read_text()) for f in files]
        assert all(_alive(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)  # no handler can run: the workers must notice by themselves
        parent.wait(10)
        assert _wait_for(lambda: not any(_alive(pid) for pid in workers), 15), "workers outlived the benchmark"
    finally:
        if parent.poll() is None:
            parent.kill()
        if _group_alive(parent.pid):  # whatever is left of the test's own processes
            os.killpg(parent.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
