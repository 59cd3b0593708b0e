"""A whole 3D volume with `mmccd score`: end-to-end wall time per scoring preset (issue 6: <= 1 minute).

Per round and scoring preset (alternating, so load from other processes hits each alike):
  mmccd score    the CLI end to end in a fresh process: start-up, model load, prepare, score every
                 slice with brain, write the NIfTI map, mask and montage
  prepare/score  the same two stages timed in this process (prepare_case, score_prepared_case)

    .venv/bin/python benchmarks/speed_volume.py --run results/bench-cpu/runs/mmccd_flair-t2 \
        --case ../shared/data/brats/Brats18_2013_2_1 --scoring fast --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmccd.data.discovery import case_from_path
from mmccd.data.prepare import prepare_case
from mmccd.pipeline.runs import load_method
from mmccd.scoring import resolve_scoring
from mmccd.scoring.volume import score_prepared_case


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--case", type=Path, required=True, help="a case folder (or a NIfTI of the source contrast)")
    p.add_argument("--scoring", nargs="+", default=["fast"],
                   help="scoring presets (default: fast; `run` = the run's own, ~10x slower on a cpu-preset run)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch intra-op threads, here and in the CLI (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    mmccd = str(Path(sys.executable).with_name("mmccd"))
    base = load_method(args.run)
    run_cfg = base.cfg
    case = case_from_path(args.case)
    res: dict[str, dict[str, list[float]]] = {s: {"cli": [], "prepare": [], "score": []} for s in args.scoring}
    slices = 0
    for r in range(args.rounds):
        for scoring in args.scoring:
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                subprocess.run([mmccd, "--quiet", "score", "--run", str(args.run), "--case", str(args.case), "--out", out,
                                "--scoring", scoring], check=True, env=env, stdout=subprocess.DEVNULL)
                res[scoring]["cli"].append(time.perf_counter() - start)
            settings = resolve_scoring(run_cfg, scoring)
            start = time.perf_counter()
            prepared = prepare_case(case, run_cfg.prepare)
            res[scoring]["prepare"].append(time.perf_counter() - start)
            start = time.perf_counter()
            score_prepared_case(base, settings, prepared)
            res[scoring]["score"].append(time.perf_counter() - start)
            slices = len(prepared.meta["slice_indices"])
            print(f"round {r + 1} {scoring:10s} " + "  ".join(f"{k} {v[-1]:.1f} s" for k, v in res[scoring].items()),
                  flush=True)
    print(f"\n{case.case_id}: {slices} slices with brain at {run_cfg.prepare.size} px, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} alternating rounds\n")
    print("| scoring | network passes / volume | `mmccd score` s | prepare s | score s |")
    print("|---|---:|---:|---:|---:|")
    for scoring, v in res.items():
        settings = resolve_scoring(run_cfg, scoring)
        passes = base.network_evaluations(settings, slices) if hasattr(base, "network_evaluations") else 2 * slices
        print(f"| {scoring} | {passes:,} | {statistics.median(v['cli']):.1f} | {statistics.median(v['prepare']):.1f} | "
              f"{statistics.median(v['score']):.1f} |")


if __name__ == "__main__":
    main()
