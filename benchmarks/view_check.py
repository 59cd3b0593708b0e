"""Write the case view of a real BraTS case and check it in a headless browser; print what it saw.

    python benchmarks/view_check.py                       # first case of $MMCCD_REAL_DATA (or ../shared/data/brats)
    python benchmarks/view_check.py --case Brats18_2013_23_1 --out results/view-check \
        --docs-image docs/images/case_view.png            # also a small screenshot for the README

The anomaly map is a STAND-IN, not any method's output: the FLAIR intensity normalised by its brain's
1st-99th percentiles (FLAIR thresholding, the simplest baseline), titled as such on the page. The
"prediction" is that map >= 0.9, the ground truth is the case's segmentation (label > 0); T2 is offered as a
second background.

Needs a Chrome or Chromium binary and installs nothing. On Debian/Ubuntu: ``apt-get install chromium``
(as root; or set MMCCD_BROWSER to another binary). WebGL2 runs on the CPU (SwiftShader): no GPU, no display.
Exit status 0 when the page loaded, drew all three views and reported no error; 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from mmccd.evaluation.browser import check_page, find_browser, image_spread
from mmccd.evaluation.viewer import case_view_name, write_case_view

THRESHOLD = 0.9  # on the normalised FLAIR: a stand-in for a validation threshold


def _case_files(root: Path, case: str | None) -> tuple[str, dict[str, Path]]:
    cases = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not cases:
        sys.exit(f"no case folders in {root}; set MMCCD_REAL_DATA or pass --data (BraTS folders with *_flair.nii.gz)")
    folder = next((p for p in cases if p.name == case), None) if case else cases[0]
    if folder is None:
        sys.exit(f"no case {case!r} in {root}; found {', '.join(p.name for p in cases[:5])}, ...")
    files = {m: next(iter(folder.glob(f"*_{m}.nii*")), None) for m in ("flair", "t2", "seg")}
    missing = [m for m, p in files.items() if p is None]
    if missing:
        sys.exit(f"{folder}: no *_{'/'.join(missing)}.nii.gz file")
    return folder.name, {m: p for m, p in files.items() if p is not None}


def _small_png(src: Path, dst: Path, width: int = 1000) -> int:
    """`src` scaled to `width` px (a README image, ~200 KB); returns its size in bytes."""
    from PIL import Image  # Pillow comes with matplotlib

    img = Image.open(src).convert("RGB")
    img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)  # full colour: a 256-colour palette merges the two outline colours
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(buf.getvalue())
    return len(buf.getvalue())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("MMCCD_REAL_DATA", "../shared/data/brats")))
    ap.add_argument("--case", help="case folder name (default: the first)")
    ap.add_argument("--out", type=Path, default=Path("results/view-check"))
    ap.add_argument("--docs-image", type=Path, help="also write a small copy of the screenshot here")
    args = ap.parse_args()

    case, files = _case_files(args.data, args.case)
    flair = nib.load(files["flair"])
    data = np.asanyarray(flair.dataobj).astype(np.float32)
    brain = data > 0
    lo, hi = np.percentile(data[brain], [1, 99])
    stand_in = np.where(brain, np.clip((data - lo) / (hi - lo), 0, None), 0).astype(np.float32)
    gt = np.asanyarray(nib.load(files["seg"]).dataobj) > 0

    t0 = time.perf_counter()
    page = write_case_view(args.out / case_view_name(case), flair, stand_in, THRESHOLD, stand_in >= THRESHOLD, gt,
                           f"{case} — STAND-IN map: normalised FLAIR intensity (not a method's output)",
                           {"T2": nib.load(files["t2"])}, input_label="FLAIR (input)")
    seconds = time.perf_counter() - t0
    print(f"case view: {page} ({page.stat().st_size / 1e6:.2f} MB, {flair.shape}, written in {seconds:.1f} s)")

    browser = find_browser()
    if browser is None:
        print("no Chrome/Chromium found: apt-get install chromium (or set MMCCD_BROWSER); page written, not checked")
        return 1
    t0 = time.perf_counter()
    shot = args.out / f"{case}_view.png"
    check = check_page(page, shot, browser=browser, window=(1400, 650))  # the page, without empty space below
    colours, spread = image_spread(shot)
    print(f"browser: {browser}, {time.perf_counter() - t0:.1f} s (WebGL2 on the CPU; a GPU browser is instant)")
    print(f"state: {check.state} — {check.status_text}")
    print(f"non-black pixels per view (axial, coronal, sagittal): {check.drawn}")
    print(f"read-out at the start voxel: {check.readout}")
    print(f"screenshot: {shot} ({colours} colours, grey std {spread:.1f})")
    print(f"errors: {check.errors or 'none'}")
    if args.docs_image is not None:
        print(f"docs image: {args.docs_image} ({_small_png(shot, args.docs_image) / 1e3:.0f} KB)")
    return 0 if check.ok and colours > 50 else 1


if __name__ == "__main__":
    sys.exit(main())
