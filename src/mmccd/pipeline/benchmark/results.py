"""A benchmark's numbers: one entry per method, contrast pair, test set and post-processing, pooled over folds.

Every subject is a test subject in exactly one fold, so the per-subject rows of all folds together are the
evaluation of all subjects: mean ± std over subjects (population std), the number of subjects behind every
number, and the per-fold means beside them. On --test-data every fold's model scores every external
subject: a subject's value is the mean over the folds. The oracle (test-optimal) Dice is the mean over
folds of each fold's oracle, labelled, never a result. Keys without suffix are the reference protocol (each
test subject's max-tumour slice); `*_volume` keys the whole-volume protocol.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmccd.data.store import PreparedStore
from mmccd.evaluation.report import to_jsonable
from mmccd.evaluation.stats import compare_paired, compare_to_best
from mmccd.pipeline.benchmark.plan import RunSpec
from mmccd.pipeline.evaluate import Evaluation
from mmccd.pipeline.runs import read_run_info

Evaluations = Mapping[RunSpec, Mapping[tuple[str, str, str], Evaluation]]  # spec -> {(test set, slices, pp): ...}
SUFFIX = {"max_tumour": "", "all": "_volume"}
#: each fold's evaluation summary keys kept in an entry's "protocols" (levels labelled subject_/slice_/pooled_)
LEVEL_KEYS = ([f"{lvl}_{stat}_{m}" for lvl in ("subject", "slice") for stat in ("mean", "std", "n", "nan")
               for m in ("dice", "auroc", "auprc")] + [f"pooled_{m}" for m in ("dice", "auroc", "auprc")]
              + ["n_subjects", "n_slices", "n_brain_pixels", "n_tumour_pixels", "threshold", "oracle_threshold",
                 "oracle_dice_test", "val_dice_at_threshold", "threshold_search_range", "threshold_at_search_edge",
                 "n_val_subjects", "seconds_per_slice"])


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    return (float(arr.mean()), float(arr.std()), int(arr.size)) if arr.size else (None, None, 0)


def subject_rows(evals: Sequence[Evaluation]) -> dict[str, dict[str, Any]]:
    """{subject: its row}, pooled over the folds' evaluations; a subject tested by several folds (external
    test data) gets the mean of each numeric value over those folds."""
    by_subject: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ev in evals:
        for row in ev.per_subject:
            by_subject[row["subject_id"]].append(row)
    out = {}
    for sid, rows in sorted(by_subject.items()):
        merged: dict[str, Any] = {"subject_id": sid, "n_folds": len(rows)}
        for key in rows[0]:
            values = [r.get(key) for r in rows]
            if key != "subject_id" and all(isinstance(v, (int, float)) and v is not None for v in values):
                merged[key] = float(np.mean(values)) if len(rows) > 1 else values[0]
        out[sid] = merged
    return out


def protocol_keys(evals: Sequence[Evaluation], slices: str) -> dict[str, Any]:
    """The flat keys of one slice protocol over the folds' evaluations."""
    suffix = SUFFIX[slices]
    rows = subject_rows(evals)
    dice_key = "dice_val_threshold" if not suffix else "dice_volume"
    out: dict[str, Any] = {}
    for metric, key in (("dice", dice_key), ("auroc", f"auroc{suffix}"), ("auprc", f"auprc{suffix}")):
        mean, std, n = _mean_std([r.get(metric) for r in rows.values()])
        out.update({key: mean, f"{key}_std": std, f"{key}_n": n})
    oracle, _, _ = _mean_std([ev.summary.get("oracle_dice_test") for ev in evals])
    val, _, _ = _mean_std([ev.summary.get("val_dice_at_threshold") for ev in evals])
    out[f"val_dice{suffix}"] = val  # validation subjects only: what a choice between variants may look at
    pooled = {m: _mean_std([ev.summary.get(f"pooled_{m}") for ev in evals])[0] for m in ("dice", "auroc", "auprc")}
    slice_mean, slice_std, _ = _mean_std([ev.summary.get("slice_mean_dice") for ev in evals])
    out.update({
        "dice_oracle" if not suffix else "dice_volume_oracle": oracle,
        f"pooled_dice{suffix}": pooled["dice"], f"pooled_auroc{suffix}": pooled["auroc"],
        f"pooled_auprc{suffix}": pooled["auprc"],
        f"slice_mean_dice{suffix}": slice_mean, f"slice_std_dice{suffix}": slice_std,
        f"n_test_subjects{suffix}": len(rows),
        f"n_test_slices{suffix}": int(sum(ev.summary.get("n_test_slices", 0) for ev in evals)),
        f"seconds_per_slice{suffix}": _mean_std([ev.summary.get("seconds_per_slice") for ev in evals])[0],
        f"threshold{suffix}": evals[0].summary.get("threshold") if len(evals) == 1 else
        [ev.summary.get("threshold") for ev in evals],
        f"threshold_at_search_edge{suffix}": any(ev.summary.get("threshold_at_search_edge") for ev in evals),
        f"n_val_subjects{suffix}": int(sum(ev.summary.get("n_val_subjects", 0) for ev in evals)),
    })
    if len(evals) == 1:
        low, high = evals[0].summary.get("threshold_search_range") or (None, None)
        out.update({f"threshold{suffix}_search_low": low, f"threshold{suffix}_search_high": high,
                    f"oracle_threshold{suffix}": evals[0].summary.get("oracle_threshold")})
    if slices == "all" and any("lesion_sensitivity" in r for r in rows.values()):
        sens, sens_std, n_sens = _mean_std([r.get("lesion_sensitivity") for r in rows.values()])
        fp, fp_std, _ = _mean_std([r.get("fp_components") for r in rows.values()])
        hd = [r.get("hd95_mm") for r in rows.values()]
        finite = [h for h in hd if h is not None and np.isfinite(h)]
        n_lesions = int(sum(r.get("n_lesions", 0) for r in rows.values()))
        detected = int(sum(r.get("n_detected", 0) for r in rows.values()))
        out.update({"lesion_sensitivity": sens, "lesion_sensitivity_std": sens_std, "lesion_sensitivity_n": n_sens,
                    "pooled_lesion_sensitivity": detected / n_lesions if n_lesions else None,
                    "n_lesions": n_lesions, "fp_per_volume": fp, "fp_per_volume_std": fp_std,
                    "hd95_mm_median": float(np.median(finite)) if finite else None,
                    "hd95_mm_n_finite": len(finite), "hd95_mm_n_undefined": len(hd) - len(finite)})
    return out


def per_fold(specs_evals: Sequence[tuple[RunSpec, Evaluation]]) -> list[dict[str, Any]]:
    """One row per fold: its number of test subjects, mean Dice, threshold and oracle Dice."""
    return [{"fold": spec.fold, "n": ev.summary.get("n_subjects"), "dice": ev.summary.get("subject_mean_dice"),
             "threshold": ev.summary.get("threshold"), "oracle_dice": ev.summary.get("oracle_dice_test")}
            for spec, ev in specs_evals]


def training_time(spec: RunSpec) -> dict[str, Any]:
    """Wall-clock training seconds per network of the run; a network copied from `spec.reuse` or `spec.mirror`
    counts with the time it took there (so a table's sum counts a shared network in every row that uses it)."""
    info = read_run_info(spec.run)
    own, borrowed = info.get("train_seconds", {}), info.get("borrowed", {})
    shared = read_run_info(spec.reuse).get("train_seconds", {}) if spec.reuse is not None else {}
    by_net: dict[str, float | None] = {}
    notes = []
    for name in sorted(p.stem for p in (spec.run / "checkpoints").glob("*.pt")):
        if name in own:
            by_net[name] = own[name]
            if name in borrowed:
                notes.append(f"{name} is {Path(borrowed[name]).stem} of {spec.mirror.name if spec.mirror else 'the reversed pair'}")
        elif name in shared:
            by_net[name] = shared[name]
            notes.append(f"{name} shared with {spec.reuse.name if spec.reuse else ''}")
        else:
            by_net[name] = None
            notes.append(f"{name}: time not recorded")
    known = [v for v in by_net.values() if v is not None]
    total = round(sum(known), 1) if len(known) == len(by_net) else None
    return {"train_seconds": total, "train_seconds_by_net": by_net, "train_note": "; ".join(notes)}


def make_entries(specs: Sequence[RunSpec], evals: Evaluations, out: Path, protocols: Sequence[str],
                 postprocess: Sequence[str], test_sets: Sequence[str], main_seed: Mapping[str, int],
                 describe_scoring: Any) -> list[dict[str, Any]]:
    """The rows of results.json: (method, pair, test set, post-processing), the main seed's runs only."""
    entries = []
    groups: dict[tuple[str, str], list[RunSpec]] = defaultdict(list)
    for spec in specs:
        if spec.seed == main_seed[spec.pair]:
            groups[(spec.name, spec.pair)].append(spec)
    for (method, pair), group in groups.items():
        first = group[0]
        train = [training_time(s) for s in group]
        total = [t["train_seconds"] for t in train]
        run_info = read_run_info(first.run)
        for test_set in test_sets:
            for pp in postprocess:
                entry: dict[str, Any] = {
                    "method": method, "base_method": first.method, "variant": first.variant,
                    "source": first.source, "target": first.target, "pair": pair,
                    "test_set": test_set, "postprocess": pp, "folds": None if first.fold is None else len(group),
                    "runs": [str(s.run.relative_to(out)) for s in group]}
                per_subject, folds, reports, levels = {}, {}, {}, {}
                score_config = None
                for slices in protocols:
                    pairs = [(s, evals[s][(test_set, slices, pp)]) for s in group]
                    chosen = [ev for _, ev in pairs]
                    entry.update(protocol_keys(chosen, slices))
                    per_subject[slices] = {sid: r.get("dice") for sid, r in subject_rows(chosen).items()}
                    folds[slices] = per_fold(pairs)
                    levels[slices] = [{k: ev.summary[k] for k in LEVEL_KEYS if k in ev.summary} for ev in chosen]
                    reports[slices] = [str((ev.folder / "report.html").relative_to(out)) for ev in chosen]
                    score_config = score_config or chosen[0].summary.get("score_config")
                if entry.get("seconds_per_slice") is None:
                    entry["seconds_per_slice"] = entry.get("seconds_per_slice_volume")
                entry.update({
                    "n_train_subjects": len(first.split.train), "n_train_slices": run_info.get("train_slices"),
                    "train_seconds": round(sum(total), 1) if None not in total else None,
                    "train_seconds_by_net": train[0]["train_seconds_by_net"] if len(group) == 1 else
                    {k: round(sum(t["train_seconds_by_net"].get(k) or 0 for t in train), 1)
                     for k in train[0]["train_seconds_by_net"]},
                    "train_note": train[0]["train_note"], "trained_with_code": trained_with_code(*(read_run_info(s.run) for s in group)),  # every fold's
                    "trained_with_code_by_net": run_info.get("code_version_by_net", {}),
                    "borrowed_networks": sorted(run_info.get("borrowed", {})),  # from the reversed pair's run
                    "scoring": describe_scoring(first.method, score_config), "score_config": score_config,
                    "per_subject_dice": per_subject, "per_fold": folds, "protocols": levels, "reports": reports})
                entries.append(entry)
    add_paired_comparisons(entries, protocols)
    add_base_comparisons(entries, protocols)
    return [to_jsonable(e) for e in entries]


def trained_with_code(*run_infos: Mapping[str, Any]) -> str | None:
    """The code version(s) that trained the runs' networks (a row's folds), borrowed ones included
    (comma-separated when they differ); a run's own call's version where it records none per network (a
    network-free method, older runs)."""
    versions = set()
    for info in run_infos:
        by_net = {v for v in (info.get("code_version_by_net") or {}).values() if v}
        versions |= by_net or ({info["code_version"]} if info.get("code_version") else set())
    return ", ".join(sorted(versions)) or None


def add_base_comparisons(entries: list[dict[str, Any]], protocols: Sequence[str]) -> None:
    """A variant (METHOD@PRESET) against its plain method on the same subjects: `vs_base` per protocol."""
    plain = {(e["method"], e["pair"], e["test_set"], e["postprocess"]): e for e in entries if not e.get("variant")}
    for e in entries:
        base = plain.get((e.get("base_method"), e["pair"], e["test_set"], e["postprocess"])) if e.get("variant") else None
        if base is None:
            continue
        e["vs_base"] = {}
        for slices in protocols:
            a = {s: v for s, v in e["per_subject_dice"][slices].items() if v is not None}
            b = {s: v for s, v in base["per_subject_dice"][slices].items() if v is not None}
            c = compare_paired(a, b, e["method"], base["method"], drop_unshared=True)
            e["vs_base"][slices] = {"base": base["method"], "n": c.n, "mean_diff": c.mean_diff, "std_diff": c.std_diff,
                                    "p_value": c.p_value, "p_method": c.p_method, "n_higher": c.n_a_higher,
                                    "n_lower": c.n_b_higher, "note": c.note}


def add_paired_comparisons(entries: list[dict[str, Any]], protocols: Sequence[str]) -> None:
    """Every entry's per-subject Dice against the best method of its table (same pair, test set and
    post-processing): mean difference and Wilcoxon signed-rank p over the same subjects (`vs_best`)."""
    tables: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        tables[(e["pair"], e["test_set"], e["postprocess"])].append(e)
    for rows in tables.values():
        for e in rows:
            e.setdefault("vs_best", {})
        for slices in protocols:
            table = {e["method"]: {s: v for s, v in e["per_subject_dice"][slices].items() if v is not None}
                     for e in rows}
            if len(table) < 2:
                for e in rows:
                    e["vs_best"][slices] = {"best": e["method"], "note": "one method only: nothing to compare"}
                continue
            best = compare_to_best(table, drop_unshared=True)
            for e in rows:
                if e["method"] == best.best:
                    e["vs_best"][slices] = {"best": best.best, "is_best": True, "n": len(best.subject_ids),
                                            "note": best.note}
                    continue
                c = next(c for c in best.comparisons if c.method_a == e["method"])
                e["vs_best"][slices] = {"best": best.best, "is_best": False, "n": c.n, "mean_diff": c.mean_diff,
                                        "std_diff": c.std_diff, "p_value": c.p_value, "p_method": c.p_method,
                                        "n_higher": c.n_a_higher, "n_lower": c.n_b_higher, "n_equal": c.n_equal,
                                        "note": c.note}


def seed_study(specs: Sequence[RunSpec], evals: Evaluations, protocols: Sequence[str], test_set: str,
               postprocess: str) -> list[dict[str, Any]]:
    """Training noise: for each method and pair trained with several seeds on fold 0, the mean Dice per seed on
    that fold's test subjects, the std over seeds beside the std over subjects, and each pairwise method
    difference of seed-mean Dice compared with the seed spread: "larger_than_spread" when |difference| is
    more than twice the larger of the two methods' seed std."""
    groups: dict[tuple[str, str], list[RunSpec]] = defaultdict(list)
    for spec in specs:
        if spec.fold in (None, 0):
            groups[(spec.name, spec.pair)].append(spec)
    rows = []
    for (method, pair), group in groups.items():
        if len({s.seed for s in group}) < 2:
            continue
        row: dict[str, Any] = {"method": method, "pair": pair, "seeds": sorted(s.seed for s in group)}
        for slices in protocols:
            suffix = SUFFIX[slices]
            per_seed = {}
            subject_std = []
            for s in sorted(group, key=lambda s: s.seed):
                ev = evals[s][(test_set, slices, postprocess)]
                per_seed[s.seed] = ev.summary.get("subject_mean_dice")
                subject_std.append(ev.summary.get("subject_std_dice"))
            values = [v for v in per_seed.values() if v is not None]
            row.update({f"dice_per_seed{suffix}": per_seed, f"dice_mean_over_seeds{suffix}": float(np.mean(values)),
                        f"seed_std{suffix}": float(np.std(values)), f"subject_std{suffix}": float(np.mean(subject_std)),
                        f"n_subjects{suffix}": ev.summary.get("n_subjects")})
        rows.append(row)
    for slices in protocols:  # which method differences (means over seeds) exceed the seed spread
        suffix = SUFFIX[slices]
        for a in rows:
            a[f"differences_vs_seed_spread{suffix}"] = {
                b["method"]: {"diff": a[f"dice_mean_over_seeds{suffix}"] - b[f"dice_mean_over_seeds{suffix}"],
                              "seed_spread": max(a[f"seed_std{suffix}"], b[f"seed_std{suffix}"]),
                              "larger_than_spread": abs(a[f"dice_mean_over_seeds{suffix}"] -
                                                        b[f"dice_mean_over_seeds{suffix}"]) >
                              2 * max(a[f"seed_std{suffix}"], b[f"seed_std{suffix}"])}
                for b in rows if b is not a and b["pair"] == a["pair"]}
    return [to_jsonable(r) for r in rows]


def write_views(out: Path, entries: list[dict[str, Any]], specs: Sequence[RunSpec], evals: Evaluations,
                internal: str, raw: str, store: PreparedStore) -> None:
    """Case views of each method's worst and best test subject (whole-volume Dice, raw maps), pooled over folds:
    OUT/views/<row>_<pair>/<subject>_view.html, from the maps the evaluation scored; linked from the entry."""
    from mmccd.evaluation.postprocess import PostProcess
    from mmccd.pipeline.evaluate import EvaluationKey
    from mmccd.pipeline.views import subject_view, worst_and_best
    from mmccd.scoring.slices import find_cache

    slices = "all"
    for e in entries:
        if e["test_set"] != internal or e["postprocess"] != raw or slices not in e["per_subject_dice"]:
            continue
        rows = [{"subject_id": s, "dice": d} for s, d in e["per_subject_dice"][slices].items()]
        group = [s for s in specs if s.name == e["method"] and s.pair == e["pair"] and s.seed == specs[0].seed]
        made = {}
        for sid in worst_and_best(rows):
            spec = next((s for s in group if sid in s.split.test), None)
            ev = evals[spec][(internal, slices, raw)] if spec is not None else None
            if ev is None or "evaluation_settings" not in ev.summary:
                continue
            key = EvaluationKey.from_dict(ev.summary["evaluation_settings"])
            cached = find_cache(spec.run, "test", slices, key.maps("test"))
            if cached is None:
                continue
            idx = [i for i, s in enumerate(cached.subject_ids) if s == sid]
            dice = e["per_subject_dice"][slices][sid]
            path = subject_view(out / "views" / f"{e['method']}_{e['pair'].replace(':', '-')}", store, sid,
                                e["source"], ev.summary["threshold"],
                                f"{sid} — {e['method']}, {e['source']} → {e['target']}, whole-volume Dice {dice:.3f} "
                                f"at its fold's validation threshold", PostProcess(),
                                (np.asarray([cached.slice_indices[i] for i in idx]), cached.maps[idx]))
            if path is not None:
                made[sid] = str(path.relative_to(out))
        e["views"] = made


__all__ = ["add_base_comparisons", "add_paired_comparisons", "make_entries", "protocol_keys", "seed_study",
           "subject_rows", "training_time", "write_views"]
