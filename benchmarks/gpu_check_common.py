"""Shared pieces of benchmarks/gpu_check_parts.py: what a part measures at, its JSON record, its inputs.

A `Part` writes its JSON (parts/<name>.json) after each measurement, so a part killed at its time box still
leaves what it measured; every `Part.measure` catches its own failure (the error text is recorded).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mmccd.config import ExperimentConfig, load_config, merge
from mmccd.data.batch import SliceBatch, collate_slices
from mmccd.data.dataset import SliceDataset
from mmccd.data.phantom import write_phantom_dataset
from mmccd.data.prepare import prepare_dataset
from mmccd.data.store import PreparedStore
from mmccd.runtime import resolve_device

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What a part measures at: the reference sizes on a GPU, or `--tiny` (seconds on one CPU core)."""

    preset: str = "gpu"  # reference networks and training, bf16, 4 loader workers
    batch_size: int = 32
    warmup: int = 10  # training steps excluded from the rate (cuDNN autotuning, loader start, compilation)
    timed: int = 30
    phantom_shape: tuple[int, int, int] = (96, 96, 64)  # training store: resized to the preset's 128 px
    phantom_cases: int = 6
    volume_shape: tuple[int, int, int] = (240, 240, 155)  # one BraTS-sized volume for `mmccd score`
    ref_steps: int = 10  # DDIM steps timed of the reference's 100 (extrapolated by network passes)
    ref_mask_batches: tuple[int, ...] = (32, 64, 128)
    fast_slices: int = 64
    fast_batches: tuple[tuple[int, int], ...] = ((16, 1), (16, 4), (16, 16))  # (mask_batch, slice_batch)
    torchrun_steps: int = 6
    cli_attempts: int = 2  # `mmccd score` in fresh processes (the first may pay for cold disk caches)
    warm_up: bool = True  # score the volume once untimed before timing it in a warm process


TINY = Sizes(preset="tiny", batch_size=8, warmup=1, timed=3, phantom_shape=(48, 48, 32), phantom_cases=4,
             volume_shape=(40, 40, 24), ref_steps=2, ref_mask_batches=(32,), fast_slices=4,
             fast_batches=((16, 1), (16, 4)), torchrun_steps=4, cli_attempts=1, warm_up=False)


class Part:
    """A part's results, written to `path` after every change: {"part", "status", "measures", "seconds"}."""

    def __init__(self, name: str, spec: dict[str, Any]):
        self.name, self.spec = name, spec
        self.path = Path(spec["out"]) / "parts" / f"{name}.json"
        self.work = Path(spec["out"]) / "work"
        self.sizes = TINY if spec["tiny"] else Sizes()
        self.device = resolve_device(spec["device"])
        self.deadline = float(spec["deadline"])  # time.time() by which the part must be done
        self.start = time.time()
        self.data: dict[str, Any] = {"part": name, "status": "running", "measures": {}, "seconds": 0.0}
        self.save()

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        self.data["seconds"] = round(time.time() - self.start, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)

    def measure(self, key: str, fn: Callable[[], dict[str, Any]], needs: float = 0.0) -> dict[str, Any] | None:
        """Run one measurement, recording its result or its error; skipped when less than `needs` s are left."""
        if self.left() < needs:
            self.data["measures"][key] = {"skipped": f"time budget: {self.left():.0f} s left, needs ~{needs:.0f} s"}
            self.save()
            return None
        self.data["measures"][key] = {"running": True}
        self.save()
        t0 = time.time()
        try:
            result = fn()
        except Exception as exc:  # one broken measurement must not lose the others
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.time() - t0, 1)
        self.data["measures"][key] = result
        self.save()
        return result

    def finish(self, status: str = "ok") -> None:
        errors = [k for k, v in self.data["measures"].items() if "error" in v]
        self.data["status"] = "error" if errors and status == "ok" else status
        self.save()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# ---------------------------------------------------------------- shared inputs


def config(part: Part, **overrides: Any) -> ExperimentConfig:
    """The preset (gpu, or tiny) for MMCCD on this device, batch size from the sizes, `overrides` on top."""
    base = {"method": "mmccd", "device": str(part.device), "train": {"batch_size": part.sizes.batch_size}}
    cfg = load_config(part.sizes.preset, base)
    return merge(cfg, overrides) if overrides else cfg


def ensure_store(part: Part) -> Path:
    """A prepared store of SYNTHETIC phantoms at the preset's size (made once per --out, reused)."""
    store = part.work / "store"
    if not (store / "splits.json").exists():
        phantom = part.work / "phantom"
        write_phantom_dataset(phantom, n_cases=part.sizes.phantom_cases, seed=3, shape=part.sizes.phantom_shape)
        prepare = dataclasses.replace(config(part).prepare, workers=min(4, os.cpu_count() or 1))
        prepare_dataset(phantom, store, prepare)
    return store


def store_slices(store: Path, cfg: ExperimentConfig, which: str, n: int) -> SliceBatch:
    """The first `n` slices (repeated when the store has fewer) of every case, as one CPU batch."""
    st = PreparedStore.open(store)
    ds = SliceDataset(st, st.case_ids, cfg.source, cfg.target, slices=which)
    return collate_slices([ds[i % len(ds)] for i in range(n)])


def peak_memory(part: Part) -> float | None:
    """GiB allocated at the peak since the last reset (torch.cuda.max_memory_allocated); None on a CPU."""
    if part.device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(part.device) / 2**30, 2)


def reset_peak(part: Part) -> None:
    if part.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(part.device)


def run_cli(args: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`python -m ...` in a fresh process: rc, wall seconds and the output's tail."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=max(1.0, timeout),
                              env=env or child_env(), cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        out = b"".join(x if isinstance(x, bytes) else str(x).encode() for x in (exc.stdout, exc.stderr) if x)
        return {"rc": None, "error": f"timed out after {timeout:.0f} s",
                "output": out.decode(errors="replace")[-2000:]}
    return {"rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 2),
            "output": (proc.stdout + proc.stderr)[-4000:]}


def child_env(**extra: str) -> dict[str, str]:
    """This environment with mmccd's src/ importable (a checkout that was not pip-installed works too)."""
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}
