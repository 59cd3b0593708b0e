"""The cross-validation table over the folds a benchmark has finished so far (issue 18, docs/quality.md).

`mmccd benchmark --folds K` writes results.md only when every fold is done; a benchmark stopped part-way (the
session ended, the CPU budget ran out) still holds each finished run's evaluations. This script pools them:
for every requested row, the per-subject Dice of each fold whose evaluations of *all* rows exist (so every
comparison is paired on the same subjects), per max-tumour slice and per whole volume, with each row's
per-fold means and a two-sided Wilcoxon signed-rank test of every pair of rows (`mmccd compare`'s test).

    .venv/bin/python benchmarks/folds_so_far.py --bench results/cv2 --pair flair:t2 \\
        --rows mmccd mmccd@fast-bright dae threshold --out results/cv2/folds_so_far.md

A row is METHOD or METHOD@SCORING (a scoring variant evaluated on METHOD's networks, as the benchmark does);
its evaluations are read from BENCH/runs/fold-F/METHOD_SOURCE-TARGET/eval-SLICES[-PROFILE][@SCORING]/metrics.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from mmccd.evaluation.stats import compare_paired, subject_values
from mmccd.pipeline.benchmark.jobs import eval_folder
from mmccd.pipeline.benchmark.plan import parse_pair, run_name

PROTOCOLS = {"max_tumour": "max-tumour slice", "all": "whole volume"}


def eval_dir(bench: Path, fold: int, row: str, source: str, target: str, slices: str, postprocess: str) -> Path:
    method, _, scoring = row.partition("@")
    run = bench / "runs" / f"fold-{fold}" / run_name(method, source, target)
    return eval_folder(run, slices, None if postprocess == "none" else postprocess, scoring or None)


def finished_folds(bench: Path, rows: Sequence[str], source: str, target: str, postprocess: str) -> list[int]:
    """The folds where every row has both protocols' metrics.json (ascending)."""
    folds = sorted(int(p.name.split("-", 1)[1]) for p in (bench / "runs").glob("fold-*") if p.name[5:].isdigit())
    return [f for f in folds
            if all((eval_dir(bench, f, r, source, target, s, postprocess) / "metrics.json").is_file()
                   for r in rows for s in PROTOCOLS)]


def collect(bench: Path, rows: Sequence[str], source: str, target: str, postprocess: str,
            folds: Sequence[int]) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """{row: {slices: {fold: {subject: dice}}}}."""
    out: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    for row in rows:
        out[row] = {}
        for slices in PROTOCOLS:
            out[row][slices] = {}
            for fold in folds:
                path = eval_dir(bench, fold, row, source, target, slices, postprocess) / "metrics.json"
                metrics = json.loads(path.read_text())
                out[row][slices][fold] = subject_values(metrics["per_subject"])
    return out


def _pooled(per_fold: dict[int, dict[str, float]]) -> dict[str, float]:
    pooled: dict[str, float] = {}
    for fold, values in per_fold.items():
        for sid, v in values.items():
            if sid in pooled:
                raise ValueError(f"subject {sid} is tested by two folds (fold {fold} and another): the folds of "
                                 "one benchmark test each subject once")
            pooled[sid] = v
    return pooled


def tables(data: dict[str, dict[str, dict[int, dict[str, float]]]], folds: Sequence[int]) -> dict[str, Any]:
    rows = list(data)
    summary = []
    for row in rows:
        entry: dict[str, Any] = {"row": row}
        for slices in PROTOCOLS:
            values = list(_pooled(data[row][slices]).values())
            entry[slices] = {"mean": mean(values), "std": stdev(values) if len(values) > 1 else 0.0,
                             "n": len(values),
                             "per_fold": {f: mean(data[row][slices][f].values()) for f in folds}}
        summary.append(entry)
    pairs = []
    for a, b in itertools.combinations(rows, 2):
        entry = {"a": a, "b": b}
        for slices in PROTOCOLS:
            c = compare_paired(_pooled(data[a][slices]), _pooled(data[b][slices]), a, b)
            entry[slices] = {"diff": c.mean_diff, "p": c.p_value, "n": c.n, "a_higher": c.n_a_higher,
                             "b_higher": c.n_b_higher}
        pairs.append(entry)
    return {"folds": list(folds), "summary": summary, "pairs": pairs}


def _p(p: float | None) -> str:
    return "undefined" if p is None else ("<0.001" if p < 0.001 else f"{p:.2g}")


def markdown(result: dict[str, Any], pair: str, postprocess: str, bench: Path) -> str:
    folds = result["folds"]
    lines = [f"# {pair}, folds {', '.join(map(str, folds))} of {bench} ({postprocess} post-processing)", "",
             "| row | Dice max-tumour | Dice volume | " + " | ".join(
                 f"fold {f} (slice / volume)" for f in folds) + " |",
             "|---|---|---|" + "---|" * len(folds)]
    for e in result["summary"]:
        cells = [f"{e[s]['mean']:.3f} ± {e[s]['std']:.3f} (n={e[s]['n']})" for s in PROTOCOLS]
        cells += [f"{e['max_tumour']['per_fold'][f]:.3f} / {e['all']['per_fold'][f]:.3f}" for f in folds]
        lines.append(f"| {e['row']} | " + " | ".join(cells) + " |")
    lines += ["", "Paired over the same subjects (A − B, two-sided Wilcoxon signed-rank):", "",
              "| A − B | Δ max-tumour (p; A / B higher) | Δ volume (p; A / B higher) |", "|---|---|---|"]
    for e in result["pairs"]:
        cells = [f"{e[s]['diff']:+.3f} (p {_p(e[s]['p'])}; {e[s]['a_higher']} / {e[s]['b_higher']})"
                 for s in PROTOCOLS]
        lines.append(f"| {e['a']} − {e['b']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, required=True, help="a benchmark's --out folder")
    parser.add_argument("--pair", default="flair:t2", help="SOURCE:TARGET (default flair:t2)")
    parser.add_argument("--rows", nargs="+", required=True, help="METHOD or METHOD@SCORING, at least two")
    parser.add_argument("--postprocess", default="none", help="none (raw maps) or a reported profile, e.g. field")
    parser.add_argument("--out", type=Path, help="also write the table here (and .json beside it)")
    args = parser.parse_args(argv)
    source, target, _ = parse_pair(args.pair)
    if len(args.rows) < 2:
        parser.error("--rows: give at least two rows to compare")
    folds = finished_folds(args.bench, args.rows, source, target, args.postprocess)
    if not folds:
        print(f"{args.bench}/runs: no fold has finished evaluations of every row {args.rows} "
              f"({args.pair}, {args.postprocess}); expected eval folders such as "
              f"{eval_dir(args.bench, 0, args.rows[0], source, target, 'max_tumour', args.postprocess)}",
              file=sys.stderr)
        return 1
    result = tables(collect(args.bench, args.rows, source, target, args.postprocess, folds), folds)
    text = markdown(result, args.pair, args.postprocess, args.bench)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
