"""benchmarks/gpu_check.py works before device time is spent on it: the whole check at --tiny sizes on the CPU,
a part killed at its time box, and the table's verdicts from made-up results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark_scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def _check(out: Path, *args: str, timeout: float = 400) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--device", "cpu", "--tiny", *args],
                          capture_output=True, text=True, env=ENV, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), proc.stdout


def _gpu_check():
    return load_script("gpu_check")


@pytest.mark.slow
def test_the_tiny_check_runs_every_part_on_the_cpu(tmp_path: Path) -> None:
    """Every part runs at tiny sizes; a bad --store breaks only the real-data part."""
    report, printed = _check(tmp_path / "out", "--store", str(tmp_path / "not-a-store"))
    rows = {r["check"]: r for r in report["rows"]}
    parts = report["parts"]
    assert set(parts) == {"tests", "train", "score", "volume", "torchrun", "compile", "real"}
    assert rows["device tests (pytest -m gpu, MMCCD_TEST_DEVICE=cpu)"]["verdict"] == "pass"
    assert rows["torchrun --nproc_per_node 1, train"]["verdict"] == "pass"
    train = parts["train"]["measures"]
    for net in ("source_to_target", "target_to_source"):
        for variant in ("fp32", "bf16", "bf16 + channels_last"):
            assert train[f"{net} {variant}"]["steps_per_s"] > 0
        assert "--tiny" in parts["compile"]["measures"][f"{net} bf16 + channels_last + compile"]["skipped"]
    score = parts["score"]["measures"]
    assert all(m["s_per_slice"] > 0 for m in score.values()) and len(score) == 4
    assert parts["volume"]["measures"]["mmccd score (fresh process) #1"]["rc"] == 0
    assert parts["volume"]["measures"]["mmccd score stages (warm process)"]["slices_scored"] > 0
    assert "projected" in " ".join(rows) and all(r["verdict"] != "error" for c, r in rows.items() if "real" not in c)
    real = rows["real data: short MMCCD run + `mmccd evaluate` (fast)"]
    assert real["verdict"] == "error" and "not a prepared store" in real["measured"]
    assert "| check | measured | target | verdict |" in printed
    assert (tmp_path / "out" / "gpu_check.md").read_text().count("\n| ") == len(report["rows"]) + 1


def test_a_part_past_its_time_box_is_killed_with_its_children(tmp_path: Path) -> None:
    """The time box kills the part's whole process group (pytest, torchrun, loader workers under it), and a
    measurement it had not finished is reported as timed out, the finished ones kept."""
    gpu_check = _gpu_check()
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    status = gpu_check._run_isolated([sys.executable, "-c", code], tmp_path / "part.log", timeout=3)
    assert status.startswith("timed out after 3 s")
    grandchild = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # the kernel reaps it shortly after the kill
            os.kill(grandchild, 0)
            time.sleep(0.1)
    (tmp_path / "part.json").write_text(json.dumps({"part": "train", "status": "running", "measures": {
        "a": {"steps_per_s": 3.0}, "b": {"running": True}}}))
    data = gpu_check._read_part(tmp_path / "part.json", "train", status, tmp_path / "part.log")
    assert data["status"] == "timed out" and data["measures"]["a"] == {"steps_per_s": 3.0}
    assert data["measures"]["b"]["error"].startswith("timed out")
    missing = gpu_check._read_part(tmp_path / "none.json", "score", "exited with 1", tmp_path / "part.log")
    assert missing["status"] == "error" and "no results written" in missing["error"]


def test_verdicts_say_how_far_from_the_target() -> None:
    gpu_check = _gpu_check()
    train = {"source_to_target bf16": {"steps_per_s": 30.0, "hours_per_100k": 0.9, "peak_gib": 3.1, "batch": 32,
                                       "size": 128},
             "target_to_source bf16": {"steps_per_s": 10.0, "hours_per_100k": 2.8, "peak_gib": 2.0, "batch": 32,
                                       "size": 128},
             "source_to_target fp32": {"steps_per_s": 8.0, "hours_per_100k": 3.5, "peak_gib": 5.0, "batch": 32,
                                       "size": 128},
             "target_to_source fp32": {"error": "RuntimeError: CUDA out of memory\nmore"}}
    results = {"train": {"measures": train}, "volume": {"status": "error", "error": "exited with 1", "measures": {}}}
    rows = {r["check"]: r for r in gpu_check.table_rows(results, tiny=False, device="cuda")}
    assert rows["training, masked diffusion (forward), bf16"]["verdict"] == "pass (1.5× the target)"
    assert rows["training, backward UNet, bf16"]["verdict"] == "FAIL (0.50× the target: needs 2.0× faster)"
    assert rows["training, masked diffusion (forward), fp32"]["verdict"].startswith("info")
    oom = rows["training, backward UNet, fp32"]
    assert oom["verdict"] == "error" and oom["measured"] == "error: RuntimeError: CUDA out of memory"
    assert rows["device tests (pytest -m gpu tests/gpu)"]["measured"] == "not run"  # a part that never ran
    assert rows["torchrun --nproc_per_node 1, train"]["verdict"] == "FAIL"
    assert gpu_check._ratio_verdict(5.0, 10.0, higher_is_better=False, tiny=False) == "pass (2.0× the target)"
