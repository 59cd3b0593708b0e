"""What produced a result: code version, package versions, machine. Written into every run folder."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import mmccd


def code_version() -> str:
    """`git describe` of the source tree when it is a checkout (with -dirty), else the package version."""
    src = Path(mmccd.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "describe", "--always", "--dirty", "--tags"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        return f"{mmccd.__version__}+git.{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        return mmccd.__version__


def package_versions() -> dict[str, str]:
    names = ["torch", "numpy", "scipy", "nibabel", "scikit-learn", "matplotlib", "pyyaml", "tqdm"]
    versions = {}
    for n in names:
        try:
            versions[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            versions[n] = "not installed"
    return versions


def cpu_model() -> str:
    """The processor's model name (Linux /proc/cpuinfo, else `platform.processor()`): floating-point kernels, and
    so trained weights, can differ between CPUs under the same code, seed and torch build."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_info() -> dict[str, Any]:
    import torch

    return {
        "code_version": code_version(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernel set torch picked (e.g. AVX512)
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
