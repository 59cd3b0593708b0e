"""`mmccd <stage>`: a thin command line over the typed functions of each stage.

Every expected failure (bad data, bad config, existing outputs, bad checkpoints) is printed as one
line naming what is wrong and what to do, with a non-zero exit; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from mmccd import __version__
from mmccd.errors import MmccdError

log = logging.getLogger("mmccd")

EPILOG = """stages, in order:
  preprocess raw scans (not skull-stripped, not co-registered; NIfTI or DICOM) -> BraTS-layout cases
  prepare   NIfTI cases -> normalised, cropped slice store + subject splits (splits.json)
  train     train a method's networks on healthy slices of the training subjects
  evaluate  threshold on validation subjects, metrics on test subjects, report
  score     anomaly maps for new cases (NIfTI in the input's voxel grid, PNG montage, browsable case view)
  export    a trained run as one model file (`mmccd score --model FILE`; built in: builtin:flair-t2)
  benchmark prepare + train + evaluate several methods and contrast pairs: one results table
  demo      all of the above on a synthetic phantom data set (the embedded default)

example:
  mmccd prepare --data /data/BraTS2021 --out prepared/ --size 128
  mmccd train --prepared prepared/ --method mmccd --preset cpu --out runs/mmccd
  mmccd evaluate --run runs/mmccd
  mmccd score --run runs/mmccd --case /data/new/BraTS-GLI-00001-000 --out maps/
"""


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from the common options (only those given)."""
    o: dict[str, Any] = {}
    for key in ("source", "target", "device", "method"):
        if getattr(args, key, None) is not None:
            o[key] = getattr(args, key)
    if getattr(args, "iterations", None) is not None:
        o.setdefault("train", {})["iterations"] = args.iterations
    if getattr(args, "batch_size", None) is not None:
        o.setdefault("train", {})["batch_size"] = args.batch_size
    if getattr(args, "seed", None) is not None:
        o.setdefault("train", {})["seed"] = args.seed
    if getattr(args, "amp", None) is not None:
        o.setdefault("train", {})["amp"] = args.amp
    if getattr(args, "set", None):
        import yaml

        for item in args.set:
            if "=" not in item:
                raise MmccdError(f"--set expects KEY=VALUE (e.g. train.lr=2e-4), found '{item}'")
            key, value = item.split("=", 1)
            node = o
            parts = key.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            try:
                node[parts[-1]] = yaml.safe_load(value)
            except yaml.YAMLError:
                raise MmccdError(f"--set {item}: the value is not valid YAML (quote text, e.g. "
                                 f"--set name='\"my run\"')") from None
    return o


def _add_config_options(p: argparse.ArgumentParser, method: bool = True) -> None:
    from mmccd.config import MODALITIES

    p.add_argument("--preset", default="cpu",
                   help="config preset: a name (tiny, cpu, fast, reference, gpu; see `mmccd presets`) or a YAML file (default: cpu)")
    if method:
        from mmccd.scoring import method_names

        p.add_argument("--method", choices=method_names(), help="method to train (default: the preset's)")
    p.add_argument("--source", choices=MODALITIES, help="input contrast (default: the preset's, flair)")
    p.add_argument("--target", choices=MODALITIES, help="contrast it is translated to (default: the preset's, t2)")
    p.add_argument("--device", help="auto (CUDA if present), cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.lr=2e-4 --set network.base_channels=64 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from mmccd.config import MODALITIES

    parser = argparse.ArgumentParser(
        prog="mmccd", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Unsupervised anomaly segmentation in multi-modal brain MRI (MMCCD and baselines).")
    parser.add_argument("--version", action="version", version=f"mmccd {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="<stage>")

    p = sub.add_parser("prepare", help="NIfTI cases -> slice store with splits",
                       description="Validate every case, normalise, crop and resize, select slices, write the "
                                   "slice store and subject-level splits (splits.json, written once). Resumes: "
                                   "cases already prepared with the same settings are reused.")
    p.add_argument("--data", required=True, type=Path, help="folder with one subfolder per case (BraTS 2017-2021 or 2023+ naming)")
    p.add_argument("--out", required=True, type=Path, help="prepared store folder to create or resume")
    p.add_argument("--size", type=int, help="square slice size after brain crop + resize (default 128)")
    p.add_argument("--source", default="flair", choices=MODALITIES, help="contrast every case must have (default flair)")
    p.add_argument("--target", default="t2", choices=MODALITIES,
                   help="second contrast every training case must have (default t2)")
    p.add_argument("--layout", type=Path, help="YAML mapping modality -> file pattern for other layouts, "
                   "e.g. {t1: '{case}_T1w.nii.gz', flair: '*FLAIR*.nii*', seg: '{case}_mask.nii.gz'}")
    p.add_argument("--normalisation", choices=["percentile", "reference"],
                   help="percentile: [p1,p99] of brain -> [-1,1] (default); reference: the authors' half-range centring")
    p.add_argument("--train-window", nargs=2, type=int, metavar=("FIRST", "LAST"),
                   help="restrict training slices to this axial index window, e.g. 70 89 (the reference protocol)")
    p.add_argument("--preset", default=None, help="take the prepare section from this preset (default: built-in defaults)")
    p.add_argument("--workers", type=int, help="processes over cases (default min(4, CPUs))")
    p.add_argument("--stop-on-error", action="store_true", help="stop at the first bad case instead of skipping it")
    p.add_argument("--overwrite", action="store_true", help="replace a store prepared with other settings")

    p = sub.add_parser("train", help="train a method on healthy training slices",
                       description="Train every network of a method (e.g. MMCCD: masked diffusion forward + UNet "
                                   "backward) on tumour-free slices of the training subjects. Checkpoints carry the "
                                   "resolved config and code version; --resume continues a stopped run exactly.")
    p.add_argument("--prepared", required=True, type=Path, help="store written by `mmccd prepare`")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    _add_config_options(p)
    p.add_argument("--iterations", type=int, help="training steps per network (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="global batch size (default: the preset's)")
    p.add_argument("--seed", type=int, help="seed for weights, data order and noise (default 0)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16", "auto"],
                   help="mixed precision: bf16 (CPU or GPU), fp16 (CUDA only), auto (bf16 where native)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete the run in --out and start again")

    p = sub.add_parser("evaluate", help="threshold on validation, metrics on test, report",
                       description="Score the validation and test subjects' evaluation slices, choose the threshold "
                                   "maximising mean Dice on VALIDATION subjects, apply it once to test, and write "
                                   "metrics.json, per_slice.csv, per_subject.csv, figures/ and report.html in the run.")
    p.add_argument("--run", required=True, type=Path, help="run folder written by `mmccd train`")
    p.add_argument("--slices", choices=["max_tumour", "all"], help="max_tumour: one slice per subject (reference protocol); all: every slice with brain")
    p.add_argument("--device", help="device for scoring (default: the run's)")
    p.add_argument("--scoring", default="auto", metavar="PRESET",
                   help="score with this preset's `score` section: auto (default: the method's own default, fast for "
                        "MMCCD runs, else the run's; the same default as `mmccd score`), run, fast, reference, or a "
                        "YAML file (docs/speed.md)")
    p.add_argument("--erode", type=int, default=0, help="post-processing: erode the brain mask by N px (default off)")
    p.add_argument("--median", type=int, default=0, help="post-processing: median filter of size N on the map (default off)")
    p.add_argument("--min-component", type=int, default=0, help="post-processing: drop predicted components under N px (default off)")
    p.add_argument("--test-data", type=Path, help="evaluate on this other labelled dataset instead of the run's test "
                   "subjects (every case with a segmentation; anomaly = label > 0); the threshold is still chosen on "
                   "the run's validation subjects")
    p.add_argument("--layout", type=Path, help="--test-data's file layout: YAML mapping modality (and seg) to a file "
                   "pattern, e.g. {flair: '*FLAIR*.nii*', seg: '{case}_lesions.nii.gz'}")
    p.add_argument("--out", type=Path, help="folder for metrics.json, the CSVs, figures/ and report.html (default: the run; "
                   "`mmccd score` takes its threshold from the run's metrics.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an evaluation made with other settings")

    p = sub.add_parser("score", help="anomaly maps for new cases, written as NIfTI",
                       description="Score every axial slice with brain of a case folder (or a single NIfTI of the "
                                   "source contrast) and write the map back into the input's voxel grid: "
                                   "<case>_anomaly.nii.gz (float), <case>_pred_mask.nii.gz (binary, at the run's "
                                   "validation threshold) and <case>_montage.png. No segmentation needed.")
    p.add_argument("--run", type=Path, help="trained run folder")
    p.add_argument("--model", help="a model file from `mmccd export`, or a built-in model: builtin:flair-t2 "
                   "(instead of --run; no training needed)")
    p.add_argument("--case", required=True, type=Path, nargs="+",
                   help="case folder(s), single NIfTI file(s) of the source contrast, or a folder of case folders")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--threshold", type=float, help="binary-mask threshold (default: the one chosen on validation by `mmccd evaluate`)")
    p.add_argument("--device", help="device (default: the run's)")
    p.add_argument("--scoring", default="auto", metavar="PRESET",
                   help="score with this preset's `score` section: auto (default: fast for MMCCD runs, else the "
                        "run's), fast, reference (the published protocol, ~1000x slower), run, or a YAML file")
    p.add_argument("--no-view", action="store_true", help="do not write <case>_view.html (the browsable case view)")
    p.add_argument("--preprocess", action="store_true",
                   help="each --case is a RAW scan folder (not skull-stripped, not co-registered; NIfTI or DICOM): "
                        "run `mmccd preprocess` on it first (into OUT/preprocessed/) and write the maps back onto the "
                        "raw source scan's own grid (needs mmccd[preprocess])")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs for these cases")

    from mmccd.data.raw import cli as preprocess_cli

    preprocess_cli.add_parser(sub)

    p = sub.add_parser("export", help="a trained run as one model file (weights, threshold, settings, provenance)",
                       description="Write one self-describing model file of a trained run: config, EMA weights, the "
                                   "validation threshold and the score settings it belongs to, the healthy "
                                   "calibration when used, contrast pair, preprocessing settings, training data and "
                                   "its terms, code version. Score with it: `mmccd score --model FILE`.")
    p.add_argument("--run", required=True, type=Path, help="trained run folder")
    p.add_argument("--out", required=True, type=Path, help="model file to write, e.g. models/mmccd-flair-t2.mmccd")
    p.add_argument("--scoring", default="auto", metavar="PRESET",
                   help="the score settings the model ships with (default auto: the method's default)")
    p.add_argument("--threshold", type=float, help="the threshold to ship (default: the run's validation threshold "
                   "for these settings, chosen now on its validation volumes if no evaluation made one)")
    p.add_argument("--half", action="store_true", help="store the weights in float16 (half the size; maps differ "
                   "from the run's by float16 rounding)")
    p.add_argument("--description", help="a description of the training data to put in the file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file")

    p = sub.add_parser("benchmark", help="train and evaluate several methods under one protocol: one results table",
                       description="For each contrast pair and method: prepare the data (or reuse OUT/prepared), train "
                                   "(or reuse finished networks in OUT/runs/), choose the threshold on validation "
                                   "subjects, evaluate the test subjects per max-tumour slice (the reference protocol) "
                                   "and per whole volume, and write OUT/results.md, results.csv, results.json and "
                                   "report.html. Run it again to resume: finished work is reused.")
    p.add_argument("--data", required=True, type=Path, help="folder with one subfolder per case (with segmentations)")
    p.add_argument("--preset", default="cpu", help="config preset: a name (tiny, cpu, reference, gpu; see `mmccd presets`) "
                   "or a YAML file (default: cpu)")
    p.add_argument("--out", required=True, type=Path, help="output folder; an existing benchmark there is resumed")
    from mmccd.scoring import method_names

    p.add_argument("--methods", nargs="+", default=["cyclic-unet", "mmccd", "threshold"], metavar="METHOD",
                   help=f"methods to compare, of {', '.join(method_names())} (default: cyclic-unet mmccd threshold); "
                        "METHOD@PRESET is a variant: the method trained and scored with that preset, e.g. "
                        "mmccd@fast-cal (docs/methods.md)")
    p.add_argument("--folds", type=int, metavar="K",
                   help="subject-level K-fold cross-validation (folds written once to prepared/folds.json): every "
                        "subject is tested once; without it, the store's one split (splits.json)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained and evaluated in parallel processes (default 1; "
                   "on a CPU use the number of cores: each job gets cores / jobs threads)")
    p.add_argument("--seeds", nargs="+", type=int, default=[], metavar="SEED",
                   help="also train mmccd, cyclic-unet and dae of fold 0 with these training seeds (their variants "
                        "that only score differently are evaluated on those networks too): the seed spread beside "
                        "the subject spread, and which differences exceed it")
    p.add_argument("--seed-methods", nargs="+", metavar="METHOD",
                   help="the rows of the first pair the seed study repeats instead (e.g. mmccd dae mmccd@fast-bright: "
                        "leaves out a slow scoring variant)")
    p.add_argument("--postprocess", nargs="+", default=[], choices=["field"], metavar="PROFILE",
                   help="named post-processing profiles reported beside the raw numbers: field (median, brain "
                        "erosion, small components as in the cDDPM/pDDPM code, scaled to the image size)")
    p.add_argument("--estimate-only", action="store_true", help="print the plan and its measured time estimate, then stop")
    p.add_argument("--pairs", nargs="+", default=["flair:t2"], metavar="SOURCE:TARGET[=METHODS]",
                   help="contrast pairs of t1, t1ce, t2, flair; the source is the input at inference (default: flair:t2); "
                        "t2:flair=mmccd,dae runs only those methods on that pair")
    p.add_argument("--test-layout", type=Path, help="--test-data's file layout: a YAML mapping modality (and seg) to a "
                   "file pattern, for datasets not in BraTS layout (any lesion label > 0 is the anomaly)")
    p.add_argument("--test-data", type=Path, help="another folder of cases: every case with a segmentation is also "
                   "evaluated as test (threshold still chosen on the training data's validation subjects)")
    p.add_argument("--protocols", nargs="+", choices=["max_tumour", "all"], default=["max_tumour", "all"],
                   help="max_tumour: one slice per test subject (reference); all: whole volumes (default: both)")
    p.add_argument("--erode", type=int, default=0, help="post-processing: erode the brain mask by N px (default off)")
    p.add_argument("--median", type=int, default=0, help="post-processing: median filter of size N on the map (default off)")
    p.add_argument("--min-component", type=int, default=0, help="post-processing: drop predicted components under N px (default off)")
    p.add_argument("--scoring", default="auto", metavar="PRESET",
                   help="score settings: auto (the `fast` preset's for MMCCD, each run's own for the others; default), "
                        "run (each run's own), or a preset such as reference or fast for every method")
    p.add_argument("--overwrite", action="store_true", help="delete the benchmark in --out (store, runs, results) and start again")

    p = sub.add_parser("compare", help="two rows of a benchmark's results, paired on the same subjects (Wilcoxon)",
                       description="Per-subject Dice differences A - B of two rows of a benchmark's results.json "
                                   "over the subjects both evaluated, with a two-sided Wilcoxon signed-rank p-value, "
                                   "per max-tumour slice and per whole volume.")
    p.add_argument("results", type=Path, help="a benchmark folder or its results.json")
    p.add_argument("a", help="row A: a method as in the table (e.g. mmccd@fast-bright), or METHOD/SOURCE:TARGET")
    p.add_argument("b", help="row B, the same way")
    p.add_argument("--pair", help="the contrast pair of both rows (e.g. flair:t2) when a method has several")
    p.add_argument("--postprocess", default="none", help="none (raw maps, default) or a profile the benchmark "
                   "reported, e.g. field")
    p.add_argument("--test-set", help="a test set's label in results.json (default: the benchmark's own test split)")

    p = sub.add_parser("demo", help="the whole pipeline on a synthetic phantom (minutes on a CPU)",
                       description="Generate a SYNTHETIC multi-contrast brain phantom data set, prepare it, train "
                                   "Cyclic UNet and MMCCD with the `tiny` preset, evaluate both and write reports.")
    p.add_argument("--out", type=Path, default=Path("results/demo"), help="output folder (default results/demo)")
    p.add_argument("--cases", type=int, default=12, help="number of synthetic cases (default 12)")
    p.add_argument("--methods", nargs="+", default=["cyclic-unet", "mmccd"], help="methods to run (default cyclic-unet mmccd)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")
    p.add_argument("--device", help="device (default auto)")

    sub.add_parser("presets", help="list the config presets", description="List the config presets and their files.")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _dispatch(args)
    except MmccdError as exc:
        if args.debug:
            raise
        print(f"mmccd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmccd {args.command}: interrupted; finished work is kept (use --resume where offered)", file=sys.stderr)
        return 130
    except OSError as exc:  # the environment, not the data: permissions, full disk, a vanished mount
        if args.debug:
            raise
        from mmccd.atomic import disk_full_error, is_disk_full

        if is_disk_full(exc):  # a write outside the atomic helpers (a folder, a log): the same one line
            print(f"mmccd {args.command}: error: {disk_full_error(exc.filename)}", file=sys.stderr)
            return 2
        where = f": {exc.filename}" if exc.filename else ""
        print(f"mmccd {args.command}: error: {exc.strerror or exc}{where}; check the path, its permissions and the "
              "free disk space (--debug shows the traceback)", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "presets":
        from mmccd.config import CONFIG_DIR, preset_names

        for name in preset_names():
            first = (CONFIG_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
            print(f"{name:12s} {first}")
        return 0
    from mmccd.distributed import distributed_session, env_world_size, is_main

    if env_world_size() > 1 and args.command not in ("prepare", "train", "score"):
        raise MmccdError(f"`mmccd {args.command}` runs in one process: start it without torchrun "
                         "(prepare, train and score are the stages that use several processes)")
    if args.command == "prepare":
        with distributed_session(None):  # CPU work: gloo
            return _prepare(args)
    if args.command == "train":
        from mmccd.config import load_config
        from mmccd.pipeline.runs import train_run

        cfg = load_config(args.preset, _overrides(args))
        with distributed_session(cfg.device):
            train_run(args.prepared, args.out, cfg, overwrite=args.overwrite, resume=args.resume)
            if is_main():
                print(f"trained {cfg.method} -> {args.out}")
        return 0
    if args.command == "evaluate":
        from mmccd.evaluation.postprocess import PostProcess
        from mmccd.pipeline.evaluate import evaluate_run
        from mmccd.pipeline.runs import read_run_config
        from mmccd.scoring import resolve_scoring

        settings = resolve_scoring(read_run_config(args.run), args.scoring)
        pp = PostProcess(erode=args.erode, median=args.median, min_component=args.min_component)
        if args.test_data is not None:
            from mmccd.pipeline.evaluate import evaluate_on_test_data

            evaluation = evaluate_on_test_data(args.run, args.test_data, settings, layout=args.layout,
                                               slices=args.slices, device=args.device, postprocess=pp,
                                               out_dir=args.out, overwrite=args.overwrite)
        else:
            if args.layout is not None:
                raise MmccdError("--layout describes --test-data's files: give --test-data too")
            evaluation = evaluate_run(args.run, settings, slices=args.slices, device=args.device, postprocess=pp,
                                      out_dir=args.out, overwrite=args.overwrite)
        _print_summary(evaluation.summary)
        print(f"report: {evaluation.folder / 'report.html'}")
        return 0
    if args.command == "score":
        from mmccd.pipeline.score import score_cases

        with distributed_session(args.device or "auto"):
            summary = score_cases(args.run, args.case, args.out, threshold=args.threshold, device=args.device,
                                  overwrite=args.overwrite, scoring=args.scoring, view=not args.no_view,
                                  model=args.model, preprocess=args.preprocess)
            if not is_main():  # every rank holds the merged summary; rank 0 prints it
                return 1 if summary.skipped and not summary.written else 0
        for case_id, files in summary.written.items():
            print(f"{case_id}: " + ", ".join(str(f) for f in files))
        for case_id, why in summary.skipped:
            print(f"skipped {case_id}: {why}", file=sys.stderr)
        return 1 if summary.skipped and not summary.written else 0
    if args.command == "preprocess":
        from mmccd.data.raw import cli as preprocess_cli

        return preprocess_cli.main(args)
    if args.command == "export":
        from mmccd.pipeline.export import export_run

        path = export_run(args.run, args.out, args.scoring, half=args.half, threshold=args.threshold,
                          description=args.description, overwrite=args.overwrite)
        print(f"model: {path} ({path.stat().st_size / 1e6:.1f} MB); score with: mmccd score --model {path} "
              "--case CASE --out maps")
        return 0
    if args.command == "benchmark":
        from mmccd.evaluation.postprocess import PostProcess
        from mmccd.pipeline.benchmark import run_benchmark

        run_benchmark(args.data, args.out, preset=args.preset, methods=args.methods, pairs=args.pairs,
                      test_data=args.test_data, overwrite=args.overwrite, protocols=args.protocols,
                      scoring=args.scoring, folds=args.folds, profiles=args.postprocess, seeds=args.seeds,
                      seed_methods=args.seed_methods, jobs=args.jobs, test_layout=args.test_layout, estimate_only=args.estimate_only,
                      postprocess=PostProcess(erode=args.erode, median=args.median, min_component=args.min_component))
        if args.estimate_only:
            return 0
        print((Path(args.out) / "results.md").read_text())
        print(f"figures and per-run reports: {Path(args.out) / 'report.html'}")
        return 0
    if args.command == "compare":
        from mmccd.pipeline.benchmark.compare import compare_rows, format_comparison

        comparisons = compare_rows(args.results, args.a, args.b, pair=args.pair, postprocess=args.postprocess,
                                   test_set=args.test_set)
        print("\n".join(format_comparison(comparisons)))
        return 0
    if args.command == "demo":
        from mmccd.pipeline.demo import run_demo

        run_demo(args.out, n_cases=args.cases, methods=args.methods, overwrite=args.overwrite, device=args.device)
        return 0
    raise MmccdError(f"unknown command {args.command}")


def _prepare(args: argparse.Namespace) -> int:
    from mmccd.config import PrepareConfig, load_config, merge
    from mmccd.data.prepare import prepare_dataset

    cfg = load_config(args.preset).prepare if args.preset else PrepareConfig()
    o: dict[str, Any] = {}
    if args.size is not None:
        o["size"] = args.size
    if args.normalisation:
        o["normalisation"] = args.normalisation
    if args.train_window:
        o["train_slice_window"] = list(args.train_window)
    if args.workers is not None:
        o["workers"] = args.workers
    cfg = merge(cfg, o, "options")
    layout = None
    if args.layout:
        from mmccd.config import read_yaml

        layout = {str(k): str(v) for k, v in read_yaml(args.layout).items()}
    summary = prepare_dataset(args.data, args.out, cfg, layout=layout,
                              on_error="stop" if args.stop_on_error else "skip", overwrite=args.overwrite,
                              required=(args.source, args.target))
    from mmccd.distributed import is_main

    if is_main():  # every rank holds the merged summary under torchrun
        print(f"prepared {len(summary.prepared)} case(s), reused {len(summary.reused)}, skipped {len(summary.skipped)} -> {args.out}")
        for case_id, why in summary.skipped:
            print(f"  skipped {case_id}: {why}", file=sys.stderr)
    return 0 if (summary.prepared or summary.reused) else 1


def _print_summary(summary: dict[str, Any]) -> None:
    keys = [k for k in summary if isinstance(summary[k], (int, float))]
    width = max((len(k) for k in keys), default=0)
    for k in keys:
        v = summary[k]
        print(f"  {k:{width}s}  {v:.4f}" if isinstance(v, float) else f"  {k:{width}s}  {v}")


if __name__ == "__main__":
    sys.exit(main())
