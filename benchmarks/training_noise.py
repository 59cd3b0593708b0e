"""How much of MMCCD's Dice is the training draw (issue 18, docs/quality.md): one fold of the cross-validation,
MMCCD trained several times under the `cpu` preset, each draw evaluated under `fast` with its own validation
threshold on the fold's test subjects.

    .venv/bin/python benchmarks/training_noise.py --data ../shared/data/brats --bench results/cv --fold 0 \\
        --pair flair:t2 --seeds 1 2 --threads 2 --repeat-threads 1 --out results/repro

Draws, each a run folder:
  * `benchmark` - the fold's Cyclic UNet and MMCCD exactly as `mmccd benchmark --folds 3` trains them first
    (prepared store, folds.json and runs under --bench; MMCCD borrows Cyclic UNet's backward UNet), `--threads`
    intra-op threads. An existing trained run there is reused, not retrained.
  * `repeat` - the same MMCCD run with its forward net trained again from scratch (same seed, data and borrowed
    backward net) with `--repeat-threads` threads: what a different machine or thread count alone changes.
  * `seed-S` - MMCCD alone with training seed S (both its networks its own), `--repeat-threads` threads.

Writes OUT/training_noise.json and OUT/training_noise.md (val / test Dice per max-tumour slice and per volume, volume
AUROC, and the forward model's translation quality and the healthy cyclic error on validation tissue, per draw).
Everything resumes: finished runs and evaluations are reused (run it again to continue).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import mean, stdev

import torch

from mmccd.config import MODALITIES, load_config
from mmccd.pipeline.benchmark.jobs import ensure_trained
from mmccd.pipeline.benchmark.plan import parse_pair, plan_runs, run_name
from mmccd.pipeline.benchmark.run import prepare_and_split
from mmccd.pipeline.evaluate import evaluate_run
from mmccd.pipeline.runs import read_run_config, run_split, train_run
from mmccd.scoring import resolve_scoring

sys.path.insert(0, str(Path(__file__).parent))
from translation_quality import translation_quality  # noqa: E402

PROTOCOLS = ("max_tumour", "all")


def benchmark_runs(data: Path, bench: Path, fold: int, pair: tuple[str, str], folds: int, preset: str,
                   methods: Sequence[str] = ("cyclic-unet", "mmccd")) -> Path:
    """Train (or reuse) the benchmark's runs of `methods` in `fold`, as `mmccd benchmark --folds K --methods
    METHODS` trains them; returns MMCCD's run folder."""
    for spec in fold_specs(data, bench, fold, pair, folds, preset, methods):
        ensure_trained(bench / "prepared", spec)
    return bench / "runs" / f"fold-{fold}" / run_name("mmccd", *pair)


def fold_specs(data: Path, bench: Path, fold: int, pair: tuple[str, str], folds: int, preset: str,
               methods: Sequence[str]) -> list:
    """The benchmark's runs of `methods` in `fold` (their configs and the fold's split), planned but not trained;
    prepares the benchmark's store (resumed) and its folds as `mmccd benchmark --folds K` does."""
    # the store as the CV benchmark of docs/results.md prepares it (all three contrasts of its pairs)
    required = sorted({*pair, "t1", "t2", "flair"}, key=MODALITIES.index)
    _, split_list = prepare_and_split(data, bench, load_config(preset), required, folds)
    specs = plan_runs(bench, preset, [parse_pair(":".join(pair), list(methods))], split_list, cv=True)
    return [spec for spec in specs if spec.fold == fold]


def repeat_forward(prepared: Path, src: Path, run: Path, backward_from: Path) -> None:
    """`src` with its forward net trained again from scratch (same config, seed and split; backward borrowed)."""
    if not run.exists():
        shutil.copytree(src, run, ignore=shutil.ignore_patterns("eval-*", "maps", "views", "calibration"))
        (run / "checkpoints" / "source_to_target.pt").unlink()
    train_run(prepared, run, read_run_config(run), resume=True,
              reuse_backward_from=backward_from, split=run_split(run))


def evaluate(run: Path) -> dict:
    settings = resolve_scoring(read_run_config(run), "fast")
    out: dict = {}
    for slices in PROTOCOLS:
        s = evaluate_run(run, settings, slices=slices, out_dir=run / f"eval-{slices}-fast", reuse=True,
                         overwrite=True, views="none").summary
        out[slices] = {"val_dice": s["val_dice_at_threshold"], "dice": s["subject_mean_dice"],
                       "dice_std": s["subject_std_dice"], "auroc": s["subject_mean_auroc"], "n": s["n_subjects"]}
    out["translation"] = translation_quality(run, ("fast",))["fast"]
    return out


def write_outputs(out: Path, results: dict) -> None:
    rows = ["| draw | how it was trained | val Dice max-tumour | test Dice max-tumour | val Dice volume | "
            "test Dice volume | AUROC volume | translation MAE / SSIM (healthy) | cyclic error (healthy) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, d in results["draws"].items():
        mt, vol, q = d["max_tumour"], d["all"], d["translation"]
        rows.append(f"| {name} | {d['how']} | {mt['val_dice']:.3f} | {mt['dice']:.3f} ± {mt['dice_std']:.3f} "
                    f"| {vol['val_dice']:.3f} | {vol['dice']:.3f} | {vol['auroc']:.3f} "
                    f"| {q['translation_mae']:.3f} / {q['translation_ssim']:.3f} | {q['cyclic_error']:.3f} |")
    draws = list(results["draws"].values())
    if len(draws) > 1:
        cells = [f"{mean(v):.3f} ± {stdev(v):.3f}" for v in
                 ([d[p][k] for d in draws] for p, k in (("max_tumour", "val_dice"), ("max_tumour", "dice"),
                                                        ("all", "val_dice"), ("all", "dice"), ("all", "auroc")))]
        rows.append(f"| mean ± std over the {len(draws)} draws | | " + " | ".join(cells) + " | | |")
    text = (f"Command: `{results['command']}`\n\nMMCCD, {results['pair']}, fold {results['fold']} of "
            f"{results['bench']}, `cpu` preset, `fast` scoring, each draw at its own validation threshold; "
            f"n = {draws[0]['max_tumour']['n']} test subjects (Dice mean ± std over subjects).\n\n"
            + "\n".join(rows) + "\n")
    (out / "training_noise.md").write_text(text)
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the benchmark's data folder")
    p.add_argument("--bench", type=Path, default=Path("results/cv"), help="a `mmccd benchmark --folds K` folder")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--pair", default="flair:t2")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--seeds", type=int, nargs="*", default=[1, 2], help="MMCCD alone with these training seeds")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the benchmark's runs")
    p.add_argument("--repeat-threads", type=int, default=1, help="... of the repeated forward net and the seed runs")
    p.add_argument("--out", type=Path, default=Path("results/repro"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    pair = tuple(args.pair.split(":"))
    args.out.mkdir(parents=True, exist_ok=True)
    name = run_name("mmccd", *pair)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    bench_run = benchmark_runs(args.data, args.bench, args.fold, pair, args.folds, args.preset)
    torch.set_num_threads(args.repeat_threads)
    repeat = args.out / f"threads-{args.repeat_threads}" / name
    repeat_forward(args.bench / "prepared", bench_run, repeat, bench_run.parent / run_name("cyclic-unet", *pair))
    draws = {"benchmark": (bench_run, f"the benchmark's run, seed 0, backward borrowed, {args.threads} thread(s)"),
             "repeat": (repeat, f"forward net trained again, seed 0, same backward, {args.repeat_threads} thread(s)")}
    for seed in args.seeds:
        run = args.out / f"seed-{seed}" / name
        cfg = load_config(args.preset, {"method": "mmccd", "source": pair[0], "target": pair[1],
                                        "train": {"seed": seed}})
        train_run(args.bench / "prepared", run, cfg, resume=True, split=run_split(bench_run))
        draws[f"seed-{seed}"] = (run, f"seed {seed}, both networks its own, {args.repeat_threads} thread(s)")
    results = {"command": " ".join(sys.argv), "bench": str(args.bench), "fold": args.fold, "pair": args.pair,
               "draws": {k: {"run": str(run), "how": how, **evaluate(run)} for k, (run, how) in draws.items()},
               "seconds_this_call": round(time.perf_counter() - start, 1)}
    (args.out / "training_noise.json").write_text(json.dumps(results, indent=1) + "\n")
    write_outputs(args.out, results)


if __name__ == "__main__":
    main()
