"""Speed vs accuracy of MMCCD scoring settings, on one trained run, in ONE process (issue 6).

For the VALIDATION subjects' max-tumour slices of the run's prepared store, every setting scores the
same slices with the same model. The table gives network passes per slice, median wall seconds per
slice, peak memory, Dice at the threshold that is best on these same validation slices (a comparison
of settings, NOT a test result), AUROC and AUPRC (pooled brain pixels), and the correlation of the map
with the reference protocol's. Cyclic UNet (`--cyclic RUN`) is the cost unit.

Timing: settings marked "rounds" are timed in interleaved rounds (A B C ... A B C ...) after an untimed
warm-up round, each measurement repeating the call until it lasts >= `--min-seconds`, so load from other
processes on a shared machine hits every setting alike: compare the RATIOS, not the seconds. The slow
settings (reference, ~12,900 passes per slice) are timed once per slice; `--reference-cache FILE` keeps
the reference's maps and timings between invocations (reused rows say "earlier run").
Memory: peak resident memory above the level before scoring, in a fresh process per setting (a process
that already scored keeps freed memory and would under-report); settings with more than 2 DDIM steps are
measured with 2 (each step's activations are freed before the next: the peak does not depend on steps).

    .venv/bin/python benchmarks/speed_scoring.py --run results/bench-cpu/runs/mmccd_flair-t2 \
        --cyclic results/bench-cpu/runs/cyclic-unet_flair-t2 --reference-cache results/speed/reference_maps.npz \
        --out results/speed
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import subprocess
import sys
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
from mmccd.pipeline.runs import load_method, read_run_config, read_run_info
from mmccd.scoring.base import AnomalyMethod

TILE = {"num_masks": 16, "mask_batch": 16}  # 8 + 8 stripes of the training width: they tile the slice
ONE_STEP = {**TILE, "ddim_steps": 1, "timestep_spacing": "trailing"}

# key -> (description, score overrides, timed in rounds?). Keys starting "fast" override the fast preset,
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


# ---------------------------------------------------------------- setup


def score_config(key: str, run_score: ScoreConfig) -> ScoreConfig:
    if key == "run":
        return run_score
    base = load_score_preset("fast") if key.startswith("fast") else load_score_preset("reference")
    return merge(base, SETTINGS[key][1], where=f"setting {key}")


def validation_slices(run: Path, split: str, limit: int | None) -> SliceBatch:
    cfg = read_run_config(run)
    store = PreparedStore.open(Path(read_run_info(run)["prepared"]))
    dataset = SliceDataset(store, store.splits()[split], cfg.source, cfg.target, slices="max_tumour")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    return collate_slices([dataset[i] for i in range(n)])


def load_methods(args: argparse.Namespace, keys: list[str]) -> tuple[dict[str, AnomalyMethod], dict[str, ScoreConfig]]:
    """The method scoring each setting (MMCCD or Cyclic UNet) and each MMCCD setting's score config."""
    mmccd = load_method(args.run, args.device)
    methods: dict[str, AnomalyMethod] = {k: mmccd for k in keys if k not in CYCLIC}
    if any(k in CYCLIC for k in keys):
        cyclic = load_method(args.cyclic, args.device)
        methods.update({k: cyclic for k in keys if k in CYCLIC})
    configs = {k: score_config(k, mmccd.cfg.score) for k in keys if k not in CYCLIC}
    for k in (k for k in keys if k in CYCLIC):  # Cyclic UNet with its own settings; "-fast": channels-last + bf16
        own = methods[k].cfg.score
        configs[k] = dataclasses.replace(own, channels_last=True, amp="bf16") if k == "cyclic-unet-fast" else own
    return methods, configs


# ---------------------------------------------------------------- measuring


class PeakMemory:
    """Peak resident memory above the level at entry (CPU: /proc/self/statm every 2 ms; CUDA: the allocator)."""

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


def score_once(method: AnomalyMethod, settings: ScoreConfig, batch: SliceBatch, seed: int) -> np.ndarray:
    """Maps (N, S, S) of one scoring call with `settings` (channels-last and autocast as they ask)."""
    generator = torch.Generator(device=method.device).manual_seed(seed)
    out = method.score(batch.to(method.device), settings, generator).anomaly_map
    if method.device.type == "cuda":
        torch.cuda.synchronize()
    return out.float().cpu().numpy()[:, 0]


def timed(method: AnomalyMethod, settings: ScoreConfig, batch: SliceBatch, seed: int,
          repeats: int) -> tuple[np.ndarray, float]:
    """Maps and seconds per slice, averaged over `repeats` identical calls."""
    start = time.perf_counter()
    for _ in range(repeats):
        maps = score_once(method, settings, batch, seed)
    return maps, (time.perf_counter() - start) / repeats / len(batch)


def take(batch: SliceBatch, i: int) -> SliceBatch:
    s = slice(i, i + 1)
    return SliceBatch(source=batch.source[s], target=batch.target[s], brain_mask=batch.brain_mask[s],
                      gt_mask=None if batch.gt_mask is None else batch.gt_mask[s],
                      subject_id=batch.subject_id[s], slice_index=batch.slice_index[s])


def metrics(maps: np.ndarray, batch: SliceBatch) -> dict[str, float]:
    records = [MapRecord(batch.subject_id[i], int(batch.slice_index[i]), maps[i], batch.gt_mask[i, 0].numpy(),
                         batch.brain_mask[i, 0].numpy()) for i in range(len(maps))]
    choice = choose_threshold(records)
    summary = evaluate_maps(records, choice.threshold).summary
    return {"dice": choice.val_dice, "auroc": summary["pooled_auroc"], "auprc": summary["pooled_auprc"],
            "threshold": choice.threshold}


def child_memory(args: argparse.Namespace) -> None:
    """--child-memory KEY: print the peak MB of scoring the slices once with KEY (run in a fresh process)."""
    key = args.child_memory
    batch = validation_slices(args.run, args.split, args.max_slices)
    methods, configs = load_methods(args, [key])
    method = methods[key]
    if key in configs and configs[key].ddim_steps > 2:
        configs[key] = dataclasses.replace(configs[key], ddim_steps=2)
    with PeakMemory(method.device) as mem:
        score_once(method, configs[key], batch, 0)
    print(json.dumps({"peak_mb": mem.peak_mb}))


def memory_in_fresh_process(args: argparse.Namespace, key: str) -> float | None:
    cmd = [sys.executable, __file__, "--run", str(args.run), "--split", args.split, "--child-memory", key]
    for flag, value in (("--cyclic", args.cyclic), ("--max-slices", args.max_slices), ("--threads", args.threads),
                        ("--device", args.device)):
        if value is not None:
            cmd += [flag, str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        print(f"memory of {key} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"])


# ---------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="trained MMCCD run folder")
    p.add_argument("--cyclic", type=Path, help="trained Cyclic UNet run folder (the cost unit)")
    p.add_argument("--split", default="val", help="subjects whose max-tumour slices are scored (default val)")
    p.add_argument("--max-slices", type=int, help="score only the first N slices")
    p.add_argument("--settings", help=f"comma-separated subset of: {', '.join(SETTINGS)}")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="repeat a timed call until it lasts this long")
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory measurements")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", help="device (default: the run's)")
    p.add_argument("--reference-cache", type=Path, help="npz keeping the reference maps and timings between runs")
    p.add_argument("--out", type=Path, default=Path("results/speed"), help="folder for the table (md, json, maps)")
    p.add_argument("--child-memory", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_memory:
        return child_memory(args)
    keys = [k.strip() for k in args.settings.split(",")] if args.settings else [k for k in SETTINGS if k not in OPT_IN]
    unknown = [k for k in keys if k not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}: choose from {', '.join(SETTINGS)}")
    if args.cyclic is None:
        keys = [k for k in keys if k not in CYCLIC]

    batch = validation_slices(args.run, args.split, args.max_slices)
    methods, configs = load_methods(args, keys)
    seed = {k: configs[k].seed for k in keys}
    print(f"{len(batch)} {args.split} max-tumour slices ({', '.join(batch.subject_id)}), {batch.source.shape[-1]} px, "
          f"{torch.get_num_threads()} threads, device {methods[keys[0]].device}", flush=True)

    res: dict[str, dict[str, Any]] = {k: {"seconds": []} for k in keys}
    cached = _load_reference(args.reference_cache, args.run, batch) if "reference" in keys else None
    if cached is not None:
        res["reference"].update(cached)
    # 1. the slow settings, once per slice
    for k in [k for k in keys if not SETTINGS[k][2] and not (k == "reference" and cached is not None)]:
        parts = [timed(methods[k], configs[k], take(batch, i), seed[k], 1) for i in range(len(batch))]
        res[k].update(maps=np.concatenate([m for m, _ in parts]), seconds=[s for _, s in parts])
        print(f"once    {k:16s} {statistics.median(res[k]['seconds']):9.3f} s/slice", flush=True)
        if k == "reference" and args.reference_cache:
            _save_reference(args.reference_cache, args.run, batch, res[k])
    # 2. the fast settings: warm-up (also sets the repeats per measurement), then interleaved rounds
    fast = [k for k in keys if SETTINGS[k][2]]
    repeats = {}
    for k in fast:
        res[k]["maps"], sec = timed(methods[k], configs[k], batch, seed[k], 1)
        res[k]["warmup_seconds"] = sec * len(batch)
        _, sec = timed(methods[k], configs[k], batch, seed[k], 1)
        repeats[k] = max(1, math.ceil(args.min_seconds / (sec * len(batch))))
    for r in range(args.rounds):
        for k in fast:
            _, sec = timed(methods[k], configs[k], batch, seed[k], repeats[k])
            res[k]["seconds"].append(sec)
            print(f"round {r + 1} {k:16s} {sec:9.3f} s/slice (x{repeats[k]})", flush=True)
    # 3. memory, each setting in a fresh process
    for k in keys:
        res[k]["peak_mb"] = None if args.no_memory else memory_in_fresh_process(args, k)

    rows = table_rows(keys, res, methods, configs, batch)
    table = markdown(rows, batch, args)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed_scoring.md").write_text(table + "\n")
    (args.out / "speed_scoring.json").write_text(json.dumps(rows, indent=2, default=str))
    np.savez_compressed(args.out / "speed_scoring_maps.npz", **{k: res[k]["maps"] for k in keys},
                        gt=batch.gt_mask[:, 0].numpy(), brain=batch.brain_mask[:, 0].numpy(),
                        source=batch.source[:, 0].numpy())


def table_rows(keys: list[str], res: dict[str, dict[str, Any]], methods: dict[str, AnomalyMethod],
               configs: dict[str, ScoreConfig], batch: SliceBatch) -> list[dict[str, Any]]:
    brain = batch.brain_mask[:, 0].numpy()
    ref_maps = res["reference"]["maps"] if "reference" in res else None
    unit = statistics.median(res["cyclic-unet"]["seconds"]) if "cyclic-unet" in res else None
    ref = statistics.median(res["reference"]["seconds"]) if "reference" in res else None
    rows = []
    for k in keys:
        sec = statistics.median(res[k]["seconds"])
        passes = 2 if k in CYCLIC else methods[k].network_evaluations(configs[k])  # type: ignore[attr-defined]
        r_ref = None if ref_maps is None else float(np.corrcoef(res[k]["maps"][brain], ref_maps[brain])[0, 1])
        rows.append({"key": k, "setting": SETTINGS[k][0], "passes_per_slice": passes, "seconds_per_slice": sec,
                     "timings": len(res[k]["seconds"]), "earlier_run": bool(res[k].get("earlier_run")),
                     "x_cyclic_unet": sec / unit if unit else None, "reference_speedup": ref / sec if ref else None,
                     "peak_mb": res[k]["peak_mb"], "warmup_seconds": res[k].get("warmup_seconds"),
                     "r_reference": r_ref, **metrics(res[k]["maps"], batch),
                     "score": None if k in CYCLIC else dataclasses.asdict(configs[k])})
    return rows


def markdown(rows: list[dict[str, Any]], batch: SliceBatch, args: argparse.Namespace) -> str:
    def fmt(v: float | None, spec: str) -> str:
        return "—" if v is None else format(v, spec)

    lines = [f"{len(batch)} {args.split} max-tumour slices ({', '.join(batch.subject_id)}); Dice at the threshold "
             "best on these same slices (a comparison of settings, not a test result); AUROC/AUPRC pooled over "
             "their brain pixels; r = Pearson correlation of the brain pixels' scores with the reference map. "
             f"{torch.get_num_threads()} torch threads; s / slice = median of n timings.",
             "",
             "| setting | passes / slice | s / slice (n) | × Cyclic UNet | speed-up vs reference | peak MB | Dice | AUROC | "
             "AUPRC | r vs reference |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        n = f"{r['timings']}{', earlier run' if r['earlier_run'] else ''}"
        lines.append(f"| {r['setting']} | {r['passes_per_slice']:,} | {r['seconds_per_slice']:.3f} ({n}) | "
                     f"{fmt(r['x_cyclic_unet'], '.1f')} | {fmt(r['reference_speedup'], ',.0f')} | "
                     f"{fmt(r['peak_mb'], '.0f')} | {r['dice']:.3f} | {r['auroc']:.3f} | {r['auprc']:.3f} | "
                     f"{fmt(r['r_reference'], '.3f')} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- reference cache


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
    return {"maps": z["maps"], "seconds": z["seconds"].tolist(), "earlier_run": True}


def _save_reference(path: Path, run: Path, batch: SliceBatch, res: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, maps=res["maps"], seconds=np.array(res["seconds"]),
                        signature=np.array(_signature(run, batch)))


if __name__ == "__main__":
    main()
