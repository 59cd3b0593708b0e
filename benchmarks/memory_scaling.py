"""Peak memory of `mmccd prepare`, `train` and `score` for N vs 2N cases: does it grow with the data set?

Each stage runs in a fresh process (`mmccd.cli.main`, one thread, `--workers 1` so that every case passes
through the measured process) while a thread samples /proc/self/status every 10 ms:

  peak RSS   VmHWM: everything resident, including memory-mapped store pages and shared libraries
  peak anon  the largest RssAnon seen: the process's own memory (arrays, tensors, Python objects)
  anon@end   RssAnon when the stage is done: what stays after every case (growth per case would show here)
  file@end   RssFile at the end: mapped files (torch's libraries ~100 MB, store pages the kernel may drop)

Peaks are maxima over cases, so 2N cases can peak a little higher than N (a larger volume among them)
without anything accumulating; anon@end tells the two apart.

Data: the real BraTS cases in ../shared/data/brats (or $MMCCD_REAL_DATA) when present, else SYNTHETIC
phantom cases. `train` runs enough steps to see every training slice at least once for both sizes;
`score` scores the N or 2N cases with the run trained on N.

    nice -n 19 python benchmarks/memory_scaling.py              # 9 vs 18 cases
    python benchmarks/memory_scaling.py --cases 3 --synthetic   # a quick trial
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REAL = Path(os.environ.get("MMCCD_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "brats"))
PRESET = """\
name: memory
prepare: {{size: {size}, workers: 1}}
network: {{base_channels: 16, channel_mult: [1, 2, 2], num_res_blocks: 1, attention_resolutions: [],
          num_head_channels: 16, dropout: 0.0}}
train: {{iterations: {iterations}, batch_size: 16, lr: 0.001, checkpoint_every: 1000, log_every: 50}}
device: cpu
"""


# ---------------------------------------------------------------- child: one stage, measured


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) // 1024  # MB
    return out


def child(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    peak_anon = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_anon
        while not done.is_set():
            peak_anon = max(peak_anon, _status()["RssAnon"])
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    from mmccd.cli import main

    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    end = _status()
    print(json.dumps({"code": code, "peak_rss": end["VmHWM"], "peak_anon": max(peak_anon, end["RssAnon"]),
                      "anon_end": end["RssAnon"], "file_end": end["RssFile"], "seconds": round(seconds, 1)}))


# ---------------------------------------------------------------- parent


def measure(argv: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, env=env)
    lines = [s for s in proc.stdout.splitlines() if s.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"stage failed: mmccd {' '.join(argv)}\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1])
    if result["code"] != 0:
        sys.exit(f"mmccd {' '.join(argv)} exited {result['code']}\n{proc.stderr[-3000:]}")
    return result


def case_folders(root: Path, n: int, synthetic: bool) -> list[Path]:
    if not synthetic and REAL.is_dir():
        cases = sorted(p for p in REAL.iterdir() if p.is_dir())
        if len(cases) >= n:
            return cases[:n]
        print(f"only {len(cases)} real cases in {REAL}: using SYNTHETIC phantom cases")
    from mmccd.data.phantom import write_phantom_dataset

    return write_phantom_dataset(root / "phantom", n_cases=n, seed=0, shape=(160, 160, 110))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=9, help="N: compare N and 2N cases (default 9)")
    ap.add_argument("--size", type=int, default=64, help="prepared slice size (default 64)")
    ap.add_argument("--synthetic", action="store_true", help="use SYNTHETIC phantom cases even if real data exist")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="mmccd-memory-") as tmp:
        root = Path(tmp)
        all_cases = case_folders(root, 2 * args.cases, args.synthetic)
        kind = "SYNTHETIC phantom" if "phantom" in str(all_cases[0]) else f"real ({REAL})"
        print(f"data: {kind}, {len(all_cases)} cases; slices {args.size} px; one thread; --workers 1\n")
        rows = []
        stores, presets = {}, {}
        for n in (args.cases, 2 * args.cases):
            data = root / f"data{n}"
            data.mkdir()
            for c in all_cases[:n]:
                (data / c.name).symlink_to(c.resolve())
            stores[n] = root / f"prepared{n}"
            rows.append(("prepare", n, measure(["--quiet", "prepare", "--data", str(data), "--out", str(stores[n]),
                                                "--size", str(args.size), "--workers", "1"])))
        # enough steps for one pass over the larger store's training slices
        big = stores[2 * args.cases]
        n_train = sum(len(json.loads((big / "cases" / c / "meta.json").read_text())["train_slices"])
                      for c in json.loads((big / "splits.json").read_text())["train"])
        iterations = max(20, n_train // 16 + 1)
        for n in stores:
            presets[n] = root / f"preset{n}.yaml"
            presets[n].write_text(PRESET.format(size=args.size, iterations=iterations))
            rows.append((f"train ({iterations} steps)", n, measure(
                ["--quiet", "train", "--prepared", str(stores[n]), "--out", str(root / f"run{n}"), "--preset",
                 str(presets[n]), "--method", "cyclic-unet"])))
        for n in stores:
            rows.append(("score", n, measure(["--quiet", "score", "--run", str(root / f"run{args.cases}"),
                                              "--case", str(root / f"data{n}"), "--out", str(root / f"maps{n}"),
                                              "--threshold", "0.5"])))

    print(f"{'stage':22s} {'cases':>5s} {'peak RSS MB':>11s} {'peak anon MB':>12s} {'anon@end MB':>11s} "
          f"{'file@end MB':>11s} {'seconds':>8s}")
    for stage, n, r in rows:
        print(f"{stage:22s} {n:5d} {r['peak_rss']:11d} {r['peak_anon']:12d} {r['anon_end']:11d} {r['file_end']:11d} "
              f"{r['seconds']:8.1f}")
    print("\npeak anon = the process's own memory (RssAnon); peak RSS adds memory-mapped store pages and "
          "shared libraries,\nwhich the kernel can drop under pressure.")


if __name__ == "__main__":
    main()
