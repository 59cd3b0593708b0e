"""`mmccd preprocess`: the command line over `preprocess_case` / `preprocess_dataset`.

Wiring (in mmccd/cli.py)::

    from mmccd.data.raw import cli as preprocess_cli
    preprocess_cli.add_parser(sub)                # in build_parser, with the other stages
    if args.command == "preprocess":              # in _dispatch
        return preprocess_cli.main(args)

Nothing heavy is imported until `main` runs; a missing extra is a MmccdError naming it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmccd.config import MODALITIES


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `preprocess` stage to the `mmccd` sub-command parsers; returns its parser."""
    p = subparsers.add_parser(
        "preprocess", help="raw scans (NIfTI or DICOM) -> skull-stripped, co-registered BraTS-layout cases",
        description="Read each contrast (NIfTI file or DICOM series folder), co-register every contrast rigidly "
                    "to T1 (else to --source), resample to 1 mm isotropic (voxel axes L, P, S as BraTS), extract "
                    "the brain (deepbet, offline) and apply one mask to all contrasts; write "
                    "<case>/<case>_{t1,t1ce,t2,flair}.nii.gz, <case>_brainmask.nii.gz, a QC montage and "
                    "preprocess.json. Needs `pip install 'mmccd[preprocess]'`. Resumes: finished cases are reused.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--case", type=Path, help="one raw case folder: one NIfTI file or DICOM folder per contrast, "
                                              "named after it (T1w.nii.gz, FLAIR/, t2_tse.nii, ...)")
    src.add_argument("--data", type=Path, help="a folder of raw case folders (processed in parallel)")
    p.add_argument("--out", required=True, type=Path,
                   help="with --case: the case folder to write (its name is the case id); with --data: the folder "
                        "that gets one case folder per raw case")
    p.add_argument("--contrasts", nargs="+", default=list(MODALITIES), choices=MODALITIES, metavar="C",
                   help=f"contrasts every case must have (default: all of {' '.join(MODALITIES)}); others present "
                        "are processed too")
    p.add_argument("--source", choices=MODALITIES,
                   help="registration target when a case has no T1 (default: the first of t1ce, t2, flair present)")
    p.add_argument("--layout", type=Path, help="YAML mapping contrast -> file or folder pattern inside each case "
                                              "folder, e.g. {t1: 'series_3', flair: '*FLAIR*.nii.gz'}")
    p.add_argument("--brain", default="deepbet", choices=("deepbet", "hd-bet", "none"),
                   help="brain extraction: deepbet (default, weights in its wheel), hd-bet (brainles-preprocessing, "
                        "only if its weights are already on disk), none (input already skull-stripped)")
    p.add_argument("--spacing", type=float, default=1.0, help="output voxel size in mm (default 1)")
    p.add_argument("--init", default="scanner", choices=("scanner", "moments"),
                   help="registration start: the scans' own coordinates (default; one session) or centres of mass")
    p.add_argument("--min-similarity", type=float, help="refuse a registration whose NMI is below this "
                                                         "(default the calibrated 1.15)")
    p.add_argument("--no-qc", action="store_true", help="do not write the QC montage")
    p.add_argument("--workers", type=int, help="processes over cases with --data (default 1 per 2 CPUs)")
    p.add_argument("--threads", type=int, help="threads per case (default: CPUs / workers)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device for brain extraction")
    p.add_argument("--overwrite", action="store_true", help="redo cases that are already preprocessed")
    p.add_argument("--stop-on-error", action="store_true", help="with --data: stop at the first failing case")
    return p


def main(args: argparse.Namespace) -> int:
    """Run `mmccd preprocess` from parsed arguments; 0 when every case is done or reused, 1 when some failed.

    Raises MmccdError (DataError, MissingExtraError, OutputExistsError) for the CLI to print."""
    from mmccd.data.raw.extra import require
    from mmccd.data.raw.pipeline import PreprocessConfig, describe, preprocess_case
    from mmccd.data.raw.register import MIN_NMI

    require("SimpleITK", "mmccd preprocess (co-registration)")  # fail before any work when the extra is missing
    if args.brain == "deepbet":
        require("deepbet", "mmccd preprocess (brain extraction)")
    cfg = PreprocessConfig(spacing=args.spacing, brain=args.brain, init=args.init,
                           min_similarity=MIN_NMI if args.min_similarity is None else args.min_similarity,
                           qc=not args.no_qc, threads=args.threads, device=args.device)
    layout = None
    if args.layout:
        layout = _read_layout(args.layout)
    if args.case is not None:
        case = preprocess_case(args.case, args.out, cfg, args.contrasts, args.source, layout, args.overwrite)
        print(describe(case))
        return 0
    from mmccd.data.raw.batch import preprocess_dataset

    summary = preprocess_dataset(args.data, args.out, cfg, args.contrasts, args.source, layout, args.workers,
                                 args.overwrite, args.stop_on_error)
    print(f"preprocessed {len(summary.done)} case(s), reused {len(summary.reused)}, failed {len(summary.failed)} "
          f"-> {args.out}")
    for name, why in summary.failed:
        print(f"failed {name}: {why}", file=sys.stderr)
    return 1 if summary.failed else 0


def _read_layout(path: Path) -> dict[str, str]:
    """The --layout YAML file as {contrast: pattern}; DataError naming the file when it is not such a mapping."""
    import yaml

    from mmccd.errors import DataError

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError("cannot read the layout file", file=path, found=str(exc)) from None
    if not isinstance(data, dict):
        raise DataError("the layout file is not a mapping", file=path, expected="contrast: pattern lines",
                        found=type(data).__name__)
    return {str(k): str(v) for k, v in data.items()}
