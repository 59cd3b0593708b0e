"""Preparing a case vs nibabel decoding its files (issue 6: prepare <= 2x the decode time).

For each case, interleaved in rounds (decode, decode float, prepare, prepare + write, decode, ...):
  decode        nibabel: `np.asarray(nib.load(f).dataobj)` for every file of the case (gunzip + array)
  decode float  nibabel: `nib.load(f).get_fdata(dtype=float32)` (the decode plus the float conversion)
  prepare       `mmccd.data.prepare.prepare_case`: load, validate, brain mask, percentile normalisation,
                slice selection, crop + resize of all contrasts (in memory)
  + write       prepare_case, then `write_case` into a temporary store (what `mmccd prepare` does per case)

    .venv/bin/python benchmarks/speed_prepare.py --data ../shared/data/brats --cases 3 --preset cpu

Real BraTS cases from --data (default ../shared/data/brats when present), else a synthetic phantom.
Median over rounds per case, then over cases; compare the ratios (the machine may be shared).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from mmccd.config import PrepareConfig, load_config
from mmccd.data.discovery import Case, find_cases
from mmccd.data.prepare import prepare_case
from mmccd.data.store import write_case

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats"
KINDS = ("decode", "decode float", "prepare", "prepare + write")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def prepare_and_write(case: Case, cfg: PrepareConfig, root: Path) -> None:
    pc = prepare_case(case, cfg)
    write_case(root, case.case_id, pc.images, pc.brain, pc.seg, pc.meta)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help=f"folder of case folders (default {DEFAULT_DATA} if present, else a phantom)")
    p.add_argument("--cases", type=int, default=3, help="cases to time (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--preset", default="cpu", help="preset whose prepare section is used (default cpu)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.preset).prepare
    tmp = Path(tempfile.mkdtemp(prefix="mmccd-speed-prepare-"))
    try:
        data = args.data or (DEFAULT_DATA if DEFAULT_DATA.exists() else None)
        if data is None:
            from mmccd.data.phantom import write_phantom_dataset

            data = tmp / "phantom"
            write_phantom_dataset(data, n_cases=args.cases, seed=0)
            print("no real data: timing a SYNTHETIC phantom")
        cases = find_cases(data)[: args.cases]
        per_case: dict[str, dict[str, float]] = {}
        for case in cases:
            files = list(case.files.values())
            runs: dict[str, Callable[[], object]] = {
                "decode": lambda files=files: [np.asarray(nib.load(f).dataobj) for f in files],
                "decode float": lambda files=files: [nib.load(f).get_fdata(dtype=np.float32) for f in files],
                "prepare": lambda case=case: prepare_case(case, cfg),
                "prepare + write": lambda case=case: prepare_and_write(case, cfg, tmp / "store"),
            }
            times: dict[str, list[float]] = {k: [] for k in KINDS}
            for _ in range(args.rounds):
                for k in KINDS:
                    times[k].append(timed(runs[k]))
            per_case[case.case_id] = {k: statistics.median(v) for k, v in times.items()}
            mb = sum(Path(f).stat().st_size for f in files) / 2**20
            row = "  ".join(f"{k} {v:.2f} s" for k, v in per_case[case.case_id].items())
            print(f"{case.case_id} ({len(files)} files, {mb:.0f} MB): {row}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(c[k] for c in per_case.values()) for k in KINDS}
    ratio = {k: statistics.median(c[k] / c["decode"] for c in per_case.values()) for k in KINDS}
    print(f"\n{len(cases)} case(s) of {data}, preset {args.preset} ({cfg.size} px), {torch.get_num_threads()} "
          f"threads, median of {args.rounds} interleaved rounds per case, then over cases\n")
    print("| step | s / case | × nibabel decode |")
    print("|---|---:|---:|")
    for k in KINDS:
        print(f"| {k} | {med[k]:.2f} | {ratio[k]:.2f} |")


if __name__ == "__main__":
    main()
