"""Where MMCCD's gap comes from (issue 18, docs/quality.md): Dice versus training steps and image size, MMCCD under
several scorings at each point, and the translation quality of the forward models on healthy validation tissue.

Starts from one fold of a `mmccd benchmark --folds K` folder (its runs at the preset's steps are the first point),
copies each run and resumes it to more steps (constant learning rate: resuming is training longer), and
evaluates every point with the fold's own validation threshold on its test subjects:

    .venv/bin/python benchmarks/learning_curve.py --bench results/cv --fold 0 --pair flair:t2 \\
        --steps 1200 2400 6000 --methods mmccd cyclic-unet dae --out results/learning [--size 128 --size-steps 1200]

With --data, the fold's runs are trained first when --bench does not hold them (as the benchmark trains them).
A bare `--steps` with --size measures the size point alone (the fold's runs are then not trained, only its split
is needed), e.g. the published scoring at 128 px:

    .venv/bin/python benchmarks/learning_curve.py --data ../shared/data/brats --bench results/cv --fold 0 \\
        --pair flair:t2 --steps --methods mmccd --size 128 --size-steps 1200 --reference --out results/learning

On several cores, one process per method (same --out; Cyclic UNet's before MMCCD's backward net is needed, since
MMCCD copies it) and then `--merge` of each process's learning_curve.json (copied aside: they share the name):

    ... --methods cyclic-unet &  ... --methods dae mmccd ;  ... --merge A.json B.json --out results/learning

Validation Dice (the fold's validation subjects, at the threshold chosen there) is what a choice of preset may
rest on; the test Dice beside it is the fold's test subjects, reported, never tuned on.
Writes OUT/learning_curve.json, OUT/learning_curve.md and OUT/learning_curve.png (and, with --size,
OUT/learning_curve_size.png and a table of each method at both sizes, paired over the test subjects); every run and evaluation is
resumable (run it again to continue). Scorings of MMCCD: `fast` (its default), `run` (the cpu preset's own,
16 masks x 10 DDIM steps) and, with --reference, the published protocol (128 masks x 100 steps) on the
max-tumour slices only (about 5 minutes per slice on one core).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from mmccd.config import load_config
from mmccd.data.prepare import prepare_dataset
from mmccd.data.splits import Split
from mmccd.evaluation.stats import compare_paired
from mmccd.pipeline.evaluate import evaluate_run
from mmccd.pipeline.runs import read_run_config, read_run_info, run_split, train_run
from mmccd.scoring import resolve_scoring

sys.path.insert(0, str(Path(__file__).parent))
from training_noise import benchmark_runs, fold_specs  # noqa: E402
from translation_quality import translation_quality  # noqa: E402


def copy_run(src: Path, dst: Path) -> None:
    """A run folder without its evaluations, map caches and views (they belong to the source's weights)."""
    if dst.exists():
        return
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("eval-*", "maps", "views", "calibration", "prepared-test*"))


def train_to(prepared: Path, run: Path, method: str, pair: tuple[str, str], steps: int, split: Split,
             preset: str, reuse: Path | None, size: int | None = None) -> float:
    """Resume (or train) `run` to `steps` iterations; returns the seconds this call trained."""
    overrides = {"method": method, "source": pair[0], "target": pair[1], "train": {"iterations": steps}}
    if size is not None:
        overrides["prepare"] = {"size": size}
    cfg = load_config(preset, overrides)
    start = time.perf_counter()
    train_run(prepared, run, cfg, resume=True, reuse_backward_from=reuse, split=split)
    return time.perf_counter() - start


def scorings_at(steps: int, reference: bool, reference_steps: list[int] | None, size: int | None = None,
                reference_sizes: list[int] | None = None) -> list[str]:
    """MMCCD's scorings at a point (`size`: its image size): `fast` and the run's own always, the reference where it
    was asked for (both filters, steps and sizes, must admit the point; None admits every point)."""
    wanted = (reference and (reference_steps is None or steps in reference_steps)
              and (reference_sizes is None or size in reference_sizes))
    return ["fast", "run"] + (["reference"] if wanted else [])


def backward_is_cyclic_unets(method: str, methods: list[str]) -> bool:
    """MMCCD's backward UNet is Cyclic UNet's at the same steps (copied, not retrained) when Cyclic UNet is in the
    study; without it, MMCCD resumes its own backward net like its forward one."""
    return method == "mmccd" and "cyclic-unet" in methods


def evaluate_point(run: Path, method: str, scorings: list[str], protocols: list[str]) -> dict:
    out = {}
    for scoring in scorings if method == "mmccd" else ["run"]:
        settings = resolve_scoring(read_run_config(run), scoring)
        # MMCCD's slower scorings (the run's own, the reference) on the max-tumour slices only: whole volumes
        # under 16 x 10 DDIM steps are ~30 CPU-minutes per point
        for slices in protocols if method != "mmccd" or scoring == "fast" else ["max_tumour"]:
            ev = evaluate_run(run, settings, slices=slices, out_dir=run / f"eval-{slices}-{scoring}", reuse=True,
                              overwrite=True, views="none")
            s = ev.summary
            out[f"{scoring}/{slices}"] = {"dice": s["subject_mean_dice"], "dice_std": s["subject_std_dice"],
                                          "val_dice": s["val_dice_at_threshold"], "n_val": s["n_val_subjects"],
                                          "auroc": s["subject_mean_auroc"], "auprc": s["subject_mean_auprc"],
                                          "n": s["n_subjects"], "oracle_dice": s["oracle_dice_test"],
                                          "per_subject": {r["subject_id"]: r["dice"] for r in ev.per_subject}}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", type=Path, required=True, help="a `mmccd benchmark --folds K` folder")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--pair", default="flair:t2")
    p.add_argument("--steps", type=int, nargs="*", default=[1200, 2400, 6000],
                   help="the points at the preset's image size; none (a bare --steps) with --size: the size point "
                        "alone, and the fold's runs are then not trained (only its split is needed)")
    p.add_argument("--methods", nargs="+", default=["mmccd", "cyclic-unet", "dae"])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--out", type=Path, default=Path("results/learning"))
    p.add_argument("--size", type=int, help="also train at this image size (e.g. 128) for --size-steps steps")
    p.add_argument("--size-steps", type=int, default=1200)
    p.add_argument("--data", type=Path, help="the benchmark's data folder (needed for --size, and to train the "
                   "fold's runs first when --bench does not hold them: as `mmccd benchmark --folds K` would)")
    p.add_argument("--folds", type=int, default=3, help="K of the benchmark the fold's runs are trained for")
    p.add_argument("--reference", action="store_true", help="also score MMCCD with the published protocol")
    p.add_argument("--reference-steps", type=int, nargs="+", metavar="STEPS",
                   help="with --reference: only at these points (default: every point)")
    p.add_argument("--reference-sizes", type=int, nargs="+", metavar="PX",
                   help="with --reference: only at points of these image sizes (default: every size)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                   help="only combine the learning_curve.json of runs made in parallel (e.g. one process per "
                        "method, same --out) into OUT's outputs; trains and evaluates nothing")
    args = p.parse_args()
    if args.merge:
        args.out.mkdir(parents=True, exist_ok=True)
        results = merge_results([json.loads(f.read_text()) for f in args.merge])
        (args.out / "learning_curve.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        write_outputs(args.out, results)
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    pair = tuple(args.pair.split(":"))
    fold_root = args.bench / "runs" / f"fold-{args.fold}"
    methods = sorted(args.methods, key=lambda m: m != "cyclic-unet")  # its backward UNet is MMCCD's
    if not args.steps and not args.size:
        p.error("nothing to do: give --steps, or --size with a bare --steps")
    if args.size and not args.data:
        p.error("--size needs --data (the cases are prepared again at that size)")
    first_run = fold_root / f"{methods[0]}_{pair[0]}-{pair[1]}"
    split = None
    if args.data and not first_run.exists():
        if args.steps:
            benchmark_runs(args.data, args.bench, args.fold, pair, args.folds, args.preset, methods)
        else:  # the size point alone: only the fold's split (and the store's settings) are needed
            split = fold_specs(args.data, args.bench, args.fold, pair, args.folds, args.preset, methods)[0].split
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"command": " ".join(sys.argv), "bench": str(args.bench), "fold": args.fold, "pair": args.pair,
                     "points": []}
    prepared = args.bench / "prepared"
    split = split or run_split(first_run)
    points = [(steps, None) for steps in sorted(args.steps)] + ([(args.size_steps, args.size)] if args.size else [])
    previous: dict[str, Path] = {}
    for steps, size in points:
        tag = f"steps-{steps}" + (f"-size-{size}" if size else "")
        store = prepared
        if size:
            store = args.out / f"prepared-{size}"
            base = json.loads((prepared / "prepare.json").read_text())["config"]
            prepare_dataset(args.data, store, dataclasses.replace(load_config(args.preset).prepare, **{**base,
                                                                    "size": size, "train_slice_window": None}),
                            required=list(pair))
        for method in methods:
            run = args.out / tag / f"{method}_{pair[0]}-{pair[1]}"
            src = previous.get(method) if not size else None
            if src is None and not size:
                src = fold_root / f"{method}_{pair[0]}-{pair[1]}"
            if src is not None:
                copy_run(src, run)
                if backward_is_cyclic_unets(method, methods):
                    shared = run / "checkpoints" / "target_to_source.pt"
                    if shared.exists() and read_run_config(run).train.iterations < steps:
                        shared.unlink()
            reuse = (args.out / tag / f"cyclic-unet_{pair[0]}-{pair[1]}"
                     if backward_is_cyclic_unets(method, methods) else None)
            seconds = train_to(store, run, method, pair, steps, split, args.preset, reuse, size)
            run_size = size or read_run_config(run).prepare.size
            scorings = scorings_at(steps, args.reference, args.reference_steps, run_size, args.reference_sizes)
            point = {"tag": tag, "steps": steps, "size": run_size, "method": method,
                     "trained_seconds_this_call": round(seconds, 1),
                     "train_seconds": read_run_info(run).get("train_seconds"),
                     "scores": evaluate_point(run, method, scorings, ["max_tumour", "all"]),
                     "translation": translation_quality(run)}
            results["points"].append(point)
            print(json.dumps({k: point[k] for k in ("tag", "method")}), {k: round(v["dice"], 3)
                  for k, v in point["scores"].items()}, flush=True)
            if not size:
                previous[method] = run
        (args.out / "learning_curve.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    write_outputs(args.out, results)


def _cell(v: float | None) -> str:
    """A table cell: three decimals, or a dash where there is no value."""
    return "–" if v is None else f"{v:.3f}"


def _translation(point: dict, scoring: str) -> dict:
    """The point's healthy-tissue translation quality under `scoring`: the run's own for a single-scoring method,
    nothing for an MMCCD scoring it was not measured under (the reference)."""
    measured = point["translation"]
    return measured.get(scoring, measured.get("run", {}) if len(measured) == 1 else {})


def merge_results(parts: list[dict]) -> dict:
    """One results dict from several (same bench, fold and pair): every point once per (tag, method), the later
    part's on a repeat; the commands that made them are listed."""
    keys = {(r["bench"], r["fold"], r["pair"]) for r in parts}
    if len(keys) != 1:
        raise SystemExit(f"--merge: the files are of different benchmarks, folds or pairs: {sorted(keys)}")
    points: dict[tuple[str, str], dict] = {}
    for r in parts:
        points.update({(pt["tag"], pt["method"]): pt for pt in r["points"]})
    order = sorted(points, key=lambda k: ("size" in k[0], points[k]["steps"], k[0], k[1]))
    commands = list(dict.fromkeys(r["command"] for r in parts))
    return {**parts[0], "command": " ; ".join(commands), "commands": commands, "points": [points[k] for k in order]}


def write_outputs(out: Path, results: dict) -> None:
    rows = ["| point | method | scoring | val Dice max-tumour | test Dice max-tumour | val Dice volume | "
            "test Dice volume | AUROC volume | translation MAE (healthy) | imagined-stripe MAE (healthy) | "
            "cyclic error (healthy) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for pt in results["points"]:
        for scoring in sorted({k.split("/")[0] for k in pt["scores"]}):
            mt, vol = pt["scores"].get(f"{scoring}/max_tumour", {}), pt["scores"].get(f"{scoring}/all", {})
            q = _translation(pt, scoring)
            rows.append(f"| {pt['tag']} | {pt['method']} | {scoring} | {_cell(mt.get('val_dice'))} "
                        f"| {_cell(mt.get('dice'))} ± {_cell(mt.get('dice_std'))} | {_cell(vol.get('val_dice'))} "
                        f"| {_cell(vol.get('dice'))} | {_cell(vol.get('auroc'))} | {_cell(q.get('translation_mae'))} "
                        f"| {_cell(q.get('stripe_mae'))} | {_cell(q.get('cyclic_error'))} |")
    size_rows = size_table(results)
    text = f"Command: `{results['command']}`\n\n" + "\n".join(rows) + "\n"
    if size_rows:
        text += "\n" + "\n".join(size_rows) + "\n"
        size_figure(results).savefig(out / "learning_curve_size.png", dpi=110)
    (out / "learning_curve.md").write_text(text)
    fig = Figure(figsize=(9, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, slices in zip(axes, ("max_tumour", "all"), strict=True):
        series: dict[str, list[tuple[int, float, float]]] = {}
        for pt in results["points"]:
            if pt["tag"].count("size"):
                continue
            for key, v in pt["scores"].items():
                scoring, sl = key.split("/")
                if sl == slices:
                    series.setdefault(f"{pt['method']} ({scoring})", []).append((pt["steps"], v["dice"],
                                                                                v.get("val_dice", float("nan"))))
        for i, (name, pts) in enumerate(sorted(series.items())):
            xs, test, val = zip(*sorted(pts), strict=True)
            colour = f"C{i}"
            ax.plot(xs, test, "o-", color=colour, label=f"{name}, test")
            ax.plot(xs, val, "s--", color=colour, alpha=0.6, label=f"{name}, validation")
        steps = sorted({pt["steps"] for pt in results["points"] if "size" not in pt["tag"]})
        ax.set_xscale("log")
        ax.set_xticks(steps, [f"{s:,}" for s in steps])
        ax.minorticks_off()
        ax.set_xlabel("training steps per network")
        ax.set_ylabel("mean subject Dice (fold's own validation threshold)")
        ax.set_title("max-tumour slice" if slices == "max_tumour" else "whole volume")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(out / "learning_curve.png", dpi=110)
    print((out / "learning_curve.md").read_text())


def size_pairs(results: dict) -> list[tuple[dict, dict]]:
    """(point at the preset's size, point at --size) of each method trained for the same steps at both sizes."""
    points = results["points"]
    pairs = []
    for big in (pt for pt in points if "size" in pt["tag"]):
        small = [pt for pt in points if "size" not in pt["tag"] and pt["method"] == big["method"]
                 and pt["steps"] == big["steps"]]
        if small:
            pairs.append((small[0], big))
    return pairs


def size_table(results: dict) -> list[str]:
    """Markdown rows: each method and scoring at both image sizes (validation and test Dice), and the test
    difference paired over the fold's test subjects (Wilcoxon, mmccd.evaluation.stats)."""
    pairs = size_pairs(results)
    if not pairs:
        return []
    small_px, big_px = pairs[0][0]["size"], pairs[0][1]["size"]
    rows = [f"Image size, {pairs[0][1]['steps']:,} steps per network: {small_px} px vs {big_px} px "
            "(Dice at each size's own validation threshold; Δ test = "
            f"{big_px} px − {small_px} px, paired over the test subjects)", "",
            f"| method | scoring | slices | val Dice {small_px} px | val Dice {big_px} px | test Dice {small_px} px | "
            f"test Dice {big_px} px | Δ test (paired p, n) | translation MAE {small_px} / {big_px} px | "
            f"translation SSIM {small_px} / {big_px} px |", "|---|---|---|---|---|---|---|---|---|---|"]
    for small, big in pairs:
        for key in sorted(set(small["scores"]) & set(big["scores"])):
            scoring, slices = key.split("/")
            a, b = small["scores"][key], big["scores"][key]
            cmp = compare_paired(b["per_subject"], a["per_subject"], f"{big_px} px", f"{small_px} px",
                                 drop_unshared=True)
            p = "–" if cmp.p_value is None else f"{cmp.p_value:.2g}"
            qa, qb = _translation(small, scoring), _translation(big, scoring)
            rows.append(f"| {small['method']} | {scoring} | {slices.replace('_', '-')} | {_cell(a.get('val_dice'))} "
                        f"| {_cell(b.get('val_dice'))} | {_cell(a['dice'])} | {_cell(b['dice'])} | {cmp.mean_diff:+.3f} "
                        f"(p {p}, n {cmp.n}) | {_cell(qa.get('translation_mae'))} / {_cell(qb.get('translation_mae'))} "
                        f"| {_cell(qa.get('translation_ssim'))} / {_cell(qb.get('translation_ssim'))} |")
    return rows


def size_figure(results: dict) -> Figure:
    """Bars of validation (hatched) and test Dice at both sizes, per method and scoring; max-tumour and volume."""
    pairs = size_pairs(results)
    fig = Figure(figsize=(9, 4), layout="constrained")
    for ax, slices in zip(fig.subplots(1, 2), ("max_tumour", "all"), strict=True):
        labels, x = [], 0
        for small, big in pairs:
            for key in sorted(k for k in set(small["scores"]) & set(big["scores"]) if k.endswith("/" + slices)):
                for j, pt in enumerate((small, big)):
                    v = pt["scores"][key]
                    colour = f"C{j}"
                    ax.bar(x + j * 0.4 - 0.3, v.get("val_dice") or 0.0, 0.2, color=colour, alpha=0.45, hatch="//",
                           label=f"{pt['size']} px, validation" if not labels else None)
                    ax.bar(x + j * 0.4 - 0.1, v["dice"], 0.2, color=colour,
                           label=f"{pt['size']} px, test" if not labels else None)
                labels.append(f"{small['method']}\n({key.split('/')[0]})")
                x += 1
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("mean subject Dice (own validation threshold)")
        ax.set_title(("max-tumour slice" if slices == "max_tumour" else "whole volume")
                     + f", {pairs[0][1]['steps']:,} steps")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    return fig


if __name__ == "__main__":
    main()
