"""Speed vs accuracy of MMCCD scoring settings, on one trained run, in ONE process (issue 6).

For the VALIDATION subjects' max-tumour slices of the run's prepared store, every setting scores the
same slices with the same model; the table gives network passes per slice, median wall seconds per
slice, peak memory, and Dice at the threshold that is best on these same validation slices (a
comparison of settings, NOT a test result), AUROC and AUPRC (pooled brain pixels). Cyclic UNet
(`--cyclic RUN`) gives the cost unit. Timings are interleaved in rounds (A B C ... A B C ...) so load
from other processes on a shared machine hits every setting alike: compare the RATIOS, not seconds.

    .venv/bin/python benchmarks/speed_scoring.py --run results/bench-cpu/runs/mmccd_flair-t2 \
        --cyclic results/bench-cpu/runs/cyclic-unet_flair-t2 --out results/speed

The reference protocol (128 stripes x 100 DDIM steps, ~12,900 passes per slice) is timed once per
slice, not in rounds; `--reference-cache FILE` keeps its maps and timings between invocations
(reused rows are marked "earlier run" in the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmccd.config import ScoreConfig, load_score_preset, merge
from mmccd.data.batch import SliceBatch, collate_slices
from mmccd.data.dataset import SliceDataset
from mmccd.data.store import PreparedStore
from mmccd.evaluation.metrics import MapRecord, evaluate_maps
from mmccd.evaluation.thresholds import choose_threshold
from mmccd.pipeline.runs import load_method, read_run_info
from mmccd.scoring.base import AnomalyMethod

TILE = {"num_masks": 16, "mask_batch": 16}  # 8 + 8 stripes of the training width: they tile the slice
ONE_STEP = {**TILE, "ddim_steps": 1, "timestep_spacing": "trailing"}
PLAIN = {"amp": "none", "channels_last": False}  # the fast preset's maps in fp32, contiguous

# key -> (description, score overrides, timed in every round?). Keys starting "fast" override the fast preset,
# the others the reference protocol (= the ScoreConfig defaults: fp32, contiguous, one slice per call).
SETTINGS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "reference": ("reference: 128 stripes (1-px stride at 64 px) x 100 DDIM steps", {}, False),
    "m128-s10": ("128 stripes x 10 steps (trailing)", {"ddim_steps": 10, "timestep_spacing": "trailing"}, False),
    "m16-s100": ("16 tiling stripes x 100 steps", {**TILE}, False),
    "run": ("the run's own scoring (cpu preset: 16 x 10 steps, leading)", {}, False),
    "m16-s10": ("16 tiling x 10 steps (trailing)", {**TILE, "ddim_steps": 10, "timestep_spacing": "trailing"}, True),
    "m16-s2": ("16 tiling x 2 steps (trailing)", {**TILE, "ddim_steps": 2, "timestep_spacing": "trailing"}, True),
    "m16-s1-leading": ("16 tiling x 1 step, leading spacing (t = 0)", {**ONE_STEP, "timestep_spacing": "leading"},
                       True),
    "m16-s1": ("16 tiling x 1 step (t = 999)", {**ONE_STEP}, True),
    "m16-s1-comp": ("16 tiling x 1 step + composite backward (= fast maps, fp32)", {**ONE_STEP, "composite": True},
                    True),
    "m16-s2-comp": ("16 tiling x 2 steps + composite", {**ONE_STEP, "ddim_steps": 2, "composite": True}, True),
    "v8-comp": ("8 vertical stripes x 1 step + composite",
                {**ONE_STEP, "num_masks": 8, "mask_directions": ["vertical"], "composite": True}, True),
    "pairs8-comp": ("8 masks of 2 stripes x 1 step + composite", {**ONE_STEP, "stripes_per_mask": 2, "composite": True},
                    True),
    "board-comp": ("2 checkerboards x 1 step + composite", {**ONE_STEP, "mask_family": "checkerboard", "composite": True},
                   True),
    "fast-cl": ("fast maps + channels_last (fp32)", {"amp": "none"}, True),
    "fast-bf16": ("fast maps + bf16 autocast (contiguous)", {"amp": "bf16", "channels_last": False}, True),
    "fast": ("fast preset: 16 tiling x 1 step + composite, channels_last, amp auto", {}, True),
    "fast-slices8": ("fast preset, 8 slices per network call", {"slice_batch": 8}, True),
    "fast-seed1": ("fast preset, another seed (1): noise of the Dice", {"seed": 1}, True),
    "fast-seed2": ("fast preset, another seed (2)", {"seed": 2}, True),
    "fast-compile": ("fast preset + torch.compile (opt-in; compile time not included)", {"compile": True}, True),
    "cyclic-unet": ("Cyclic UNet (cost unit)", {}, True),
    "cyclic-unet-fast": ("Cyclic UNet + channels_last + bf16 autocast", {}, True),
}
OPT_IN = {"fast-compile"}  # only when named in --settings
CYCLIC = {"cyclic-unet", "cyclic-unet-fast"}


def score_config(key: str, run_score: ScoreConfig) -> ScoreConfig:
    if key == "run":
        return run_score
    base = load_score_preset("fast") if key.startswith("fast") else load_score_preset("reference")
    return merge(base, SETTINGS[key][1], where=f"setting {key}")


def validation_slices(run: Path, split: str, limit: int | None) -> tuple[SliceBatch, PreparedStore]:
    from mmccd.pipeline.runs import read_run_config

    cfg = read_run_config(run)
    store = PreparedStore.open(Path(read_run_info(run)["prepared"]))
    ids = store.splits()[split]
    dataset = SliceDataset(store, ids, cfg.source, cfg.target, slices="max_tumour")
    items = [dataset[i] for i in range(len(dataset) if limit is None else min(limit, len(dataset)))]
    return collate_slices(items), store


class PeakMemory:
    """Peak resident memory above the level at entry (CPU: /proc/self/statm sampled every 2 ms; CUDA: allocator)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        self._base, self._peak, self._stop = self._rss_mb(), 0.0, False
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop:
            self._peak = max(self._peak, self._rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20 - self._base
            return
        self._stop = True
        self._thread.join()
        self.peak_mb = max(0.0, max(self._peak, self._rss_mb()) - self._base)


def time_scoring(method: AnomalyMethod, batch: SliceBatch, seed: int, per_slice: bool,
                 fast_cyclic: bool = False) -> tuple[np.ndarray, list[float], float]:
    """Maps (N, S, S), seconds per slice (one value per call, divided by its slices), peak MB.

    fast_cyclic: score (Cyclic UNet) with channels_last weights and inputs under bf16 autocast."""
    generator = torch.Generator(device=method.device).manual_seed(seed)
    parts = [batch] if not per_slice else [_take(batch, i) for i in range(len(batch))]
    maps, seconds = [], []
    fmt = torch.channels_last if fast_cyclic else torch.contiguous_format
    method.nets.to(memory_format=fmt)  # type: ignore[call-arg]
    autocast = torch.autocast(method.device.type, dtype=torch.bfloat16, enabled=fast_cyclic)
    with PeakMemory(method.device) as mem:
        for part in parts:
            part = part.to(method.device)
            part = dataclasses.replace(part, source=part.source.contiguous(memory_format=fmt))
            start = time.perf_counter()
            with autocast:
                out = method.score(part, generator)["anomaly_map"]
            if method.device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append((time.perf_counter() - start) / len(part))
            maps.append(out.float().cpu().numpy()[:, 0])
    return np.concatenate(maps), seconds, mem.peak_mb


def _take(batch: SliceBatch, i: int) -> SliceBatch:
    return SliceBatch(source=batch.source[i:i + 1], target=batch.target[i:i + 1], brain_mask=batch.brain_mask[i:i + 1],
                      gt_mask=None if batch.gt_mask is None else batch.gt_mask[i:i + 1],
                      subject_id=batch.subject_id[i:i + 1], slice_index=batch.slice_index[i:i + 1])


def metrics(maps: np.ndarray, batch: SliceBatch) -> dict[str, float]:
    records = [MapRecord(batch.subject_id[i], int(batch.slice_index[i]), maps[i], batch.gt_mask[i, 0].numpy(),
                         batch.brain_mask[i, 0].numpy()) for i in range(len(maps))]
    choice = choose_threshold(records)
    summary = evaluate_maps(records, choice.threshold).summary
    return {"dice": choice.val_dice, "auroc": summary["pooled_auroc"], "auprc": summary["pooled_auprc"],
            "threshold": choice.threshold}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="trained MMCCD run folder")
    p.add_argument("--cyclic", type=Path, help="trained Cyclic UNet run folder (the cost unit)")
    p.add_argument("--split", default="val", help="subjects whose max-tumour slices are scored (default val)")
    p.add_argument("--max-slices", type=int, help="score only the first N slices")
    p.add_argument("--settings", help=f"comma-separated subset of: {', '.join(SETTINGS)}")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds of the fast settings (default 3)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", help="device (default: the run's)")
    p.add_argument("--reference-cache", type=Path, help="npz keeping the reference maps and timings between runs")
    p.add_argument("--out", type=Path, default=Path("results/speed"), help="folder for the table (md + json)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keys = [k.strip() for k in args.settings.split(",")] if args.settings else [k for k in SETTINGS if k not in OPT_IN]
    unknown = [k for k in keys if k not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}: choose from {', '.join(SETTINGS)}")
    if args.cyclic is None:
        keys = [k for k in keys if k not in CYCLIC]

    batch, _ = validation_slices(args.run, args.split, args.max_slices)
    mmccd = load_method(args.run, args.device)
    run_score = mmccd.cfg.score
    methods = {k: mmccd for k in keys if k not in CYCLIC}
    if args.cyclic is not None:
        cyclic = load_method(args.cyclic, args.device)
        methods.update({k: cyclic for k in keys if k in CYCLIC})
    configs = {k: score_config(k, run_score) for k in keys if k not in CYCLIC}
    print(f"{len(batch)} {args.split} max-tumour slices ({', '.join(batch.subject_id)}), "
          f"{mmccd.cfg.prepare.size} px, {torch.get_num_threads()} threads, device {mmccd.device}", flush=True)

    results: dict[str, dict[str, Any]] = {k: {"seconds": [], "peak_mb": 0.0} for k in keys}
    cached = _load_reference(args.reference_cache, args.run, batch) if "reference" in keys else None
    for r in range(-1, args.rounds):  # round -1: an untimed warm-up of the settings timed in rounds
        for k in keys:
            repeat = SETTINGS[k][2]
            if (r != 0 and not repeat) or (k == "reference" and cached is not None):
                continue
            method = methods[k]
            if k in configs:
                method.cfg = dataclasses.replace(method.cfg, score=configs[k])
            seed = configs[k].seed if k in configs else run_score.seed
            maps, seconds, peak = time_scoring(method, batch, seed, per_slice=not repeat,
                                               fast_cyclic=k == "cyclic-unet-fast")
            if r < 0:
                results[k]["warmup_seconds"] = sum(seconds) * len(batch)
                continue
            res = results[k]
            res["seconds"] += seconds
            res["peak_mb"] = max(res["peak_mb"], peak)
            res.setdefault("maps", maps)
            print(f"round {r + 1} {k:15s} {statistics.median(seconds):9.3f} s/slice  peak +{peak:.0f} MB", flush=True)
    if cached is not None:
        results["reference"].update(cached)
    elif "reference" in keys and args.reference_cache:
        _save_reference(args.reference_cache, args.run, batch, results["reference"])

    ref_maps = results["reference"]["maps"] if "reference" in results else None
    brain = batch.brain_mask[:, 0].numpy()
    rows = []
    unit = statistics.median(results["cyclic-unet"]["seconds"]) if "cyclic-unet" in results else None
    ref = statistics.median(results["reference"]["seconds"]) if "reference" in results else None
    for k in keys:
        res = results[k]
        sec = statistics.median(res["seconds"])
        method = methods[k]
        if k in configs:
            method.cfg = dataclasses.replace(method.cfg, score=configs[k])
        evals = method.network_evaluations() if k in configs else 2  # type: ignore[attr-defined]
        rows.append({"key": k, "setting": SETTINGS[k][0], "passes_per_slice": evals, "seconds_per_slice": sec,
                     "timings": len(res["seconds"]), "earlier_run": bool(res.get("earlier_run")),
                     "x_cyclic_unet": sec / unit if unit else None, "reference_speedup": ref / sec if ref else None,
                     "peak_mb": res["peak_mb"], "warmup_seconds": res.get("warmup_seconds"),
                     "r_reference": None if ref_maps is None else
                     float(np.corrcoef(res["maps"][brain], ref_maps[brain])[0, 1]),
                     **metrics(res["maps"], batch),
                     "score": dataclasses.asdict(configs[k]) if k in configs else None})
    table = _markdown(rows, batch, args)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed_scoring.md").write_text(table + "\n")
    (args.out / "speed_scoring.json").write_text(json.dumps(rows, indent=2, default=str))
    np.savez_compressed(args.out / "speed_scoring_maps.npz", **{k: results[k]["maps"] for k in keys},
                        gt=batch.gt_mask[:, 0].numpy(), brain=brain, source=batch.source[:, 0].numpy())


def _markdown(rows: list[dict[str, Any]], batch: SliceBatch, args: argparse.Namespace) -> str:
    lines = [f"{len(batch)} {args.split} max-tumour slices ({', '.join(batch.subject_id)}); Dice at the threshold "
             "best on these same slices (a comparison of settings, not a test result); AUROC/AUPRC pooled over "
             "their brain pixels; r = Pearson correlation of the brain pixels' scores with the reference map. "
             f"{torch.get_num_threads()} torch threads; median of the timings (n) per slice.",
             "",
             "| setting | passes / slice | s / slice (n) | × Cyclic UNet | speed-up vs reference | peak MB | Dice | AUROC | "
             "AUPRC | r (map vs reference) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        def fmt(v: float | None, spec: str) -> str:
            return "—" if v is None else format(v, spec)
        n = f"{r['timings']}{', earlier run' if r['earlier_run'] else ''}"
        lines.append(f"| {r['setting']} | {r['passes_per_slice']:,} | {r['seconds_per_slice']:.3f} ({n}) | "
                     f"{fmt(r['x_cyclic_unet'], '.1f')} | {fmt(r['reference_speedup'], ',.0f')} | {r['peak_mb']:.0f} | "
                     f"{r['dice']:.3f} | {r['auroc']:.3f} | {r['auprc']:.3f} | {fmt(r['r_reference'], '.3f')} |")
    return "\n".join(lines)


def _signature(run: Path, batch: SliceBatch) -> str:
    ckpts = sorted((run / "checkpoints").glob("*.pt"))
    return json.dumps({"ckpt": [(c.name, c.stat().st_mtime_ns) for c in ckpts], "subjects": batch.subject_id,
                       "slices": batch.slice_index.tolist(), "score": dataclasses.asdict(load_score_preset("reference"))},
                      default=str)


def _load_reference(path: Path | None, run: Path, batch: SliceBatch) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    z = np.load(path, allow_pickle=False)
    if str(z["signature"]) != _signature(run, batch):
        return None
    return {"maps": z["maps"], "seconds": z["seconds"].tolist(), "peak_mb": float(z["peak_mb"]), "earlier_run": True}


def _save_reference(path: Path, run: Path, batch: SliceBatch, res: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, maps=res["maps"], seconds=np.array(res["seconds"]), peak_mb=np.array(res["peak_mb"]),
                        signature=np.array(_signature(run, batch)))


if __name__ == "__main__":
    main()
