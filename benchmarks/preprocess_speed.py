"""What each step of `mmccd preprocess` costs on a whole 4-contrast case (prints; not a timed test).

From real BraTS cases a SYNTHETIC raw-like case is made first (`mmccd.data.raw.rawlike.make_rawlike`:
each contrast moved by a known rigid transform and resampled to 0.9 x 0.9 x 3 mm and other grids, int16
files with hospital-like names), then `preprocess_case` runs on it with the default settings (deepbet
brain extraction, QC montage) and the seconds of each step (from preprocess.json) are printed, with the
wall time of the whole call. Each case runs --repeats times into a fresh folder; medians are printed.

    python benchmarks/preprocess_speed.py                       # 2 cases x 2 repeats, 2 threads
    python benchmarks/preprocess_speed.py --cases 4 --brain none
    nice -n 19 python benchmarks/preprocess_speed.py --threads 1

Needs `pip install 'mmccd[preprocess]'` and the BraTS folder ($MMCCD_REAL_DATA).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

NAMES = {"t1": "T1w.nii.gz", "t1ce": "t1_GD.nii.gz", "t2": "T2_tse.nii.gz", "flair": "AX_FLAIR.nii.gz"}


def main() -> None:
    from mmccd.data.raw.pipeline import PreprocessConfig, preprocess_case
    from mmccd.data.raw.rawlike import make_rawlike
    from mmccd.paths import real_data_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=real_data_dir(), help="BraTS folder (default $MMCCD_REAL_DATA)")
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--brain", default="deepbet", choices=("deepbet", "hd-bet", "none"))
    args = ap.parse_args()
    if args.data is None:
        raise SystemExit("no BraTS folder: pass --data or set MMCCD_REAL_DATA")

    t = time.perf_counter()
    import SimpleITK  # noqa: F401  (import costs are counted once, here)

    if args.brain == "deepbet":
        from mmccd.data.raw.brain import _deepbet_model

        _deepbet_model(True)
    print(f"imports + model load: {time.perf_counter() - t:.1f} s (once per process)")

    folders = sorted(p for p in args.data.iterdir() if p.is_dir())
    pick = np.unique(np.linspace(0, len(folders) - 1, min(args.cases, len(folders))).round().astype(int))
    steps: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="mmccd-speed-") as tmp:
        for i in pick:
            folder = folders[i]
            vols = {}
            for c in NAMES:
                img = nib.load(str(folder / f"{folder.name}_{c}.nii.gz"))
                vols[c], affine = img.get_fdata(dtype=np.float32), img.affine
            raw = Path(tmp) / "raw" / folder.name
            raw.mkdir(parents=True)
            for c, img in make_rawlike(vols, affine).images.items():
                nib.save(img, str(raw / NAMES[c]))
            for r in range(args.repeats):
                t = time.perf_counter()
                case = preprocess_case(raw, Path(tmp) / f"out{r}" / folder.name,
                                       PreprocessConfig(brain=args.brain, threads=args.threads))
                wall = time.perf_counter() - t
                sec = dict(case.record["seconds"], total=wall)
                for k, v in sec.items():
                    steps.setdefault(k, []).append(v)
                grid = "x".join(str(s) for s in case.record["grid"]["shape"])
                print(f"{folder.name} run {r + 1}: grid {grid}, " + ", ".join(f"{k} {v:.1f}" for k, v in sec.items()),
                      flush=True)
    print(f"\nmedian seconds over {len(steps['total'])} run(s), {args.threads} thread(s), brain {args.brain}:")
    for k, v in steps.items():
        print(f"  {k:16s} {statistics.median(v):6.1f}   (min {min(v):.1f}, max {max(v):.1f})")


if __name__ == "__main__":
    main()
