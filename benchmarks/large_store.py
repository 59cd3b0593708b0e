"""Training start-up and memory on a BraTS-sized prepared store (SYNTHETIC data, built here).

Writes a store in the layout of `mmccd.data.store` (prepare.json, splits.json, cases/<id>/
{images,brain,seg}.npy + meta.json) for 1,251 subjects x 152 stored slices (~190k slices) at
128 px, float16 images (~25 GB + 6 GB masks), dropping every written file from the page cache, then
measures in a fresh process, as `mmccd train` would start:

  1. opening the store, reading splits and building the training `SliceDataset` index;
  2. the first `--batches` global batches through the training DataLoader (`_StepBatches`);
  3. peak memory: VmHWM (and the largest DataLoader worker's), and at the end RssAnon (the
     process's own memory) vs RssFile (memory-mapped pages: the store's, which the kernel can drop
     at any time, and the shared libraries, ~100 MB for torch).

    nice -n 19 python benchmarks/large_store.py                 # builds, measures, deletes
    python benchmarks/large_store.py --subjects 100 --size 64   # a small trial
    python benchmarks/large_store.py --root /scratch/s --keep   # keep the store for another run

Needs (subjects x slices x (4 x 2 + 2) x size^2) bytes free on the --root file system.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mmccd.config import MODALITIES, PrepareConfig
from mmccd.data.splits import make_splits
from mmccd.data.store import SPLITS_JSON, case_dir, dumps, write_prepare_json


def _drop_cache(path: Path) -> None:
    """Evict a written file from the page cache, so reading it later is a cold read from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _meta(case_id: str, n: int, size: int, tumour: tuple[int, int], rng: np.random.Generator) -> dict:
    """meta.json as `prepare_case` writes it (same keys), for n stored slices of a 240x240x155 volume."""
    first = 10
    fraction = np.clip(np.sin(np.linspace(0.05, np.pi - 0.05, n)) * 0.55 + rng.normal(0, 0.01, n), 0.0, 1.0)
    tumour_voxels = np.zeros(n, dtype=np.int64)
    tumour_voxels[tumour[0]:tumour[1]] = rng.integers(50, 3000, tumour[1] - tumour[0])
    enough = fraction >= 0.1
    return {
        "case_id": case_id,
        "source_files": {m: f"/synthetic/{case_id}/{case_id}_{m}.nii.gz" for m in (*MODALITIES, "seg")},
        "naming": "brats2021", "has_seg": True,
        "modalities": list(MODALITIES), "modalities_present": list(MODALITIES),
        "original_shape": [240, 240, 155], "affine": np.diag([-1.0, -1.0, 1.0, 1.0]).tolist(), "axial_axis": 2,
        "box": [40, 30, 170], "size": size,
        "slice_indices": list(range(first, first + n)),
        "brain_fraction": [round(float(f), 6) for f in fraction],
        "tumour_voxels": [int(t) for t in tumour_voxels],
        "train_slices": [int(p) for p in np.flatnonzero(enough & (tumour_voxels == 0))],
        "eval_slices_all": [int(p) for p in np.flatnonzero(enough)],
        "max_tumour_slice": int(np.argmax(tumour_voxels)),
        "percentiles": {m: [0.0, 1000.0] for m in MODALITIES},
    }


def build(root: Path, subjects: int, slices: int, size: int) -> float:
    """Write the SYNTHETIC store; returns seconds."""
    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    write_prepare_json(root, PrepareConfig(size=size), MODALITIES)
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    head = (xx ** 2 + yy ** 2 < 0.8).astype(np.float32)
    template = np.stack([head * (0.2 + 0.2 * c) * np.cos(3 * xx + c) - (1 - head) for c in range(4)])  # (4, S, S)
    rng = np.random.default_rng(0)
    ids = [f"BraTS2021_{i:05d}" for i in range(subjects)]
    for i, case_id in enumerate(ids):
        folder = case_dir(root, case_id)
        folder.mkdir(parents=True)
        images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.float16,
                                           shape=(slices, len(MODALITIES), size, size))
        for p in range(0, slices, 32):  # distinct content per slice, written in chunks
            k = min(32, slices - p)
            images[p:p + k] = (template[None] * (0.5 + (np.arange(p, p + k) / slices)[:, None, None, None])
                               + i * 1e-4).astype(np.float16)
        images.flush()
        del images
        brain = np.broadcast_to(head.astype(np.uint8), (slices, size, size))
        np.save(folder / "brain.npy", brain)
        t_lo = int(rng.integers(slices // 3, slices // 2))
        tumour = (t_lo, t_lo + int(rng.integers(15, 40)))
        seg = np.zeros((slices, size, size), np.uint8)
        seg[tumour[0]:tumour[1], size // 3: size // 2, size // 3: size // 2] = 2
        np.save(folder / "seg.npy", seg)
        for name in ("images.npy", "brain.npy", "seg.npy"):
            _drop_cache(folder / name)
        (folder / "meta.json").write_text(dumps(_meta(case_id, slices, size, tumour, rng)))  # last: case complete
        _drop_cache(folder / "meta.json")
        if (i + 1) % 100 == 0 or i + 1 == subjects:
            print(f"  built {i + 1}/{subjects} subjects ({time.perf_counter() - t0:.0f} s)", flush=True)
    (root / SPLITS_JSON).write_text(json.dumps(make_splits(ids, 0.15, 0.25, 0), indent=2))
    return time.perf_counter() - t0


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def measure(root: Path, batches: int, batch_size: int, workers: int) -> dict:
    """Training start-up as `train_run` + `train_network` do it, in this (fresh) process."""
    import torch
    from torch.utils.data import DataLoader

    from mmccd.config import ExperimentConfig, merge
    from mmccd.data.batch import collate_slices
    from mmccd.data.dataset import SliceDataset
    from mmccd.data.store import PreparedStore
    from mmccd.training import _StepBatches

    out: dict = {"rss_after_import_mb": _status_kb("VmRSS") / 1024}
    t0 = time.perf_counter()
    store = PreparedStore.open(root)
    train_ids = store.splits()["train"]
    out["open_store_and_splits_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    dataset = SliceDataset(store, train_ids, "flair", "t2", slices="train")
    out["build_train_index_s"] = time.perf_counter() - t1
    out["startup_s"] = time.perf_counter() - t0
    out["train_subjects"], out["train_slices"] = len(train_ids), len(dataset)
    out["rss_after_index_mb"] = _status_kb("VmRSS") / 1024

    tc = merge(ExperimentConfig(), {"train": {"batch_size": batch_size, "num_workers": workers}}).train
    loader = DataLoader(dataset, batch_sampler=_StepBatches(len(dataset), tc, 0, batches, 0, 1),
                        collate_fn=collate_slices, num_workers=workers, generator=torch.Generator())
    t2 = time.perf_counter()
    first = None
    for b, batch in enumerate(loader):
        assert batch.source.shape[0] == batch_size
        if b == 0:
            first = time.perf_counter() - t2
    out["first_batch_s"] = first
    out[f"first_{batches}_batches_s"] = time.perf_counter() - t2
    out["peak_rss_mb"] = _status_kb("VmHWM") / 1024
    if workers:  # the largest DataLoader worker process (they have exited and been reaped)
        import resource

        out["peak_rss_worker_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out["end_rss_anon_mb"] = _status_kb("RssAnon") / 1024
    out["end_rss_file_mb"] = _status_kb("RssFile") / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="store folder (default: a new folder in the temp dir)")
    ap.add_argument("--subjects", type=int, default=1251)
    ap.add_argument("--slices", type=int, default=152, help="stored slices per subject")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 0, 2],
                    help="DataLoader workers of each measuring run (default 0 0 2: cold, then warm page cache)")
    ap.add_argument("--keep", action="store_true", help="keep the store (default: delete it)")
    ap.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)  # the fresh measuring process
    args = ap.parse_args()
    if args.measure_only:
        print(json.dumps(measure(args.root, args.batches, args.batch_size, args.workers[0])))
        return

    root = args.root or Path(tempfile.mkdtemp(prefix="mmccd-large-store-"))
    need = args.subjects * args.slices * (len(MODALITIES) * 2 + 2) * args.size ** 2
    free = shutil.disk_usage(root.parent if not root.exists() else root).free
    print(f"SYNTHETIC store: {args.subjects} subjects x {args.slices} slices = {args.subjects * args.slices:,} "
          f"slices at {args.size} px, {need / 1e9:.1f} GB, in {root} ({free / 1e9:.0f} GB free)")
    if need > 0.9 * free:
        sys.exit(f"not enough disk space: {need / 1e9:.1f} GB needed; use --slices, --size or --root elsewhere")
    try:
        if not (root / SPLITS_JSON).exists():
            print(f"built in {build(root, args.subjects, args.slices, args.size):.0f} s "
                  f"({sum(f.stat().st_size for f in root.rglob('*') if f.is_file()) / 1e9:.1f} GB on disk)")
        for run, workers in enumerate(args.workers):  # a fresh process each; the first reads a cold page cache
            cmd = [sys.executable, __file__, "--measure-only", "--root", str(root), "--batches", str(args.batches),
                   "--batch-size", str(args.batch_size), "--workers", str(workers)]
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            print(f"run {run + 1} ({'cold' if run == 0 else 'warm'} cache), num_workers={workers}: " + ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            print(f"deleted {root}")


if __name__ == "__main__":
    main()
