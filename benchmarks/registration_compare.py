"""Rigid co-registration on raw-like cases: SimpleITK (mmccd's choice) vs ANTsPy, speed and accuracy.

From each real BraTS case a SYNTHETIC raw-like case is made (`mmccd.data.raw.rawlike.make_rawlike`:
every contrast moved by a known rigid transform of 4-8 degrees and 5-10 mm, resampled to its own grid:
T1 0.9 x 0.9 x 3 mm RAS, T1ce 1 x 1 x 2 mm LAS, T2 0.9 x 3 x 0.9 mm RPI, FLAIR 0.9 x 0.9 x 3 mm PRS).
T1ce, T2 and FLAIR are registered to T1; the error is the largest displacement between the found and
the true transform over the brain voxels both scans cover (mm), and the rotation between them (deg).
Libraries run in turns per case (A B A B ...) so that the load of a shared machine hits both alike.

    python benchmarks/registration_compare.py --cases 26             # SimpleITK only
    python benchmarks/registration_compare.py --cases 6 --ants       # + ANTsPy (pip install antspyx)
    python benchmarks/registration_compare.py --cases 8 --similarity # NMI at the truth vs off it
    python benchmarks/registration_compare.py --self --names Brats18_CBICA_ABM_1 Brats18_TCIA03_265_1

--self registers the BraTS files themselves (T1ce, T2, FLAIR to T1, all on one grid: the truth is the
identity) and prints how far the optimum lies from BraTS's own alignment; --names picks cases by name.
--similarity prints the normalised mutual information (register.nmi_on_grid) at the true transform
and at transforms that are off by 5 / 15 mm, 10 / 180 degrees: how MIN_NMI was chosen.
Threads: --threads (default 2) for both libraries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def load_case(folder: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    vols = {}
    for c in ("t1", "t1ce", "t2", "flair"):
        img = nib.load(str(folder / f"{folder.name}_{c}.nii.gz"))
        vols[c], affine = img.get_fdata(dtype=np.float32), img.affine
    return vols, affine


def brain_points(vols: dict[str, np.ndarray], affine: np.ndarray, contrast: str, motion: np.ndarray) -> np.ndarray:
    """World points (fixed raw world) of every 300th brain voxel that both T1 and `contrast` cover."""
    vox = np.argwhere((vols["t1"] > 0) & (vols[contrast] > 0))[::300]
    world = vox @ affine[:3, :3].T + affine[:3, 3]
    return world @ motion[:3, :3].T + motion[:3, 3]


def sitk_register(fixed: nib.Nifti1Image, moving: nib.Nifti1Image, threads: int) -> np.ndarray:
    from mmccd.data.raw.register import register_rigid

    return register_rigid(np.asarray(fixed.dataobj, dtype=np.float32), fixed.affine,
                          np.asarray(moving.dataobj, dtype=np.float32), moving.affine, threads=threads).transform


def ants_register(fixed: nib.Nifti1Image, moving: nib.Nifti1Image, threads: int, fast: bool) -> np.ndarray:
    """ANTsPy rigid registration; returns the fixed -> moving world transform (RAS)."""
    import ants

    from mmccd.data.raw.geometry import LPS_FLIP, ras_to_lps

    def to_ants(img: nib.Nifti1Image):
        lps = LPS_FLIP @ img.affine
        sp = np.linalg.norm(lps[:3, :3], axis=0)
        return ants.from_numpy(np.asarray(img.dataobj, dtype=np.float32), origin=list(lps[:3, 3]), spacing=list(sp),
                               direction=lps[:3, :3] / sp)

    kw = dict(type_of_transform="Rigid")
    if fast:  # the levels, smoothing and iterations SimpleITK gets here, ANTs' own sampling
        kw.update(aff_iterations=(100, 100, 100), aff_shrink_factors=(4, 2, 1), aff_smoothing_sigmas=(2, 1, 0),
                  aff_sampling=32, aff_random_sampling_rate=0.05)
    out = ants.registration(to_ants(fixed), to_ants(moving), **kw)
    tx = ants.read_transform(out["fwdtransforms"][0])
    p, c = np.asarray(tx.parameters, dtype=float), np.asarray(tx.fixed_parameters, dtype=float)
    a = p[:9].reshape(3, 3)
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = a, c + p[9:12] - a @ c
    return ras_to_lps(m)


def compare(cases: list[Path], libraries: list[str], threads: int) -> None:
    from mmccd.data.raw.geometry import transform_error
    from mmccd.data.raw.rawlike import make_rawlike

    rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for folder in cases:
        vols, affine = load_case(folder)
        rl = make_rawlike(vols, affine)
        line = [folder.name]
        for c in ("t1ce", "t2", "flair"):
            pts = brain_points(vols, affine, c, rl.motions["t1"])
            truth = rl.true_transform(c, "t1")
            for lib in libraries:
                t = time.perf_counter()
                if lib == "simpleitk":
                    est = sitk_register(rl.images["t1"], rl.images[c], threads)
                else:
                    est = ants_register(rl.images["t1"], rl.images[c], threads, fast=lib == "ants-matched")
                dt = time.perf_counter() - t
                mm, deg = transform_error(est, truth, pts)
                rows.setdefault((lib, c), []).append((mm, deg, dt))
                line.append(f"{lib}:{c} {mm:.2f}mm/{deg:.2f}deg/{dt:.1f}s")
        print("  ".join(line), flush=True)
    print(f"\n{len(cases)} case(s), {threads} thread(s); error = max displacement over the brain (mm), rotation (deg)")
    print(f"{'library':14s} {'contrast':8s} {'median mm':>9s} {'max mm':>7s} {'max deg':>7s} {'<=1mm&1deg':>10s} "
          f"{'median s':>8s}")
    for (lib, c), vals in rows.items():
        a = np.asarray(vals)
        ok = int(((a[:, 0] <= 1.0) & (a[:, 1] <= 1.0)).sum())
        print(f"{lib:14s} {c:8s} {statistics.median(a[:, 0]):9.2f} {a[:, 0].max():7.2f} {a[:, 1].max():7.2f} "
              f"{ok:>5d}/{len(a):<4d} {statistics.median(a[:, 2]):8.1f}")


def self_registration(cases: list[Path], threads: int) -> None:
    from mmccd.data.raw.geometry import transform_error
    from mmccd.data.raw.register import register_rigid

    for folder in cases:
        vols, affine = load_case(folder)
        line = [folder.name]
        for c in ("t1ce", "t2", "flair"):
            pts = brain_points(vols, affine, c, np.eye(4))
            est = register_rigid(vols["t1"], affine, vols[c], affine, threads=threads).transform
            mm, deg = transform_error(est, np.eye(4), pts)
            line.append(f"{c} {mm:.2f}mm/{deg:.2f}deg")
        print("  ".join(line), flush=True)


def similarity(cases: list[Path]) -> None:
    from mmccd.data.raw.geometry import output_grid, resample, rigid_matrix
    from mmccd.data.raw.rawlike import make_rawlike
    from mmccd.data.raw.register import MIN_NMI, nmi_on_grid

    res: dict[str, list[float]] = {}
    for folder in cases:
        vols, affine = load_case(folder)
        rl = make_rawlike(vols, affine)
        f = rl.images["t1"]
        fd = np.asarray(f.dataobj, dtype=np.float32)
        grid = output_grid(fd.shape, f.affine)
        fixed = resample(fd, f.affine, grid.shape, grid.affine)
        centre = grid.affine[:3, :3] @ (np.asarray(grid.shape) / 2) + grid.affine[:3, 3]
        offs = {"truth": np.eye(4), "5 mm off": rigid_matrix((0, 0, 0), (5, 0, 0)),
                "15 mm off": rigid_matrix((0, 0, 0), (0, 15, 0)), "10 deg off": rigid_matrix((10, 0, 0), (0, 0, 0), centre),
                "180 deg off": rigid_matrix((0, 0, 180), (0, 0, 0), centre)}
        for c in ("t1ce", "t2", "flair"):
            m = rl.images[c]
            md = np.asarray(m.dataobj, dtype=np.float32)
            for name, off in offs.items():
                moved = resample(md, m.affine, grid.shape, grid.affine, rl.true_transform(c, "t1") @ off, cval=np.nan)
                res.setdefault(name, []).append(nmi_on_grid(fixed, moved))
        print(folder.name, {k: round(v[-1], 3) for k, v in res.items()}, flush=True)
    print(f"\nNMI over {len(cases)} case(s) x 3 contrasts registered to T1 (MIN_NMI = {MIN_NMI}):")
    for name, v in res.items():
        print(f"  {name:12s} min {min(v):.3f}  median {statistics.median(v):.3f}  max {max(v):.3f}")


def main() -> None:
    from mmccd.paths import real_data_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=real_data_dir(), help="BraTS folder (default $MMCCD_REAL_DATA)")
    ap.add_argument("--cases", type=int, default=4, help="how many cases (evenly spread over the sorted folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ants", action="store_true", help="also ANTsPy (its default Rigid, and matched levels)")
    ap.add_argument("--similarity", action="store_true", help="print the NMI calibration instead")
    ap.add_argument("--self", action="store_true", help="register the BraTS files themselves (truth: identity)")
    ap.add_argument("--names", nargs="+", help="these case folders instead of --cases evenly spread ones")
    args = ap.parse_args()
    if args.data is None:
        raise SystemExit("no BraTS folder: pass --data or set MMCCD_REAL_DATA")
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)  # ANTs reads it at import
    folders = sorted(p for p in args.data.iterdir() if p.is_dir())
    pick = np.unique(np.linspace(0, len(folders) - 1, min(args.cases, len(folders))).round().astype(int))
    cases = [args.data / n for n in args.names] if args.names else [folders[i] for i in pick]
    if args.self:
        self_registration(cases, args.threads)
    elif args.similarity:
        similarity(cases)
    else:
        compare(cases, ["simpleitk"] + (["ants", "ants-matched"] if args.ants else []), args.threads)


if __name__ == "__main__":
    main()
