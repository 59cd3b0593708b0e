"""The skull-stripping guard rail (`mmccd.data.raw.skull`) on real skull-stripped volumes and on synthetic heads.

For every contrast of every case under the given folders (default: $MMCCD_REAL_DATA and
$MMCCD_UNLABELED_DATA) prints the non-zero volume (litres), the bright-ring measure (ml, fraction of
the bright voxels) and whether `looks_skull_stripped` fires; then the same for a SYNTHETIC head made
from the T1 of the first --heads cases (`rawlike.add_head`: a 4 mm dark gap, a 6 mm bright shell, with and
without background noise). Ends with the ranges and the counts.

    python benchmarks/skull_check.py
    python benchmarks/skull_check.py --folders /data/BraTS2021 --heads 4
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def main() -> None:
    from mmccd.data.raw.rawlike import add_head
    from mmccd.data.raw.reading import contrast_of
    from mmccd.data.raw.skull import looks_skull_stripped, nonzero_litres, ring_measure

    default = [os.environ.get("MMCCD_REAL_DATA"), os.environ.get("MMCCD_UNLABELED_DATA")]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folders", nargs="+", type=Path, default=[Path(d) for d in default if d])
    ap.add_argument("--heads", type=int, default=4, help="synthetic heads made from this many cases")
    args = ap.parse_args()
    files = sorted(f for d in args.folders for f in d.glob("*/*.nii*") if "seg" not in f.name)
    if not files:
        raise SystemExit("no NIfTI files: pass --folders or set MMCCD_REAL_DATA")
    rows, fired, seconds = [], [], []
    for f in files:
        img = nib.load(str(f))
        data = img.get_fdata(dtype=np.float32)
        t = time.perf_counter()
        warning = looks_skull_stripped(data, img.affine, f)
        seconds.append(time.perf_counter() - t)
        litres, (ring_ml, frac) = nonzero_litres(data, img.affine), ring_measure(data, img.affine)
        rows.append((litres, ring_ml, frac))
        fired += [warning] if warning else []
        print(f"{f.name:40s} non-zero {litres:.2f} l  ring {ring_ml:6.1f} ml ({100 * frac:4.1f} %)  "
              f"{'WARNS' if warning else 'ok'}", flush=True)
    a = np.asarray(rows)
    print(f"\n{len(files)} real volumes: non-zero {a[:, 0].min():.2f}-{a[:, 0].max():.2f} l, ring at most "
          f"{a[:, 1].max():.1f} ml ({100 * a[:, 2].max():.1f} %), warnings {len(fired)}; median "
          f"{1000 * float(np.median(seconds)):.0f} ms per volume")
    heads = []
    for f in [f for f in files if contrast_of(f.name) == "t1"][: args.heads]:
        img = nib.load(str(f))
        data = img.get_fdata(dtype=np.float32)
        for noise in (0.0, 0.02):
            head = add_head(data, img.header.get_zooms(), noise=noise)
            ring_ml, frac = ring_measure(head, img.affine)
            warning = looks_skull_stripped(head, img.affine, "head")
            heads.append(warning is not None)
            print(f"head of {f.name:32s} noise {noise:.2f}: non-zero {nonzero_litres(head, img.affine):.2f} l  "
                  f"ring {ring_ml:6.1f} ml ({100 * frac:4.1f} %)  {'WARNS' if warning else 'MISSED'}")
    print(f"synthetic heads: {sum(heads)} of {len(heads)} warned")


if __name__ == "__main__":
    main()
