"""Any two rows of a benchmark's results.json, compared on the same subjects (`mmccd compare`).

The results tables compare every method with the best one; a reader who wants "does A beat B?" for two other
rows (a variant against the threshold, one contrast's DAE against another's) gets the same paired test here:
per-subject Dice differences A − B over the subjects both rows evaluated, two-sided Wilcoxon signed-rank
(`mmccd.evaluation.stats.compare_paired`), per protocol (max-tumour slice, whole volume).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmccd.errors import MmccdError
from mmccd.evaluation.stats import PairedComparison, compare_paired

PROTOCOL_NAMES = {"max_tumour": "Dice, max-tumour slice", "all": "Dice, whole volume"}


def _pp_matches(entry: Mapping[str, Any], postprocess: str) -> bool:
    described = str(entry["postprocess"])
    return described == postprocess or described.split("@", 1)[0] == postprocess


def find_row(results: Mapping[str, Any], method: str, pair: str | None, postprocess: str,
             test_set: str | None, where: Path) -> Mapping[str, Any]:
    """The one row of `results` for method (and pair, post-processing, test set); a clear error otherwise."""
    rows = [e for e in results["results"] if e["method"] == method and (pair is None or e["pair"] == pair)
            and _pp_matches(e, postprocess) and (test_set is None or e["test_set"] == test_set)]
    if test_set is None and len({e["test_set"] for e in rows}) > 1:
        rows = [e for e in rows if e["test_set"] == results["results"][0]["test_set"]]  # the internal test split
    if len(rows) == 1:
        return rows[0]
    have = sorted({f"{e['method']} ({e['pair']})" for e in results["results"]})
    if not rows:
        raise MmccdError(f"{where}: no row for method {method!r}" + (f" on pair {pair}" if pair else "") +
                         f" with post-processing {postprocess!r}; the rows are: {', '.join(have)}")
    pairs = sorted({e["pair"] for e in rows})
    raise MmccdError(f"{where}: method {method!r} has rows on several pairs ({', '.join(pairs)}): give --pair "
                     f"(or METHOD/PAIR, e.g. {method}/{pairs[0]})")


def compare_rows(results_path: Path, a: str, b: str, pair: str | None = None, postprocess: str = "none",
                 test_set: str | None = None) -> dict[str, PairedComparison]:
    """A − B per protocol. `a`, `b`: a row's method, or METHOD/SOURCE:TARGET for a row of another pair."""
    results_path = Path(results_path)
    if results_path.is_dir():
        results_path = results_path / "results.json"
    if not results_path.is_file():
        raise MmccdError(f"{results_path}: expected a benchmark's results.json (mmccd benchmark --out DIR writes "
                         "DIR/results.json); found no such file")
    try:
        results = json.loads(results_path.read_text())
        results["results"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MmccdError(f"{results_path}: expected a benchmark's results.json with a 'results' list; "
                         f"could not read it ({exc})") from exc
    rows = []
    for name in (a, b):
        method, _, own_pair = name.partition("/")
        rows.append(find_row(results, method, own_pair or pair, postprocess, test_set, results_path))
    out = {}
    for slices in (s for s in PROTOCOL_NAMES if s in rows[0]["per_subject_dice"] and s in rows[1]["per_subject_dice"]):
        va, vb = ({s: v for s, v in r["per_subject_dice"][slices].items() if v is not None} for r in rows)
        out[slices] = compare_paired(va, vb, a, b, drop_unshared=True)
    return out


def format_comparison(comparisons: Mapping[str, PairedComparison]) -> Sequence[str]:
    lines = []
    for slices, c in comparisons.items():
        p = "undefined" if c.p_value is None else f"{c.p_value:.2g}"
        lines.append(f"{PROTOCOL_NAMES[slices]}: {c.method_a} {c.mean_a:.3f} vs {c.method_b} {c.mean_b:.3f}; "
                     f"A − B = {c.mean_diff:+.3f} ± {c.std_diff:.3f} over n={c.n} subjects "
                     f"(A higher on {c.n_a_higher}, B on {c.n_b_higher}, equal on {c.n_equal}); "
                     f"Wilcoxon signed-rank p {p} ({c.p_method})" + (f"; {c.note}" if c.note else ""))
    return lines
