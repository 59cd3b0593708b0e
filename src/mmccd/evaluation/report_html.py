"""HTML blocks for reports that lead with their answer: the protocol and headline table first, then the
figures, then the rows, and everything else collapsed in <details>.

    body = [lead("MMCCD, FLAIR → T2: threshold chosen on 3 validation subjects, applied once to 4 test subjects.",
                 table(["metric", "mean ± std (n = 4)"], [["Dice", mean_std(0.64, 0.137)]], cls="headline")),
            figures([("figures/examples.png", "examples")]),
            details("Configuration", kv_table(config))]
    text = page("mmccd benchmark", body)

Numbers are rounded for people here (3 decimals, `fmt`); exact values belong in the JSON written beside the page.
Every string is escaped unless it is `Raw` (HTML built by these functions, e.g. `link`).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import numpy as np

DIGITS = 3

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.headline{font-size:1.1em}table.headline td{font-weight:600}table.headline tr.aside td{font-weight:400;color:#555}
.protocol{font-size:1.05em;max-width:60em}.lead{border-left:4px solid #1565c0;padding-left:1em;margin:1em 0 2em}
pre{margin:0;font-size:0.85em}figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}
figcaption{font-size:0.85em;color:#555}.note{color:#8a4b00}details{margin:0.6em 0}
summary{cursor:pointer;font-weight:600}small{color:#555}"""


class Raw(str):
    """HTML inserted as is (already escaped); any other str is escaped."""


def esc(value: Any) -> str:
    """`value` as HTML text: `Raw` unchanged, anything else formatted by `fmt` and escaped."""
    return value if isinstance(value, Raw) else html.escape(fmt(value))


def fmt(value: Any, digits: int = DIGITS) -> str:
    """A number rounded for people: floats to `digits` decimals, NaN as 'NaN', None as '–'; others as str."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return "NaN" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def fmt_threshold(value: float | None) -> str:
    """A threshold to 3 significant digits: maps live on any scale, so fixed decimals would hide it."""
    return "–" if value is None else "NaN" if not math.isfinite(value) else f"{value:.3g}"


def fmt_setting(value: float) -> str:
    """A setting or timing for people: 3 significant digits below 1 (0.000123), 3 decimals at most above (1134.52)."""
    v = float(value)
    if not math.isfinite(v) or v == 0:
        return fmt(v)
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.3f}".rstrip("0").rstrip(".")


def mean_std(mean: Any, std: Any, digits: int = DIGITS) -> str:
    """'0.640 ± 0.137'."""
    return f"{fmt(mean, digits)} ± {fmt(std, digits)}"


def link(href: str, text: str) -> Raw:
    """<a> to a relative path (quoted, so spaces and '#' survive)."""
    return Raw(f"<a href='{html.escape(quote(href), quote=True)}'>{html.escape(text)}</a>")


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]], *, cls: str | None = None,
          row_classes: Sequence[str | None] | None = None) -> str:
    """An HTML table; numeric cells are rounded (`fmt`) and right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f"<td class='num'>{esc(c)}</td>" if isinstance(c, (int, float, np.number))
                        and not isinstance(c, bool) else f"<td>{esc(c)}</td>" for c in row)
        rc = row_classes[i] if row_classes is not None and i < len(row_classes) else None
        body.append(f"<tr class='{rc}'>{cells}</tr>" if rc else f"<tr>{cells}</tr>")
    attr = f" class='{html.escape(cls)}'" if cls else ""
    return f"<table{attr}><tr>{head}</tr>{''.join(body)}</table>"


def dict_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as a table (columns: the given ones, else the first row's keys); '<p>none</p>' if empty."""
    if not rows:
        return "<p>none</p>"
    columns = list(columns or rows[0])
    return table(columns, [[r.get(c) for c in columns] for r in rows])


def kv_table(items: Mapping[str, Any]) -> str:
    """Settings as key | value, numbers by `fmt_setting`; nested values as indented JSON (as given)."""
    rows = []
    for k, v in items.items():
        if isinstance(v, (Mapping, list, tuple)):
            shown = f"<pre>{html.escape(json.dumps(v, indent=2, default=str))}</pre>"
        elif isinstance(v, (float, np.floating)):
            shown = html.escape(fmt_setting(v))
        else:
            shown = esc(v)
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{shown}</td></tr>")
    return f"<table class='kv'>{''.join(rows)}</table>"


def details(summary: str, body: str, *, open_: bool = False) -> str:
    """A collapsed section (<details>); `body` is HTML."""
    return f"<details{' open' if open_ else ''}><summary>{html.escape(summary)}</summary>{body}</details>"


def notes(items: Sequence[str]) -> str:
    """Warnings a reader must see, as a list; '' when none."""
    return f"<ul>{''.join(f'<li class=note>{html.escape(n)}</li>' for n in items)}</ul>" if items else ""


def figure(src: str, caption: str) -> str:
    """An image by relative path, with its caption."""
    return (f"<figure><img src='{html.escape(quote(src), quote=True)}' alt='{html.escape(caption, quote=True)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def figures(items: Sequence[tuple[str, str]]) -> str:
    """Several `figure`s; '' when none."""
    return "".join(figure(src, cap) for src, cap in items)


def lead(protocol: str, *blocks: str) -> str:
    """The answer first: the protocol in one sentence, then `blocks` (the headline table, notes)."""
    return f"<section class='lead'><p class='protocol'>{html.escape(protocol)}</p>{''.join(blocks)}</section>"


def page(title: str, body: Sequence[str], css: str = CSS) -> str:
    """A complete HTML document: <h1>title</h1> then the `body` blocks in order."""
    t = html.escape(title)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{t}</title><style>{css}</style>"
            f"</head><body><h1>{t}</h1>{''.join(body)}</body></html>\n")
