"""Run-folder outputs of an evaluation: metrics.json, per-slice / per-subject CSVs and report.html.

report.html leads with the answer: the protocol in one sentence and the headline table (Dice / AUROC / AUPRC
of the test subjects at the validation threshold, the oracle on its own labelled row), then the figures, the
per-subject rows (with links to case views), and the full metrics, configuration and provenance collapsed.

Generic on purpose: `extra` carries what the caller wants shown with the numbers (method, source and
target contrast, threshold choice, protocol text, the command that produced them, ...).
In metrics.json NaN (e.g. AUROC of a tumour-free slice) is written as null; in the CSVs as "nan".
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmccd.atomic import atomic_write_text
from mmccd.evaluation.metrics import METRICS, EvalResult
from mmccd.evaluation.report_html import (
    Raw,
    details,
    fmt_threshold,
    kv_table,
    lead,
    link,
    mean_std,
    notes,
    page,
    table,
)
from mmccd.evaluation.report_html import figures as html_figures

_LABELS = {"dice": "Dice", "auroc": "AUROC", "auprc": "AUPRC"}


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays unpacked, tuples as lists, paths as text, NaN/inf as None."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()})
    return buf.getvalue()


_FIRST_FIGURES = ("examples.png", "dice_vs_threshold.png")  # the example grid and the threshold curve lead
_CAPTIONS = {"examples.png": "Test examples, one row per slice; the prediction is at the validation threshold",
             "dice_vs_threshold.png": "Dice versus threshold: the validation curve chose the threshold; the test "
                                      "curve is shown only"}
_PROVENANCE = ("command", "code_version", "git_commit", "date", "machine", "package_versions", "prepared",
               "test_store", "train_seconds", "seconds_per_slice", "protocol")


def protocol_sentence(extra: Mapping[str, Any], result: EvalResult) -> str:
    """The protocol in one sentence, from the keys `mmccd evaluate` passes (method, source, target,
    n_val_subjects, slices, postprocess); what is missing is left out."""
    s = result.summary
    pair = f"{extra['source']} → {extra['target']}" if "source" in extra and "target" in extra else ""
    who = ", ".join(str(x) for x in (extra.get("method"), pair) if x)
    n_val = extra.get("n_val_subjects")
    chosen = f"threshold {fmt_threshold(result.threshold)}" + (
        f" chosen on {n_val} validation subjects (best mean Dice)" if n_val is not None else "")
    slices = f", {extra['slices']} slices" if "slices" in extra else ""
    post = f", post-processing {extra['postprocess']}" if extra.get("postprocess") not in (None, "none") else ""
    return (f"{who + ': ' if who else ''}{chosen}, applied once to {s.get('n_subjects')} test subjects"
            f"{slices}{post}; Dice, AUROC and AUPRC inside the brain mask, mean ± std over test subjects.")


def _oracle(extra: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(oracle Dice, oracle threshold) from `mmccd evaluate`'s keys or an {"dice", "threshold"} mapping."""
    o = extra.get("oracle")
    dice = extra.get("oracle_dice_test", o.get("dice") if isinstance(o, Mapping) else None)
    thr = extra.get("oracle_threshold", o.get("threshold") if isinstance(o, Mapping) else None)
    return dice, thr


def headline_table(result: EvalResult, extra: Mapping[str, Any]) -> str:
    """Dice / AUROC / AUPRC of the test subjects at the validation threshold; the oracle on its own row, labelled."""
    s = result.summary
    n = s.get("n_subjects")
    rows: list[list[Any]] = []
    for m in METRICS:
        nan = s.get(f"subject_nan_{m}", 0)
        skipped = Raw(f" <small>({nan} NaN skipped)</small>") if nan else ""
        rows.append([_LABELS[m], Raw(html.escape(mean_std(s.get(f"subject_mean_{m}"), s.get(f"subject_std_{m}")))
                                     + skipped), s.get(f"pooled_{m}")])
    classes: list[str | None] = [None] * len(rows)
    dice, thr = _oracle(extra)
    if dice is not None:
        rows.append([Raw("oracle Dice <small>(test-optimal threshold " + html.escape(fmt_threshold(thr))
                         + ": for comparison with papers only, not a result)</small>"), dice, ""])
        classes.append("aside")
    header = ["metric", Raw(f"test subjects, mean ± std <small>(n = {html.escape(str(n))})</small>"),
              Raw("pooled <small>(all test brain pixels)</small>")]
    return table(header, rows, cls="headline", row_classes=classes)


def _all_metrics(result: EvalResult) -> str:
    s = result.summary
    counts = (f"threshold {result.threshold!r} · {s.get('n_subjects')} subjects · {s.get('n_slices')} slices · "
              f"{s.get('n_brain_pixels')} brain pixels, {s.get('n_tumour_pixels')} tumour. All metrics inside the "
              f"brain mask; prediction = score ≥ threshold; Dice of two empty masks = 1. Exact values: metrics.json.")
    rows = []
    for m in METRICS:
        cells = []
        for level in ("subject", "slice"):
            nan = s.get(f"{level}_nan_{m}", 0)
            cells.append(Raw(html.escape(mean_std(s.get(f"{level}_mean_{m}"), s.get(f"{level}_std_{m}")))
                             + f" <small>(n={html.escape(str(s.get(f'{level}_n_{m}', '?')))}"
                             + (f", {nan} NaN skipped)" if nan else ")") + "</small>"))
        rows.append([_LABELS[m], *cells, s.get(f"pooled_{m}")])
    header = ["metric", Raw("per subject (headline)<br><small>mean ± std over subjects</small>"),
              Raw("per slice<br><small>mean ± std over slices</small>"),
              Raw("pooled<br><small>all brain pixels together</small>")]
    return f"<p>{html.escape(counts)}</p>" + table(header, rows)


def _subject_rows(result: EvalResult, views: Mapping[str, str] | None) -> str:
    if not result.per_subject:
        return "<p>none</p>"
    columns = list(result.per_subject[0])
    rows = [[r.get(c) for c in columns] for r in result.per_subject]
    if views is not None:
        columns.append("case view")
        for row, r in zip(rows, result.per_subject, strict=True):
            sid = str(r.get("subject_id"))
            row.append(link(views[sid], "open") if sid in views else "–")
    return table(columns, rows)


def render_html(result: EvalResult, extra: Mapping[str, Any], figures: Sequence[str], title: str, *,
                views: Mapping[str, str] | None = None, protocol: str | None = None) -> str:
    """The report page, answer first: protocol sentence and headline table (with notes), the example and
    Dice-vs-threshold figures (then any other PNG in figures/), per-subject rows (linking each subject's case
    view when `views` = {subject_id: path relative to the report} is given), then collapsed sections: all
    metrics, configuration, provenance. Numbers rounded to 3 decimals; exact ones are in metrics.json."""
    notes_ = list(result.notes)
    if extra.get("threshold_at_search_edge"):
        notes_.append(f"The validation threshold lies at the edge of its search range "
                      f"{extra.get('threshold_search_range')}: the best threshold may lie outside it.")
    ordered = [n for n in _FIRST_FIGURES if n in figures] + [n for n in figures if n not in _FIRST_FIGURES]
    shown = result.summary  # extra repeats the summary in `mmccd evaluate`: those are under "All metrics"
    provenance = {k: v for k, v in extra.items() if k in _PROVENANCE}
    config = {k: v for k, v in extra.items() if k not in _PROVENANCE and not (k in shown and shown[k] == v)}
    body = [lead(protocol or protocol_sentence(extra, result), headline_table(result, extra), notes(notes_))]
    if ordered:
        body.append("<h2>Examples and threshold</h2>"
                    + html_figures([(f"figures/{n}", _CAPTIONS.get(n, n)) for n in ordered]))
    body += [f"<h2>Per subject</h2>{_subject_rows(result, views)}",
             details("All metrics: per subject, per slice, pooled", _all_metrics(result)),
             details("Configuration", kv_table(to_jsonable(config)) if config else "<p>none given</p>"),
             details("Provenance", kv_table(to_jsonable(provenance)) if provenance else "<p>none given</p>")]
    return page(title, body)


def write_report(run_dir: str | Path, result: EvalResult, extra: Mapping[str, Any],
                 per_slice_csv_name: str = "per_slice.csv", *, views: Mapping[str, str] | None = None,
                 protocol: str | None = None) -> dict[str, Path]:
    """Write metrics.json, `per_slice_csv_name`, per_subject.csv and report.html into `run_dir`.

    report.html shows the PNGs found in ``run_dir/figures/`` (write figures first), examples.png and
    dice_vs_threshold.png first. views: {subject_id: case view path relative to run_dir}, linked per subject.
    protocol: the one-sentence protocol at the top (default: `protocol_sentence` of `extra`). Returns the paths."""
    run_dir = Path(run_dir)
    metrics = {**dict(extra), "summary": result.summary, "pooled": result.pooled, "per_subject": result.per_subject,
               "notes": result.notes, "per_slice_csv": per_slice_csv_name}
    figures = sorted(p.name for p in (run_dir / "figures").glob("*.png")) if (run_dir / "figures").is_dir() else []
    title = f"mmccd evaluation — {extra['method']}" if "method" in extra else "mmccd evaluation"
    paths = {
        "per_slice": atomic_write_text(run_dir / per_slice_csv_name, _csv_text(result.per_slice)),
        "per_subject": atomic_write_text(run_dir / "per_subject.csv", _csv_text(result.per_subject)),
        "report": atomic_write_text(run_dir / "report.html", render_html(result, extra, figures, title, views=views,
                                                                         protocol=protocol)),
    }
    # metrics.json last: its presence marks a complete evaluation (one that stopped on a full disk is redone)
    metrics_path = atomic_write_text(run_dir / "metrics.json", json.dumps(to_jsonable(metrics), indent=2, allow_nan=False) + "\n")
    return {"metrics": metrics_path, **paths}
