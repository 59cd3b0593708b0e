"""Paired comparison of two methods on the same subjects: mean difference and Wilcoxon signed-rank test.

Values are paired by subject id, never by position. d = a - b per subject (a positive mean: a is higher).

Test choices (written once here, and into every result's ``test`` text):
- two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon) on the non-zero differences;
- zeros: subjects with d == 0 are dropped from the test before ranking (Wilcoxon's own rule,
  ``zero_method="wilcox"``): identical values say nothing about which method is better. They still
  count in n, the mean and the std, and the note says how many were dropped;
- differences are rounded to 12 decimals first, so floating-point noise neither makes nor breaks a tie;
- p-value: exact null distribution (``method="exact"``) when the non-zero |d| are all distinct and
  n_test <= 50; with tied |d| (midranks) and n_test <= 16, the exact conditional distribution by
  enumerating all 2^n sign flips (``scipy.stats.PermutationMethod``); otherwise the normal
  approximation with tie correction and no continuity correction (``method="asymptotic"``);
- std of the differences is the population std (ddof=0), as everywhere in `evaluation`;
- p-values are not adjusted for multiple comparisons (e.g. each of k methods against the best).

Small samples are reported, not hidden: with n_test non-zero differences the smallest two-sided p
is 2 / 2**n_test, so n_test < 6 can never give p < 0.05 (the note says so); with no non-zero
difference the p-value is None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

EXACT_MAX_N = 50  # scipy's own limit for its exact distribution
PERMUTATION_MAX_N = 16  # 2^16 sign flips: exact enumeration stays well under a second
DECIMALS = 12


@dataclass(frozen=True)
class PairedComparison:
    """Method a against method b on the same subjects; differences d = a - b.

    n:          subjects compared (shared ids)
    n_test:     subjects with d != 0, the ones the Wilcoxon test ranks
    p_value:    two-sided Wilcoxon signed-rank p-value, None when n_test == 0
    p_method:   "exact", "exact (sign-flip enumeration, ties)", "asymptotic (ties)" / "asymptotic", or "none"
    statistic:  W+ = sum of the ranks of the positive differences (None when n_test == 0)
    n_a_higher / n_b_higher / n_equal: subjects with d > 0, d < 0, d == 0
    dropped_ids: ids present for only one method, dropped because the caller asked (`drop_unshared`)
    note:       plain words on what limits the result (tiny n, ties, zeros, dropped ids); "" if nothing
    """

    method_a: str
    method_b: str
    metric: str
    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    std_diff: float
    median_diff: float
    n_test: int
    n_a_higher: int
    n_b_higher: int
    n_equal: int
    statistic: float | None
    p_value: float | None
    p_method: str
    test: str
    note: str
    dropped_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dropped_ids"] = list(self.dropped_ids)
        return out

    def describe(self) -> str:
        """One line, e.g. 'mmccd - cyclic_unet: mean Δdice +0.031 (std 0.05, n 20), Wilcoxon p = 0.012 (exact)'."""
        p = "p undefined" if self.p_value is None else f"p = {self.p_value:.3g} ({self.p_method})"
        text = (f"{self.method_a} - {self.method_b}: mean Δ{self.metric} {self.mean_diff:+.4f} "
                f"(std {self.std_diff:.4f}, n {self.n}), Wilcoxon {p}")
        return text + (f"; {self.note}" if self.note else "")


def subject_values(rows: Sequence[Mapping[str, Any]], key: str = "dice") -> dict[str, float]:
    """{subject_id: rows[i][key]} from per-subject rows (e.g. `EvalResult.per_subject`); rejects a repeated id."""
    out: dict[str, float] = {}
    for row in rows:
        sid = str(row["subject_id"])
        if sid in out:
            raise ValueError(f"subject {sid} appears twice in the per-subject rows: one value per subject")
        out[sid] = float(row[key])
    return out


def _pair(a: Mapping[str, float], b: Mapping[str, float], names: tuple[str, str],
          drop_unshared: bool) -> tuple[list[str], tuple[str, ...]]:
    """Shared ids (in a's order) and the ids dropped; raises when the id sets differ unless asked to drop."""
    only_a = [s for s in a if s not in b]
    only_b = [s for s in b if s not in a]
    if (only_a or only_b) and not drop_unshared:
        raise ValueError(
            f"{names[0]} and {names[1]} were evaluated on different subjects: only in {names[0]}: "
            f"{only_a[:5]}{' ...' if len(only_a) > 5 else ''} ({len(only_a)}), only in {names[1]}: "
            f"{only_b[:5]}{' ...' if len(only_b) > 5 else ''} ({len(only_b)}); evaluate both on the same test "
            "subjects, or pass drop_unshared=True to compare the shared ones only")
    shared = [s for s in a if s in b]
    if not shared:
        raise ValueError(f"{names[0]} and {names[1]} share no subject id: nothing to compare")
    return shared, tuple(only_a + only_b)


def _wilcoxon(d_test: np.ndarray) -> tuple[float, float, str]:
    """(W+, two-sided p, method) on non-zero differences (n,)."""
    n = d_test.size
    ties = np.unique(np.abs(d_test)).size < n
    r_plus = float(stats.rankdata(np.abs(d_test))[d_test > 0].sum())
    if not ties and n <= EXACT_MAX_N:
        res = stats.wilcoxon(d_test, zero_method="wilcox", alternative="two-sided", method="exact")
        method = "exact"
    elif ties and n <= PERMUTATION_MAX_N:  # midranks: the exact conditional null, all 2^n sign flips
        res = stats.wilcoxon(d_test, zero_method="wilcox", alternative="two-sided",
                             method=stats.PermutationMethod(n_resamples=2 ** n))
        method = "exact (sign-flip enumeration, ties)"
    else:
        res = stats.wilcoxon(d_test, zero_method="wilcox", correction=False, alternative="two-sided",
                             method="asymptotic")
        method = "asymptotic (ties)" if ties else "asymptotic"
    return r_plus, min(1.0, float(res.pvalue)), method


def compare_paired(a: Mapping[str, float], b: Mapping[str, float], name_a: str = "a", name_b: str = "b",
                   metric: str = "dice", drop_unshared: bool = False) -> PairedComparison:
    """Compare per-subject values of two methods, paired by subject id.

    a, b:          {subject_id: value} (e.g. `subject_values(result.per_subject)`), finite values
    drop_unshared: False (default): different id sets are an error; True: compare the shared ids, and
                   name the dropped ones in `dropped_ids` and the note
    Returns a PairedComparison of d = a - b (see the module docstring for the test's choices)."""
    shared, dropped = _pair(a, b, (name_a, name_b), drop_unshared)
    va = np.array([float(a[s]) for s in shared])
    vb = np.array([float(b[s]) for s in shared])
    bad = [s for s, x, y in zip(shared, va, vb, strict=True) if not (math.isfinite(x) and math.isfinite(y))]
    if bad:
        raise ValueError(f"{metric} is NaN or inf for subject(s) {bad[:5]} ({len(bad)}): leave them out of both "
                         "methods' values before comparing (e.g. AUROC of a tumour-free subject)")
    d = np.round(va - vb, DECIMALS)
    d_test = d[d != 0]
    n, n_test = int(d.size), int(d_test.size)
    notes = []
    if dropped:
        notes.append(f"{len(dropped)} subject(s) evaluated by only one method dropped: {list(dropped)[:5]}")
    if n_test == 0:
        statistic, p_value, p_method = None, None, "none"
        notes.append(f"all {n} differences are zero: the test is undefined (no evidence either way)")
    else:
        statistic, p_value, p_method = _wilcoxon(d_test)
        if n - n_test:
            notes.append(f"{n - n_test} zero difference(s) dropped from the test, as Wilcoxon's rule does "
                         f"(kept in mean and std)")
        if n_test < 6:
            notes.append(f"only {n_test} non-zero difference(s): the smallest possible two-sided p is "
                         f"{2.0 ** (1 - n_test):.4g}, so p < 0.05 cannot be reached")
        if p_method.startswith("exact (sign-flip"):
            notes.append("tied |differences|: p from the exact conditional null (all sign flips, midranks)")
        elif p_method == "asymptotic (ties)":
            notes.append(f"tied |differences| and {n_test} > {PERMUTATION_MAX_N} non-zero: p from the "
                         "tie-corrected normal approximation")
    test = (f"two-sided Wilcoxon signed-rank on the {n_test} non-zero of {n} paired differences "
            f"(zero_method='wilcox', differences rounded to {DECIMALS} decimals), p {p_method}")
    return PairedComparison(
        method_a=name_a, method_b=name_b, metric=metric, n=n, mean_a=float(va.mean()), mean_b=float(vb.mean()),
        mean_diff=float(d.mean()), std_diff=float(d.std()), median_diff=float(np.median(d)), n_test=n_test,
        n_a_higher=int(np.count_nonzero(d > 0)), n_b_higher=int(np.count_nonzero(d < 0)),
        n_equal=int(np.count_nonzero(d == 0)), statistic=statistic, p_value=p_value, p_method=p_method,
        test=test, note="; ".join(notes), dropped_ids=dropped)


@dataclass(frozen=True)
class BestComparison:
    """The best method of a table by mean value over the same subjects, and every other method against it.

    best:        name of the method with the highest mean (ties: the first in the table's order)
    means:       {method: mean over `subject_ids`}, in the table's order
    comparisons: one PairedComparison per other method, a = that method, b = the best (mean_diff <= 0)
    subject_ids: the subjects every mean and test uses
    """

    best: str
    metric: str
    means: dict[str, float]
    comparisons: list[PairedComparison]
    subject_ids: list[str]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"best": self.best, "metric": self.metric, "means": dict(self.means), "n_subjects": len(self.subject_ids),
                "comparisons": [c.to_dict() for c in self.comparisons], "note": self.note}


def compare_to_best(table: Mapping[str, Mapping[str, float]], metric: str = "dice",
                    drop_unshared: bool = False) -> BestComparison:
    """Name the best method of `table` by mean `metric` and compare each other method to it.

    table:         {method: {subject_id: value}}, at least two methods; higher is better (Dice, AUROC)
    drop_unshared: False: all methods must have the same subject ids; True: use the ids all methods share,
                   for the ranking and for every test alike"""
    if len(table) < 2:
        raise ValueError(f"compare_to_best needs at least two methods, found {list(table)}")
    names = list(table)
    shared = [s for s in table[names[0]] if all(s in table[m] for m in names[1:])]
    dropped = sorted({s for m in names for s in table[m]} - set(shared))
    if dropped and not drop_unshared:
        per = {m: len(table[m]) for m in names}
        raise ValueError(f"the methods were evaluated on different subjects ({per} subjects; {len(dropped)} not shared, "
                         f"e.g. {dropped[:5]}); evaluate all on the same test subjects, or pass drop_unshared=True")
    if not shared:
        raise ValueError("the methods share no subject id: nothing to compare")
    sub = {m: {s: float(table[m][s]) for s in shared} for m in names}
    means = {m: float(np.mean(list(sub[m].values()))) for m in names}
    best = max(names, key=lambda m: means[m])  # max keeps the first of equal means
    notes = []
    if dropped:
        notes.append(f"{len(dropped)} subject(s) not evaluated by every method dropped: {dropped[:5]}")
    tied = [m for m in names if m != best and means[m] == means[best]]
    if tied:
        notes.append(f"{best} ties on mean {metric} with {tied}; the first in the table is named best")
    comparisons = [compare_paired(sub[m], sub[best], m, best, metric) for m in names if m != best]
    return BestComparison(best, metric, means, comparisons, shared, "; ".join(notes))
