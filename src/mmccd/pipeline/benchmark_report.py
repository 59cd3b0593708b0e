"""The benchmark's outputs: results.json / .csv / .md, report.html and figures/, from one entry per row.

An entry (`make_entry`) is one method on one contrast pair and one test set. Its keys name the level
they aggregate at (see AGGREGATION, written into results.json): a key without suffix is the reference
protocol (each test subject's max-tumour slice, mean over subjects), `*_volume` is per whole volume,
`pooled_*` pools all brain pixels, `slice_*` averages over slices.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmccd.atomic import atomic_write, atomic_write_text
from mmccd.config import ExperimentConfig
from mmccd.evaluation.figures import dice_threshold_plot, subject_strip_plot
from mmccd.evaluation.metrics import METRICS
from mmccd.evaluation.report import to_jsonable
from mmccd.evaluation.thresholds import QUANTILE_RANGE
from mmccd.pipeline.evaluate import Evaluation
from mmccd.provenance import code_version

_MT = "reference protocol, each test subject's max-tumour slice"
_VOL = "whole volumes, every evaluated slice of a test subject concatenated (3D)"
AGGREGATION = {  # what each key of a results entry aggregates over; "_std" = population std over the same units
    "dice_val_threshold": f"{_MT}: Dice per subject at the threshold chosen on validation subjects, mean over subjects",
    "dice_oracle": f"{_MT}: mean subject Dice at the TEST-optimal threshold (oracle): only for comparison with "
                   "papers that tuned on test, never a result",
    "auroc": f"{_MT}: AUROC per subject (threshold-free), mean over subjects",
    "auprc": f"{_MT}: AUPRC (average precision) per subject, mean over subjects",
    "slice_mean_dice": f"{_MT}: mean over slices (one slice per subject, so equal to dice_val_threshold)",
    "pooled_dice": f"{_MT}: all brain pixels of all test slices together, one value (also pooled_auroc, pooled_auprc)",
    "dice_volume": f"{_VOL}: Dice per subject at the threshold chosen on validation volumes, mean over subjects",
    "dice_volume_oracle": f"{_VOL}: mean subject Dice at the TEST-optimal threshold (oracle), never a result",
    "auroc_volume": f"{_VOL}: AUROC per subject, mean over subjects (also auprc_volume)",
    "slice_mean_dice_volume": "whole-volume protocol: Dice per slice, mean over all test slices",
    "pooled_dice_volume": f"{_VOL}: all brain voxels of all test subjects together (also pooled_auroc_volume, "
                          "pooled_auprc_volume)",
    "threshold": "chosen on validation subjects' max-tumour slices (best mean subject Dice), applied once to test",
    "threshold_volume": "chosen on validation subjects' volumes (best mean subject Dice), applied once to test",
    "threshold_search_low": "lowest and highest candidate threshold (also threshold_search_high, *_volume)",
    "n_test_subjects": "test subjects evaluated (max-tumour protocol: those with tumour); n_test_slices: slices",
    "seconds_per_slice": "wall-clock scoring seconds per test slice (batches of 8) on the machine stated",
    "train_seconds": "wall-clock training seconds summed over the method's networks (a shared network counts "
                     "with the time it took where it was trained)",
    "protocols": "the full summary of each slice protocol; keys labelled subject_* (per subject), slice_* "
                 "(per slice), pooled_* (all pixels together)",
    "per_subject_dice": "Dice of each test subject at the validation threshold, per slice protocol",
}

LITERATURE = [  # other protocols, NOT comparable: see ../shared/MISSION.md
    ("intensity threshold", "19.7"), ("f-AnoGAN", "24.0"), ("VAE", "28.8"), ("AE", "31.5"),
    ("DAE (coarse-noise denoising AE)", "45.4"), ("DDPM / AnoDDPM (partial diffusion, simplex noise)", "44.3"),
    ("pDDPM (patched)", "49.8"), ("cDDPM (conditioned DDPM)", "53.4"),
]

_LEVEL_KEYS = ([f"{lvl}_{stat}_{m}" for lvl in ("subject", "slice") for stat in ("mean", "std") for m in METRICS]
               + [f"{lvl}_{c}_{m}" for lvl in ("subject", "slice") for c in ("n", "nan") for m in METRICS]
               + [f"pooled_{m}" for m in METRICS]
               + ["n_subjects", "n_slices", "n_brain_pixels", "n_tumour_pixels", "threshold", "oracle_threshold",
                  "oracle_dice_test", "val_dice_at_threshold", "threshold_search_range", "threshold_at_search_edge",
                  "n_val_subjects", "seconds_per_slice"])


def make_entry(cfg: ExperimentConfig, run: Path, out: Path, test_set: str, evals: Mapping[str, Evaluation],
               train: Mapping[str, Any]) -> dict[str, Any]:
    """One row: `evals` maps a slice protocol ("max_tumour", "all") to its Evaluation."""
    mt = dict(evals["max_tumour"].summary) if "max_tumour" in evals else {}
    vol = dict(evals["all"].summary) if "all" in evals else {}

    run_info = json.loads((run / "run_info.json").read_text()) if (run / "run_info.json").exists() else {}
    entry: dict[str, Any] = {
        "method": cfg.method, "source": cfg.source, "target": cfg.target, "pair": f"{cfg.source}:{cfg.target}",
        "test_set": test_set, "run": str(run.relative_to(out)),
        **_protocol_keys(mt, ""), **_protocol_keys(vol, "_volume"),
        "n_val_subjects": mt.get("n_val_subjects", vol.get("n_val_subjects")),
        "n_train_subjects": len(run_info.get("train_subjects", [])), "n_train_slices": run_info.get("train_slices"),
        **train, "postprocess": mt.get("postprocess", vol.get("postprocess")),
        "trained_with_code": run_info.get("code_version"),
        "scoring": describe_scoring(cfg.method, mt.get("score_config") or vol.get("score_config")),
        "score_config": mt.get("score_config") or vol.get("score_config"),
        "protocols": {slices: {k: e.summary[k] for k in _LEVEL_KEYS if k in e.summary} for slices, e in evals.items()},
        "per_subject_dice": {slices: {r["subject_id"]: r["dice"] for r in e.per_subject} for slices, e in evals.items()},
        "reports": {slices: str((e.folder / "report.html").relative_to(out)) for slices, e in evals.items()},
    }
    if entry["seconds_per_slice"] is None:
        entry["seconds_per_slice"] = entry["seconds_per_slice_volume"]
    return to_jsonable(entry)


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


def _protocol_keys(s: Mapping[str, Any], suffix: str) -> dict[str, Any]:
    """The flat keys of one slice protocol: no suffix for max-tumour slices, "_volume" for whole volumes."""
    dice = "dice_val_threshold" if not suffix else "dice_volume"
    low, high = s.get("threshold_search_range") or (None, None)
    return {
        dice: s.get("subject_mean_dice"), f"{dice}_std": s.get("subject_std_dice"),
        "dice_oracle" if not suffix else "dice_volume_oracle": s.get("oracle_dice_test"),
        f"auroc{suffix}": s.get("subject_mean_auroc"), f"auroc{suffix}_std": s.get("subject_std_auroc"),
        f"auprc{suffix}": s.get("subject_mean_auprc"), f"auprc{suffix}_std": s.get("subject_std_auprc"),
        f"slice_mean_dice{suffix}": s.get("slice_mean_dice"), f"slice_std_dice{suffix}": s.get("slice_std_dice"),
        f"pooled_dice{suffix}": s.get("pooled_dice"), f"pooled_auroc{suffix}": s.get("pooled_auroc"),
        f"pooled_auprc{suffix}": s.get("pooled_auprc"),
        f"threshold{suffix}": s.get("threshold"), f"oracle_threshold{suffix}": s.get("oracle_threshold"),
        f"threshold{suffix}_search_low": low, f"threshold{suffix}_search_high": high,
        f"threshold_at_search_edge{suffix}": s.get("threshold_at_search_edge"),
        f"val_dice_at_threshold{suffix}": s.get("val_dice_at_threshold"),
        f"n_test_subjects{suffix}": s.get("n_subjects"), f"n_test_slices{suffix}": s.get("n_slices"),
        f"seconds_per_slice{suffix}": s.get("seconds_per_slice"),
    }


# ---------------------------------------------------------------- formatting


def _f(v: Any, spec: str = ".3f") -> str:
    """A number for a table: "–" when missing, integers as they are."""
    if v is None:
        return "–"
    return format(v, spec) if isinstance(v, float) else str(v)


def _pm(mean: Any, std: Any) -> str:
    return "–" if mean is None else f"{_f(mean)} ± {_f(std)}"


def _tables(entries: Sequence[Mapping[str, Any]], protocols: Sequence[str],
            postprocess: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each results table; shared by results.md and report.html."""
    pp_col = postprocess != "none"
    ident = ["method", "source→target", "test set"] + (["post-processing"] if pp_col else [])

    def who(e: Mapping[str, Any]) -> list[str]:
        return [e["method"], f"{e['source']}→{e['target']}", e["test_set"]] + ([e["postprocess"]] if pp_col else [])

    def edge(e: Mapping[str, Any], key: str) -> str:
        return " ⚠" if e.get(key) else ""

    tables = []
    if "max_tumour" in protocols:
        tables.append((
            "Per max-tumour slice (the reference protocol: one slice per test subject), threshold from validation",
            ident + ["Dice (val. threshold)", "AUROC", "AUPRC", "pooled Dice / AUROC / AUPRC",
                     "oracle Dice † (test-optimal, not a result)", "threshold", "test subjects"],
            [who(e) + [_pm(e["dice_val_threshold"], e["dice_val_threshold_std"]), _pm(e["auroc"], e["auroc_std"]),
                       _pm(e["auprc"], e["auprc_std"]),
                       f"{_f(e['pooled_dice'])} / {_f(e['pooled_auroc'])} / {_f(e['pooled_auprc'])}",
                       _f(e["dice_oracle"]), _f(e["threshold"], ".4g") + edge(e, "threshold_at_search_edge"),
                       _f(e["n_test_subjects"])] for e in entries]))
    if "all" in protocols:
        tables.append((
            "Per whole volume (3D: every slice with brain), threshold from validation volumes",
            ident + ["Dice per volume", "AUROC per volume", "AUPRC per volume", "Dice per slice",
                     "pooled Dice / AUROC / AUPRC", "oracle Dice † (test-optimal, not a result)", "threshold",
                     "test subjects (slices)"],
            [who(e) + [_pm(e["dice_volume"], e["dice_volume_std"]), _pm(e["auroc_volume"], e["auroc_volume_std"]),
                       _pm(e["auprc_volume"], e["auprc_volume_std"]),
                       _pm(e["slice_mean_dice_volume"], e["slice_std_dice_volume"]),
                       f"{_f(e['pooled_dice_volume'])} / {_f(e['pooled_auroc_volume'])} / {_f(e['pooled_auprc_volume'])}",
                       _f(e["dice_volume_oracle"]),
                       _f(e["threshold_volume"], ".4g") + edge(e, "threshold_at_search_edge_volume"),
                       f"{_f(e['n_test_subjects_volume'])} ({_f(e['n_test_slices_volume'])})"] for e in entries]))
    internal = [e for e in entries if e["test_set"] == entries[0]["test_set"]]
    tables.append((
        "Cost (wall clock, on the machine below)",
        ["method", "source→target", "training seconds", "training seconds per network", "scoring seconds per slice"],
        [[e["method"], f"{e['source']}→{e['target']}", _f(e["train_seconds"], ".0f"),
          (", ".join(f"{k} {_f(v, '.0f')}" for k, v in e["train_seconds_by_net"].items()) or "no training")
          + (f" ({e['train_note']})" if e.get("train_note") else ""),
          _f(e["seconds_per_slice"], ".3g")] for e in internal]))
    return tables


def protocol_statement(meta: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The protocol, one sentence per item, as written into results.md and report.html."""
    cfg = meta["config"]
    splits = meta["splits"]
    lo, hi = QUANTILE_RANGE
    n_cand = cfg["eval"]["threshold_quantiles"]
    pairs = ", ".join(f"{s}→{t}" for s, t in meta["pairs"])
    items = [
        f"Data: `{meta['data']}`, {meta['n_prepared']} cases prepared"
        + (f", {len(meta['skipped'])} skipped ({', '.join(c for c, _ in meta['skipped'][:5])})" if meta["skipped"] else "")
        + f". Subject-level splits written once to `prepared/splits.json` (seed {meta['split_seed']}): "
        f"{len(splits['train'])} training, {len(splits['val'])} validation, {len(splits['test'])} test subjects.",
        "Training on tumour-free axial slices of the training subjects only"
        + (f" ({entries[0]['n_train_slices']} slices)" if entries and entries[0].get("n_train_slices") else "")
        + "; no segmentation is used for training.",
        f"Contrasts (source→target): {pairs}. Training needs both; scoring uses the source only.",
        f"Preset `{meta['preset']}`: slices {cfg['prepare']['size']}×{cfg['prepare']['size']} px, "
        f"{cfg['train']['iterations']} iterations at batch {cfg['train']['batch_size']} per network"
        + next((f"; MMCCD scoring: {e['scoring']} (`--scoring {meta.get('scoring', 'auto')}`)"
                for e in entries if e["method"] == "mmccd"), "")
        + ".",
        f"Threshold: for each method, pair and protocol, the candidate with the best mean subject Dice on the "
        f"VALIDATION subjects, among up to {n_cand} candidates at quantiles of the validation brain scores from "
        f"the {100 * lo:g}th to the {100 * hi:g}th percentile (log-spaced toward the top); each row's numeric range "
        "is in results.json (threshold_search_low/high); ⚠ marks a choice at the edge of the range. It is applied "
        "once to the test subjects, which never take part in the choice.",
        "† Oracle Dice: the same search on the TEST subjects, labelled, only to compare with papers that tuned "
        "on test (as the reference code does); it is not a result.",
        "Metrics inside the brain mask: prediction = score ≥ threshold; Dice of two empty masks = 1; AUROC/AUPRC "
        "of a subject with one class only are left out of the means (counts in results.json).",
        "Levels: per max-tumour slice = each test subject's slice with the most tumour (the reference protocol), "
        f"mean ± std over subjects; per volume = every axial slice with brain area ≥ "
        f"{cfg['prepare']['min_brain_fraction']:g} of the crop box, the subject's voxels concatenated (3D), threshold "
        "chosen on validation volumes; per slice = mean over the slices of the volume protocol; pooled = all brain "
        "pixels of all test subjects together.",
        f"Post-processing: {meta['postprocess']}" + (" (thresholds chosen with it applied)." if meta["postprocess"] != "none" else "."),
    ]
    ext = meta.get("test_data")
    if ext:
        items.append(f"Test data: every one of the {ext['n_test_subjects']} cases with segmentation in "
                     f"`{ext['path']}` (prepared into `prepared-test/` like the training data) is a test subject; the "
                     "threshold is still the one chosen on the training data's validation subjects"
                     + (f"; {len(ext['overlapping_ids'])} case id(s) also occur in the training data" if ext["overlapping_ids"] else "") + ".")
    items.append("Time: training = wall-clock seconds summed over the method's networks (MMCCD's backward UNet is "
                 "shared with Cyclic UNet and counted in both); scoring = wall-clock seconds per test slice.")
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
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figures(out: Path, entries: Sequence[Mapping[str, Any]],
             evaluations: Mapping[tuple[str, str], Mapping[str, Evaluation]]) -> list[tuple[str, str]]:
    """Dice-versus-threshold curves per row and protocol, per-subject Dice strips per pair, test set and
    protocol; returns (file name in figures/, caption)."""
    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    names = {"max_tumour": "max-tumour slice", "all": "whole volume"}
    curves: list[tuple[str, str]] = []
    strips: list[tuple[str, str]] = []
    groups: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for e in entries:
        ext = e["test_set"] != entries[0]["test_set"]
        for slices, ev in evaluations[(Path(e["run"]).name, e["test_set"])].items():
            tag = ("test-data-" if ext else "") + slices
            s = ev.summary
            name = f"dice_vs_threshold_{Path(e['run']).name}_{tag}.png"
            what = names[slices] + (" (test data)" if ext else "")
            title = f"{e['method']} {e['source']}→{e['target']}, {what}"
            made = ev.folder / "figures" / "dice_vs_threshold.png"  # by evaluate_run, from the same curve
            if made.exists():
                with atomic_write(folder / name) as tmp:
                    shutil.copyfile(made, tmp)
            else:
                dice_threshold_plot(ev.thresholds, ev.val_curve, ev.test_curve, s["threshold"], folder / name,
                                    oracle=s["oracle_threshold"], title=title)
            curves.append((name, f"Dice versus threshold: {title}; the validation curve made the choice, the "
                                 "test curve is shown only"))
            dice = [r["dice"] for r in ev.per_subject]
            groups.setdefault((f"{e['source']}-{e['target']}", tag, what), {})[e["method"]] = dice
    for (pair, tag, what), per_method in groups.items():
        name = f"subject_dice_{pair}_{tag}.png"
        subject_strip_plot(per_method, folder / name, title=f"Dice per test subject, {pair.replace('-', '→')}, {what}")
        strips.append((name, f"Dice per test subject at the validation threshold, {pair}, {what}"))
    return strips + curves


def write_results(out: Path, entries: Sequence[dict[str, Any]], meta: Mapping[str, Any],
                  evaluations: Mapping[tuple[str, str], Mapping[str, Evaluation]]) -> dict[str, Path]:
    """results.json, results.csv, results.md, figures/ and report.html in `out`; returns their paths."""
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine, version = machine_description(), meta.get("code_version") or code_version()  # when the call started
    statement = protocol_statement(meta, entries)
    tables = _tables(entries, meta["protocols"], meta["postprocess"])
    figures = _figures(out, entries, evaluations)

    document = {"command": meta["command"], "date": date, "machine": machine, "code_version": version,
                "protocol": statement, "aggregation": AGGREGATION, "meta": meta, "results": list(entries),
                "literature_not_comparable": {"source": "arXiv 2312.04215, Table 3 (BraTS21, T2, Dice %)",
                                              "rows": LITERATURE}}
    paths = {"json": atomic_write_text(out / "results.json",
                                       json.dumps(to_jsonable(document), indent=2, allow_nan=False) + "\n")}

    scalar = [k for k in entries[0] if not isinstance(entries[0][k], (dict, list))] if entries else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=scalar, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(entries)
    paths["csv"] = atomic_write_text(out / "results.csv", buf.getvalue())

    literature = _markdown_table(["method", "Dice %"], LITERATURE)
    md = [f"# mmccd benchmark — preset `{meta['preset']}`", "",
          f"Command: `{meta['command']}`  ", f"Date: {date}  ", f"Machine: {machine}  ", f"Code: {version} (when this call started; the code each run was trained with: `trained_with_code` in results.json)", ""]
    for title, header, rows in tables:
        md += [f"## {title}", "", _markdown_table(header, rows), ""]
    md += ["## Protocol", ""] + [f"- {item}" for item in statement] + [""]
    md += ["## Other protocols, not comparable", "",
           "Numbers published or reported under other protocols (other data, preprocessing, splits, threshold "
           "choice, aggregation). They are listed as anchors only and are **not comparable** with the tables above.",
           "", "arXiv 2312.04215 (Behrendt et al.), Table 3, BraTS21, T2:", "", literature, "",
           "A user reproducing MMCCD with the authors' code (FLAIR→T1, threshold tuned on the test set) reported "
           "Dice 0.549, AUROC 0.939.", "",
           "Figures and per-run reports: `report.html`.", ""]
    paths["md"] = atomic_write_text(out / "results.md", "\n".join(md))

    css = ("body{font-family:sans-serif;max-width:1300px;margin:2em auto;padding:0 1em}table{border-collapse:collapse;"
           "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;font-size:0.9em}th{background:#f3f3f3}"
           "img{max-width:48%;margin:4px;border:1px solid #eee;vertical-align:top}")
    body = [f"<h1>mmccd benchmark — preset {html.escape(str(meta['preset']))}</h1>",
            f"<p>Command: <code>{html.escape(meta['command'])}</code><br>Date: {date}<br>"
            f"Machine: {html.escape(machine)}<br>Code: {html.escape(version)}</p>"]
    for title, header, rows in tables:
        body += [f"<h2>{html.escape(title)}</h2>", _html_table(header, rows)]
    body += ["<h2>Protocol</h2><ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in statement) + "</ul>",
             "<h2>Figures</h2>"]
    body += [f"<figure style='display:inline-block;width:48%;margin:0'><img style='max-width:100%' "
             f"src='figures/{html.escape(n)}' alt='{html.escape(c)}'><figcaption>{html.escape(c)}</figcaption></figure>"
             for n, c in figures]
    links = [(f"{e['method']} {e['source']}→{e['target']}, {e['test_set']}, {s}", p)
             for e in entries for s, p in e["reports"].items()]
    body += ["<h2>Per-run reports</h2><ul>" + "".join(f"<li><a href='{html.escape(p)}'>{html.escape(t)}</a></li>"
                                                    for t, p in links) + "</ul>",
             "<h2>Other protocols, not comparable</h2><p>arXiv 2312.04215, Table 3 (BraTS21, T2, Dice %); listed as "
             "anchors only, under other data, splits and threshold choice.</p>", _html_table(["method", "Dice %"], LITERATURE),
             "<p>User-reported MMCCD reproduction (FLAIR→T1, threshold tuned on the test set): Dice 0.549, AUROC 0.939.</p>"]
    paths["html"] = atomic_write_text(
        out / "report.html", f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mmccd benchmark</title>"
                             f"<style>{css}</style></head><body>{''.join(body)}</body></html>\n")
    return paths
