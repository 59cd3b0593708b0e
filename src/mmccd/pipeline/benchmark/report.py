"""The benchmark's outputs, leading with the answer: results.md, report.html (the same tables, figures, details
collapsed), results.json (every exact number) and results.csv (one row per entry, scalar keys).

Tables, one per source contrast: Dice per max-tumour slice and per whole volume (mean ± std over all test
subjects, n), AUROC and AUPRC per volume, lesion sensitivity, false-positive components per volume, HD95, and
each method's paired difference to the best method with its Wilcoxon p-value; then the same with the named
post-processing; then per-fold means, the seed study, the oracle and the costs.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import io
import json
import os
import platform
import shutil
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmccd.atomic import atomic_write, atomic_write_text
from mmccd.evaluation.figures import subject_strip_plot
from mmccd.evaluation.report import to_jsonable
from mmccd.evaluation.thresholds import QUANTILE_RANGE
from mmccd.provenance import code_version

_MT = "reference protocol, each test subject's max-tumour slice"
_VOL = "whole volumes, every evaluated slice of a test subject concatenated (3D)"
AGGREGATION = {  # what each key of a results entry aggregates over; "_std" = population std over the same units
    "dice_val_threshold": f"{_MT}: Dice per subject at its fold's validation threshold, mean over all test subjects "
                          "(pooled over folds; _n: how many)",
    "dice_oracle": f"{_MT}: mean over folds of the mean subject Dice at the TEST-optimal threshold (oracle): only "
                   "for comparison with papers that tuned on test, never a result",
    "auroc": f"{_MT}: AUROC per subject (threshold-free), mean over subjects (also auprc)",
    "pooled_dice": f"{_MT}: all brain pixels of a fold's test slices together, mean over folds (also pooled_auroc/auprc)",
    "dice_volume": f"{_VOL}: Dice per subject at its fold's validation threshold (chosen on validation volumes), "
                   "mean over subjects",
    "dice_volume_oracle": f"{_VOL}: mean over folds of the test-optimal Dice (oracle), never a result",
    "auroc_volume": f"{_VOL}: AUROC per subject, mean over subjects (also auprc_volume)",
    "slice_mean_dice_volume": "whole-volume protocol: Dice per slice, mean over slices, mean over folds",
    "lesion_sensitivity": f"{_VOL}: per subject, the fraction of its 3D ground-truth lesions (26-connected) that a "
                          "predicted voxel overlaps, mean over subjects; pooled_lesion_sensitivity: all lesions together",
    "fp_per_volume": f"{_VOL}: predicted 3D components that overlap no lesion, mean over subjects",
    "hd95_mm_median": f"{_VOL}: 95th-percentile symmetric Hausdorff distance per subject in mm, median over the "
                      "subjects where both masks are non-empty (hd95_mm_n_undefined: the others)",
    "threshold": "chosen on each fold's validation subjects (best mean subject Dice), applied once to its test "
                 "subjects; a list with one per fold",
    "vs_best": "per protocol: the best method of the table (same pair, test set and post-processing) by mean Dice, "
               "and this method's per-subject Dice minus the best's over the same subjects: mean_diff, std_diff, "
               "Wilcoxon signed-rank p_value (two-sided, not adjusted for multiple comparisons), n",
    "per_fold": "per protocol and fold: test subjects, mean Dice, threshold, oracle Dice",
    "val_dice": "mean over folds of the mean VALIDATION-subject Dice at the chosen threshold (also val_dice_volume): "
                "the only number a choice between variants may be made on (the test subjects never take part)",
    "vs_base": "a variant (METHOD@PRESET) against its plain method over the same subjects: mean_diff, Wilcoxon p",
    "per_subject_dice": "Dice of each test subject at its fold's validation threshold, per slice protocol",
    "seconds_per_slice": "wall-clock scoring seconds per test slice on the machine stated (mean over folds)",
    "train_seconds": "wall-clock training seconds summed over the method's networks and folds (a shared network "
                     "counts with the time it took where it was trained)",
}

LITERATURE = [  # other protocols, NOT comparable: see ../shared/MISSION.md
    ("intensity threshold", "19.7"), ("f-AnoGAN", "24.0"), ("VAE", "28.8"), ("AE", "31.5"),
    ("DAE (coarse-noise denoising AE)", "45.4"), ("DDPM / AnoDDPM (partial diffusion, simplex noise)", "44.3"),
    ("pDDPM (patched)", "49.8"), ("cDDPM (conditioned DDPM)", "53.4"),
]
PAPER = [  # MMCCD's own table (authors' poster): BraTS 2021, 128 px, one max-tumour slice, threshold tuned on TEST
    ("MMCCD FLAIR→T2", "0.609"), ("Cyclic UNet FLAIR→T2", "0.581"), ("DDPM FLAIR→T2", "0.566"),
    ("DAE FLAIR→T2", "0.462"), ("VAE", "0.264"), ("AE", "0.225"), ("MMCCD FLAIR→T1", "0.609"),
    ("MMCCD T2→FLAIR", "0.487"), ("MMCCD T2→T1", "0.499"), ("MMCCD T1→T2", "0.334"), ("MMCCD T1→FLAIR", "0.424"),
]


def describe_scoring(method: str, score: Mapping[str, Any] | None) -> str:
    """How the maps were scored, in words (the settings that change an MMCCD map; "–" for other methods)."""
    if method != "mmccd" or not score:
        return "–"
    masks = (f"{score['num_masks']} {score.get('mask_family', 'stripes')}" if score["num_masks"]
             else f"stripes every {score['mask_stride']} px")
    if score.get("stripes_per_mask", 1) > 1:
        masks += f" ({score['stripes_per_mask']} stripes each)"
    text = f"{masks} × {score['ddim_steps']} DDIM step{'s' if score['ddim_steps'] != 1 else ''}, " \
           f"{score.get('timestep_spacing', 'leading')}"
    if score.get("composite"):
        text += ", composite backward"
    return text


# ---------------------------------------------------------------- formatting


def _f(v: Any, spec: str = ".3f") -> str:
    """A number for a table: "–" when missing, integers as they are."""
    if v is None:
        return "–"
    return format(v, spec) if isinstance(v, float) else str(v)


def _pm(e: Mapping[str, Any], key: str) -> str:
    mean = e.get(key)
    return "–" if mean is None else f"{_f(mean)} ± {_f(e.get(f'{key}_std'))} (n={e.get(f'{key}_n', '?')})"


def _p(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.2g}" if v >= 0.001 else "<0.001"


def _vs(e: Mapping[str, Any], slices: str) -> str:
    """'best' or 'Δ -0.051, p 0.03 (n=26)' for one protocol."""
    c = (e.get("vs_best") or {}).get(slices)
    if not c:
        return "–"
    if c.get("is_best"):
        return "**best**"
    if "mean_diff" not in c:
        return "–"
    return f"{c['mean_diff']:+.3f}, p {_p(c.get('p_value'))} (n={c['n']})"


def _tables(entries: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each results table; shared by results.md and report.html."""
    protocols = meta["protocols"]
    raw = meta["postprocess"][0]
    tables = []
    by_source: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for e in entries:
        by_source[(e["source"], e["test_set"], e["postprocess"])].append(e)
    for (source, test_set, pp), rows in by_source.items():
        head = ["method", "source→target"]
        if "max_tumour" in protocols:
            head += ["Dice, max-tumour slice", "vs best (Δ, p)"]
        if "all" in protocols:
            head += ["Dice, whole volume", "vs best (Δ, p)", "AUROC, volume", "AUPRC, volume", "lesion sensitivity",
                     "FP components / volume", "HD95 mm (median)"]
        body = []
        for e in rows:
            row = [e["method"], f"{e['source']}→{e['target']}"]
            if "max_tumour" in protocols:
                row += [_pm(e, "dice_val_threshold"), _vs(e, "max_tumour")]
            if "all" in protocols:
                row += [_pm(e, "dice_volume"), _vs(e, "all"), _pm(e, "auroc_volume"), _pm(e, "auprc_volume"),
                        _pm(e, "lesion_sensitivity"), _f(e.get("fp_per_volume"), ".1f"), _f(e.get("hd95_mm_median"), ".1f")]
            body.append(row)
        what = f"{source.upper()} input" + (f", {test_set}" if test_set != entries[0]["test_set"] else "")
        post = "raw maps" if pp == raw else f"post-processed: {pp}"
        tables.append((f"{what} — {post}", head, body))
    if meta.get("folds"):
        head = ["method", "source→target", "post-processing"] + [
            f"fold {k} ({'volume' if s == 'all' else 'slice'})" for s in protocols for k in range(meta["folds"])]
        body = [[e["method"], f"{e['source']}→{e['target']}", e["postprocess"]] +
                [f"{_f(r['dice'])} (n={r['n']})" for s in protocols for r in e["per_fold"][s]]
                for e in entries if e["test_set"] == entries[0]["test_set"]]
        tables.append(("Per fold: mean Dice over each fold's test subjects", head, body))
    internal = [e for e in entries if e["test_set"] == entries[0]["test_set"] and e["postprocess"] == raw]
    head = ["method", "source→target", "validation Dice (max-tumour / volume) ‡", "oracle Dice, max-tumour †",
            "oracle Dice, volume †", "scoring", "training seconds", "scoring seconds per slice"]
    body = [[e["method"], f"{e['source']}→{e['target']}", f"{_f(e.get('val_dice'))} / {_f(e.get('val_dice_volume'))}",
             _f(e.get("dice_oracle")), _f(e.get("dice_volume_oracle")), e.get("scoring", "–"),
             _f(e.get("train_seconds"), ".0f"), _f(e.get("seconds_per_slice"), ".3g")] for e in internal]
    tables.append(("Validation Dice ‡ (what a choice between variants may use), oracle † (test-optimal threshold, for "
                   "comparison with papers only, not a result) and cost", head, body))
    variants = [e for e in entries if e.get("vs_base") and e["postprocess"] == raw]
    if variants:
        head = ["variant", "source→target", "test set"] + [
            f"vs {'plain'} ({'volume' if s == 'all' else 'max-tumour'}: Δ Dice, p)" for s in protocols]
        body = [[e["method"], f"{e['source']}→{e['target']}", e["test_set"]] + [
            (lambda c: f"{c['mean_diff']:+.3f}, p {_p(c.get('p_value'))} (n={c['n']})")(e["vs_base"][s])
            for s in protocols] for e in variants]
        tables.append(("Variants against their plain method (paired, same subjects)", head, body))
    return tables


def _seed_table(seeds: Sequence[Mapping[str, Any]], protocols: Sequence[str]) -> tuple[str, list[str], list[list[str]]]:
    head = ["method", "source→target", "seeds"]
    for s in protocols:
        tag = "volume" if s == "all" else "max-tumour"
        head += [f"Dice per seed ({tag})", f"std over seeds ({tag})", f"std over subjects ({tag})"]
    body = []
    for r in seeds:
        row = [r["method"], r["pair"].replace(":", "→"), ", ".join(map(str, r["seeds"]))]
        for s in protocols:
            sfx = "_volume" if s == "all" else ""
            row += [", ".join(_f(v) for v in r[f"dice_per_seed{sfx}"].values()), _f(r[f"seed_std{sfx}"]),
                    _f(r[f"subject_std{sfx}"])]
        body.append(row)
    return "Training noise: the same runs of fold 0 with other training seeds", head, body


def _seed_differences_table(seeds: Sequence[Mapping[str, Any]],
                            protocols: Sequence[str]) -> tuple[str, list[str], list[list[str]]]:
    """Each pair of seed-studied methods: the difference of their seed-mean Dice against the seed spread."""
    head = ["methods (A − B)", "source→target"]
    for s in protocols:
        tag = "volume" if s == "all" else "max-tumour"
        head += [f"Δ Dice ({tag})", f"2 × seed std ({tag})", f"larger than the seed spread ({tag})"]
    body = []
    for i, a in enumerate(seeds):
        for b in seeds[i + 1:]:
            if b["pair"] != a["pair"]:
                continue
            row = [f"{a['method']} − {b['method']}", a["pair"].replace(":", "→")]
            for s in protocols:
                d = a[f"differences_vs_seed_spread{'_volume' if s == 'all' else ''}"][b["method"]]
                row += [_f(d["diff"], "+.3f"), _f(2 * d["seed_spread"]), "yes" if d["larger_than_spread"] else "no"]
            body.append(row)
    return ("Which differences exceed the training noise (fold 0's test subjects; seed means; "
            "larger = |Δ| > 2 × the larger seed std)", head, body)


def protocol_statement(meta: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The protocol, one sentence per item, as written into results.md and report.html."""
    cfg = meta["config"]
    lo, hi = QUANTILE_RANGE
    n_cand = cfg["eval"]["threshold_quantiles"]
    pairs = ", ".join(f"{s}→{t} ({', '.join(ms)})" for s, t, ms in meta["pairs"])
    splits = meta["splits"]
    if meta.get("folds"):
        split_text = (f"Subject-level {meta['folds']}-fold cross-validation over the {meta['n_labelled']} cases with a "
                      f"segmentation (`prepared/folds.json`, seed {meta['split_seed']}): every subject is a test "
                      f"subject exactly once; in each fold {len(splits[0]['val'])} validation subjects are drawn from "
                      f"that fold's non-test subjects and the other {len(splits[0]['train'])}–"
                      f"{max(len(s['train']) for s in splits)} train.")
    else:
        s = splits[0]
        split_text = (f"Subject-level split written once to `prepared/splits.json` (seed {meta['split_seed']}): "
                      f"{len(s['train'])} training, {len(s['val'])} validation, {len(s['test'])} test subjects.")
    items = [
        f"Data: `{meta['data']}`, {meta['n_prepared']} cases prepared"
        + (f", {len(meta['skipped'])} skipped ({', '.join(c for c, _ in meta['skipped'][:5])})" if meta["skipped"] else "")
        + ". " + split_text,
        "Training on tumour-free axial slices of the training subjects only; no segmentation is used for training.",
        f"Contrasts (source→target, methods): {pairs}. Training needs both; scoring uses the source only; "
        "single-contrast methods (threshold, AE, DAE, AnoDDPM, cDDPM) read the same source contrast.",
        f"Preset `{meta['preset']}`: slices {cfg['prepare']['size']}×{cfg['prepare']['size']} px, "
        f"{cfg['train']['iterations']} iterations at batch {cfg['train']['batch_size']} per network"
        + next((f"; MMCCD scoring: {e['scoring']} (`--scoring {meta.get('scoring', 'auto')}`)"
                for e in entries if e["method"] == "mmccd"), "") + ".",
        f"Threshold: for each method, pair, fold and protocol, the candidate with the best mean subject Dice on that "
        f"fold's VALIDATION subjects, among up to {n_cand} candidates at quantiles of the validation brain scores from "
        f"the {100 * lo:g}th to the {100 * hi:g}th percentile; applied once to the fold's test subjects, which never "
        "take part in the choice.",
        "Numbers: mean ± std (population) over all test subjects pooled over folds, with n; per-fold means in their "
        "own table. 'vs best': the per-subject Dice difference to the best method of the same table and the "
        "two-sided Wilcoxon signed-rank p-value over the same subjects (not adjusted for multiple comparisons; "
        "with fewer than 6 non-zero differences p < 0.05 is impossible, which the JSON notes say).",
        "† Oracle Dice: the same search on the TEST subjects, labelled, only to compare with papers that tuned "
        "on test (as the reference code does); it is not a result.",
        "Metrics inside the brain mask: prediction = score ≥ threshold; Dice of two empty masks = 1; AUROC/AUPRC "
        "of a subject with one class only are left out of the means.",
        "Levels: per max-tumour slice = each test subject's slice with the most tumour (the reference protocol); "
        f"per volume = every axial slice with brain area ≥ {cfg['prepare']['min_brain_fraction']:g} of the crop "
        "box, the subject's voxels concatenated (3D), threshold chosen on validation volumes; lesion-wise numbers "
        "from 3D connected components (26-connected) of ground truth and prediction in the stored slices' mm.",
        "Post-processing: " + "; ".join(meta["postprocess"]) + " (each with its own validation threshold).",
    ]
    methods = {e["method"].split("@")[0] for e in entries}
    if {"mmccd", "cyclic-unet"} <= methods:
        mirrored = any(e.get("borrowed_networks") for e in entries)
        items.append("Shared networks: MMCCD's backward UNet is Cyclic UNet's target→source UNet of the same pair, "
                     "fold and seed (trained once)" + (
                         "; on a reversed pair (t2:flair beside flair:t2) Cyclic UNet's two translators are the other "
                         "pair's in swapped roles (both are the same supervised translation loss, same subjects, seed "
                         "and settings; trained once)" if mirrored else "")
                     + ". A shared network's training time counts in every row that uses it.")
    ext = meta.get("test_data")
    if ext:
        items.append(f"Test data: every one of the {ext['n_test_subjects']} cases with segmentation in "
                     f"`{ext['path']}` is a test subject of every fold's model (its value: the mean over folds); the "
                     "threshold is each run's own, chosen on its validation subjects.")
    items.append("Time: training = wall-clock seconds summed over the method's networks and folds; scoring = "
                 "wall-clock seconds per test slice. " + (meta.get("estimate") or ""))
    return items


def machine_description() -> str:
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    n_cpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {cpu or 'unknown CPU'}, {n_cpu} CPU core(s) available "
            f"(torch threads {torch.get_num_threads()}), {gpu}")


# ---------------------------------------------------------------- writing


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c)).replace('**best**', '<b>best</b>')}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figures(out: Path, entries: Sequence[Mapping[str, Any]], evals: Mapping[Any, Mapping[tuple[str, str, str], Any]],
             protocols: Sequence[str]) -> list[tuple[str, str]]:
    """Per-subject Dice strips per pair, test set, post-processing and protocol (all subjects, pooled over folds),
    and each method's Dice-versus-threshold curve of its first fold; returns (file name in figures/, caption)."""
    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    names = {"max_tumour": "max-tumour slice", "all": "whole volume"}
    strips, curves = [], []
    groups: dict[tuple[str, str, str, str], dict[str, list[float]]] = defaultdict(dict)
    for e in entries:
        for slices in protocols:
            values = [v for v in e["per_subject_dice"][slices].values() if v is not None]
            groups[(e["pair"], e["test_set"], e["postprocess"], slices)][e["method"]] = values
    raw, internal = entries[0]["postprocess"], entries[0]["test_set"]
    for (pair, test_set, pp, slices), per_method in groups.items():
        tag = ("" if test_set == internal else "test-data-") + slices + ("" if pp == raw else f"-pp{pp_index(pp, entries)}")
        name = f"subject_dice_{pair.replace(':', '-')}_{tag}.png"
        what = f"{pair.replace(':', '→')}, {names[slices]}, {test_set}, {pp}"
        subject_strip_plot(per_method, folder / name, title=f"Dice per test subject: {what}")
        strips.append((name, f"Dice per test subject at its fold's validation threshold ({what})"))
    for spec, per in evals.items():
        if spec.fold not in (None, 0) or spec.run.parent.name.startswith("seed-"):
            continue
        for (test_set, slices, _pp), ev in per.items():
            made = ev.folder / "figures" / "dice_vs_threshold.png"
            if test_set != entries[0]["test_set"] or not made.exists() or ev.folder.name != f"eval-{slices}":
                continue
            name = f"dice_vs_threshold_{spec.run.name}_{slices}.png"
            with atomic_write(folder / name) as tmp:
                shutil.copyfile(made, tmp)
            curves.append((name, f"Dice versus threshold, {spec.label}, {names[slices]}: the validation curve made "
                                 "the choice, the test curve is shown only"))
    return strips + curves


def pp_index(pp: str, entries: Sequence[Mapping[str, Any]]) -> int:
    """The position of a post-processing among the entries' (0: the raw maps), for file names."""
    return list(dict.fromkeys(e["postprocess"] for e in entries)).index(pp)


def write_results(out: Path, entries: Sequence[dict[str, Any]], meta: Mapping[str, Any], evals: Mapping[Any, Any],
                  seeds: Sequence[Mapping[str, Any]] = ()) -> dict[str, Path]:
    """results.json, results.csv, results.md, figures/ and report.html in `out`; returns their paths."""
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine, version = machine_description(), meta.get("code_version") or code_version()  # when the call started
    statement = protocol_statement(meta, entries)
    tables = _tables(entries, meta)
    if seeds:
        tables[len(tables) - 1:len(tables) - 1] = [_seed_table(seeds, meta["protocols"]),
                                                   _seed_differences_table(seeds, meta["protocols"])]
    figures = _figures(out, entries, evals, meta["protocols"])

    document = {"command": meta["command"], "date": date, "machine": machine, "code_version": version,
                "protocol": statement, "aggregation": AGGREGATION, "meta": meta, "results": list(entries),
                "seed_study": list(seeds),
                "literature_not_comparable": {"source": "arXiv 2312.04215, Table 3 (BraTS21, T2, Dice %)",
                                              "rows": LITERATURE},
                "mmccd_paper_not_comparable": {"source": "Liang et al. 2023 (arXiv 2308.16150), BraTS 2021, 128 px, "
                                                         "one max-tumour slice, threshold tuned on the TEST set",
                                               "rows": PAPER}}
    paths = {"json": atomic_write_text(out / "results.json",
                                       json.dumps(to_jsonable(document), indent=2, allow_nan=False) + "\n")}

    scalar = [k for k in entries[0] if not isinstance(entries[0][k], (dict, list))] if entries else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=scalar, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(entries)
    paths["csv"] = atomic_write_text(out / "results.csv", buf.getvalue())

    lead = statement[0]
    md = [f"# mmccd benchmark — preset `{meta['preset']}`", "", lead, "",
          f"Command: `{meta['command']}`  ", f"Date: {date}  ", f"Machine: {machine}  ",
          f"Code: {version} (when this call started; each run's: `trained_with_code` in results.json)", ""]
    for title, header, rows in tables:
        md += [f"## {title}", "", _markdown_table(header, rows), ""]
    md += ["## Protocol", ""] + [f"- {item}" for item in statement] + [""]
    md += ["## Other protocols, not comparable", "",
           "Numbers published or reported under other protocols (other data, preprocessing, splits, threshold "
           "choice, aggregation). They are anchors only and are **not comparable** with the tables above.", "",
           "MMCCD's own table (Liang et al. 2023; BraTS 2021, 128 px, one max-tumour slice, threshold tuned on the "
           "TEST set), Dice:", "", _markdown_table(["method", "Dice"], PAPER), "",
           "Meissen et al. 2021: FLAIR thresholding reaches oracle Dice 0.738 on BraTS — a FLAIR-input method below "
           "that shows nothing beyond bright-lesion detection.", "",
           "arXiv 2312.04215 (Behrendt et al.), Table 3, BraTS21, T2:", "", _markdown_table(["method", "Dice %"], LITERATURE),
           "", "A user reproducing MMCCD with the authors' code (FLAIR→T1, threshold tuned on the test set) reported "
           "Dice 0.549, AUROC 0.939.", "", "Figures and per-run reports: `report.html`.", ""]
    paths["md"] = atomic_write_text(out / "results.md", "\n".join(md))

    css = ("body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:0.6em 0 1.4em}td,th{border:1px solid #ccc;padding:3px 7px;"
           "font-size:0.9em}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}"
           "figure{display:inline-block;width:48%;margin:0 1% 1em 0;vertical-align:top}"
           "figcaption{font-size:0.85em;color:#555}details{margin:1em 0}summary{cursor:pointer;font-weight:600}")
    body = [f"<h1>mmccd benchmark — preset {html.escape(str(meta['preset']))}</h1>", f"<p>{html.escape(lead)}</p>"]
    for title, header, rows in tables:
        body += [f"<h2>{html.escape(title)}</h2>", _html_table(header, rows)]
    body += ["<h2>Figures</h2>"]
    body += [f"<figure><img src='figures/{html.escape(n)}' alt='{html.escape(c)}'><figcaption>{html.escape(c)}"
             "</figcaption></figure>" for n, c in figures]
    views = [(f"{e['method']} {e['source']}→{e['target']}: {sid} ({'worst' if k == 0 else 'best'} whole-volume Dice)", p)
             for e in entries for k, (sid, p) in enumerate((e.get("views") or {}).items())]
    if views:
        body += ["<h2>Case views: each method's worst and best test subject</h2><ul>" + "".join(
            f"<li><a href='{html.escape(p)}'>{html.escape(t)}</a></li>" for t, p in views) + "</ul>"]
    links = [(f"{e['method']} {e['source']}→{e['target']}, {e['test_set']}, {e['postprocess']}, {s}, {Path(p).parts[1]}", p)
             for e in entries for s, ps in e["reports"].items() for p in ps]
    body += ["<details><summary>Protocol</summary><ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in statement)
             + "</ul></details>",
             f"<details><summary>Provenance</summary><p>Command: <code>{html.escape(meta['command'])}</code><br>"
             f"Date: {date}<br>Machine: {html.escape(machine)}<br>Code: {html.escape(version)}</p></details>",
             "<details><summary>Per-run reports</summary><ul>" + "".join(
                 f"<li><a href='{html.escape(p)}'>{html.escape(t)}</a></li>" for t, p in links) + "</ul></details>",
             "<details><summary>Other protocols, not comparable</summary><p>MMCCD's own table (BraTS 2021, 128 px, "
             "threshold tuned on the test set):</p>" + _html_table(["method", "Dice"], PAPER)
             + "<p>arXiv 2312.04215, Table 3 (BraTS21, T2, Dice %):</p>" + _html_table(["method", "Dice %"], LITERATURE)
             + "<p>Meissen et al.: FLAIR thresholding, oracle Dice 0.738 on BraTS.</p></details>"]
    paths["html"] = atomic_write_text(
        out / "report.html", f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mmccd benchmark</title>"
                             f"<style>{css}</style></head><body>{''.join(body)}</body></html>\n")
    return paths


__all__ = ["AGGREGATION", "LITERATURE", "PAPER", "describe_scoring", "machine_description", "protocol_statement",
           "write_results"]
