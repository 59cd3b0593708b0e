"""Run-folder outputs of an evaluation: metrics.json, per-slice / per-subject CSVs and report.html.

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
from urllib.parse import quote

import numpy as np

from mmccd.atomic import atomic_write_text
from mmccd.evaluation.metrics import METRICS, EvalResult

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


def _fmt(value: Any, spec: str = ".4f") -> str:
    if isinstance(value, (float, np.floating)):
        return "NaN" if not math.isfinite(value) else format(value, spec)
    return str(value)


def _summary_table(s: Mapping[str, Any]) -> str:
    head = ("<tr><th>metric</th><th>per subject (headline)<br><small>mean ± std over subjects</small></th>"
            "<th>per slice<br><small>mean ± std over slices</small></th>"
            "<th>pooled<br><small>all brain pixels together</small></th></tr>")
    body = []
    for m in METRICS:
        cells = []
        for level in ("subject", "slice"):
            nan = s.get(f"{level}_nan_{m}", 0)
            text = f"{_fmt(s.get(f'{level}_mean_{m}'))} ± {_fmt(s.get(f'{level}_std_{m}'))}"
            text += f" <small>(n={s.get(f'{level}_n_{m}', '?')}" + (f", {nan} NaN skipped)" if nan else ")") + "</small>"
            cells.append(text)
        cls = ' class="headline"' if m == "dice" else ""
        body.append(f"<tr{cls}><td>{_LABELS[m]}</td><td>{cells[0]}</td><td>{cells[1]}</td>"
                    f"<td>{_fmt(s.get(f'pooled_{m}'))}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _kv_table(items: Mapping[str, Any]) -> str:
    rows = []
    for k, v in items.items():
        if isinstance(v, (Mapping, list, tuple)):
            shown = f"<pre>{html.escape(json.dumps(to_jsonable(v), indent=2))}</pre>"
        else:
            shown = html.escape(_fmt(v, ".6g"))
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{shown}</td></tr>")
    return f"<table class='kv'>{''.join(rows)}</table>"


def _rows_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(k)))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}tr.headline td{font-weight:600}pre{margin:0;font-size:0.85em}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption{font-size:0.85em;color:#555}
.note{color:#8a4b00}"""


def render_html(result: EvalResult, extra: Mapping[str, Any], figures: Sequence[str], title: str) -> str:
    """The report page: run details (`extra`), summary table, notes, per-subject table, figures (relative links)."""
    s = result.summary
    counts = (f"threshold {_fmt(result.threshold, '.6g')} · {s.get('n_subjects')} subjects · {s.get('n_slices')} slices · "
              f"{s.get('n_brain_pixels')} brain pixels, {s.get('n_tumour_pixels')} tumour. All metrics inside the "
              f"brain mask; prediction = score ≥ threshold; Dice of two empty masks = 1.")
    notes = "".join(f"<li class='note'>{html.escape(n)}</li>" for n in result.notes)
    figs = "".join(f"<figure><img src='figures/{quote(name)}' alt='{html.escape(name)}'>"
                   f"<figcaption>{html.escape(name)}</figcaption></figure>" for name in figures)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<h2>Run</h2>{_kv_table(extra)}"
            f"<h2>Results</h2><p>{html.escape(counts)}</p>{_summary_table(s)}"
            + (f"<ul>{notes}</ul>" if notes else "")
            + f"<h2>Per subject</h2>{_rows_table(result.per_subject)}"
            + (f"<h2>Figures</h2>{figs}" if figs else "")
            + "</body></html>\n")


def write_report(run_dir: str | Path, result: EvalResult, extra: Mapping[str, Any],
                 per_slice_csv_name: str = "per_slice.csv") -> dict[str, Path]:
    """Write metrics.json, `per_slice_csv_name`, per_subject.csv and report.html into `run_dir`.

    report.html embeds the PNGs found in ``run_dir/figures/`` (write figures first). Returns the paths."""
    run_dir = Path(run_dir)
    metrics = {**dict(extra), "summary": result.summary, "pooled": result.pooled, "per_subject": result.per_subject,
               "notes": result.notes, "per_slice_csv": per_slice_csv_name}
    figures = sorted(p.name for p in (run_dir / "figures").glob("*.png")) if (run_dir / "figures").is_dir() else []
    title = f"mmccd evaluation — {extra['method']}" if "method" in extra else "mmccd evaluation"
    return {
        "metrics": atomic_write_text(run_dir / "metrics.json",
                                     json.dumps(to_jsonable(metrics), indent=2, allow_nan=False) + "\n"),
        "per_slice": atomic_write_text(run_dir / per_slice_csv_name, _csv_text(result.per_slice)),
        "per_subject": atomic_write_text(run_dir / "per_subject.csv", _csv_text(result.per_subject)),
        "report": atomic_write_text(run_dir / "report.html", render_html(result, extra, figures, title)),
    }
