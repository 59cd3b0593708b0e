"""PNG figures for reports: slice grids, the Dice-threshold curve, per-subject strips, volume montages.

Uses matplotlib's object API (`Figure`, rendered by Agg) — never pyplot — so no screen, no global
backend switch and no figure leaks in long runs. Files are written atomically.
Colour conventions: grey for MR images (one scale per row), "inferno" for anomaly maps (one scale per
row, with a colour bar), ground truth in green and predictions in red, outlined over the input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from mmccd.atomic import atomic_write as atomic_path

MAP_CMAP = "inferno"
GT_COLOR, PRED_COLOR = "#00e676", "#ff1744"
_MAP_WORDS = ("anomaly", "score", "error", "heat")


def _save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return Path(path)


def _bare(ax: Axes) -> None:
    """No ticks and no frame; unlike axis("off") this keeps the y label (row titles)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def column_kind(name: str, array: np.ndarray) -> str:
    """'mask' for bool arrays, 'map' for names like 'anomaly map' / 'score' / 'error', else 'image'."""
    if np.asarray(array).dtype == bool:
        return "mask"
    low = name.lower()
    return "map" if low.endswith("map") or any(w in low for w in _MAP_WORDS) else "image"


def _range(arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    vals = [a[np.isfinite(a)] for a in arrays]
    vals = [v for v in vals if v.size]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(float(v.min()) for v in vals), max(float(v.max()) for v in vals)
    return (lo, hi) if hi > lo else (lo, lo + 1e-6)


def _outline(ax: Axes, mask: np.ndarray, color: str, fill_alpha: float = 0.3) -> None:
    """Filled, outlined `mask` (H, W) bool on `ax`; nothing when empty."""
    if not mask.any():
        return
    ax.imshow(np.ma.masked_where(~mask, mask), cmap=ListedColormap([color]), alpha=fill_alpha,
              interpolation="nearest", vmin=0, vmax=1)
    if not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=1.0)


def figure_grid(rows: Sequence[Mapping[str, np.ndarray]], columns: Sequence[str], path: str | Path,
                titles: Sequence[str] | None = None, kinds: Mapping[str, str] | None = None,
                base: str = "input", dpi: int = 110) -> Path:
    """A grid of slices: one row per slice, one column per name in `columns`.

    rows:    per slice, {column name: (H, W) array}; a missing name leaves its cell empty
    titles:  one label per row (e.g. "BraTS_003  z=78  Dice 0.61"), written left of the row
    kinds:   per column 'image' | 'map' | 'mask' (default: `column_kind`)
    base:    masks are outlined over this row entry (when present), else shown as binary images"""
    if not rows or not columns:
        raise ValueError("figure_grid: need at least one row and one column")
    if titles is not None and len(titles) != len(rows):
        raise ValueError(f"figure_grid: {len(titles)} titles for {len(rows)} rows")
    cell = 2.2
    fig = Figure(figsize=(cell * len(columns) + 0.8, cell * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    for r, row in enumerate(rows):
        arrays = {c: np.asarray(row[c]) for c in columns if c in row}
        kind = {c: (kinds or {}).get(c) or column_kind(c, a) for c, a in arrays.items()}
        img_lo, img_hi = _range([a for c, a in arrays.items() if kind[c] == "image"])
        map_lo, map_hi = _range([a for c, a in arrays.items() if kind[c] == "map"])
        last_map = None
        for j, name in enumerate(columns):
            ax = axes[r, j]
            _bare(ax)
            if r == 0:
                ax.set_title(name, fontsize=11)
            if name not in arrays:
                continue
            a = arrays[name]
            if kind[name] == "image":
                ax.imshow(a, cmap="gray", vmin=img_lo, vmax=img_hi, interpolation="nearest")
            elif kind[name] == "map":
                last_map = ax.imshow(a, cmap=MAP_CMAP, vmin=map_lo, vmax=map_hi, interpolation="nearest")
            else:
                color = GT_COLOR if ("truth" in name.lower() or name.lower() == "gt") else PRED_COLOR
                if base in arrays and kind.get(base) == "image":
                    ax.imshow(arrays[base], cmap="gray", vmin=img_lo, vmax=img_hi, interpolation="nearest")
                    _outline(ax, a.astype(bool), color)
                else:
                    ax.imshow(a.astype(bool), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if last_map is not None:
            fig.colorbar(last_map, ax=axes[r, :].tolist(), shrink=0.85, pad=0.01, aspect=15)
        if titles is not None:
            axes[r, 0].set_ylabel(titles[r], fontsize=9)
    return _save(fig, path, dpi)


def _xscale(ax: Axes, thresholds: np.ndarray) -> str:
    positive = thresholds[thresholds > 0]
    if positive.size == thresholds.size and positive.size:
        ax.set_xscale("log")
        return "log"
    ax.set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1e-6)
    return "symmetric log"


def dice_threshold_plot(thresholds: np.ndarray, val_curve: np.ndarray, test_curve: np.ndarray | None,
                        chosen: float, path: str | Path, oracle: float | None = None,
                        title: str = "Threshold selection", dpi: int = 110) -> Path:
    """Mean subject Dice against threshold (K,), log x axis; the chosen (validation) threshold marked.

    test_curve: the test Dice at the same thresholds, drawn for information only
    oracle:     the test-optimal threshold, marked and labelled as such"""
    thresholds = np.asarray(thresholds, dtype=float)
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(thresholds, val_curve, color="C0", lw=2, label="validation (used for selection)")
    if test_curve is not None:
        ax.plot(thresholds, test_curve, color="C1", lw=1.5, ls="--", label="test (not used for selection)")
    best = float(np.interp(chosen, thresholds, val_curve))
    ax.axvline(chosen, color="k", ls=":", lw=1)
    ax.plot([chosen], [best], "o", color="C0", ms=7, label=f"chosen {chosen:.4g} (val Dice {best:.3f})")
    if oracle is not None and test_curve is not None:
        ax.plot([oracle], [float(np.interp(oracle, thresholds, test_curve))], "s", mfc="none", color="C1", ms=7,
                label=f"oracle {oracle:.4g} (test-optimal, for comparison only)")
    scale = _xscale(ax, thresholds)
    ax.set_xlabel(f"threshold on the anomaly score ({scale} scale)")
    ax.set_ylabel("mean subject Dice")
    ax.set_ylim(0, min(1.0, max(0.05, float(np.nanmax(val_curve)) * 1.25)))
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path, dpi)


def subject_strip_plot(per_method: Mapping[str, Sequence[float]], path: str | Path, metric: str = "Dice",
                       title: str | None = None, dpi: int = 110) -> Path:
    """One jittered column of per-subject values per method, with a bar at the mean; NaNs left out and counted."""
    if not per_method:
        raise ValueError("subject_strip_plot: no methods given")
    rng = np.random.default_rng(0)  # jitter only; fixed so the figure is reproducible
    fig = Figure(figsize=(1.3 * len(per_method) + 2.0, 4.0), layout="constrained")
    ax = fig.subplots()
    labels, all_vals = [], []
    for i, (method, values) in enumerate(per_method.items()):
        v = np.asarray(values, dtype=float)
        finite = v[np.isfinite(v)]
        all_vals.append(finite)
        ax.scatter(i + rng.uniform(-0.15, 0.15, finite.size), finite, s=18, alpha=0.7, color=f"C{i % 10}",
                   edgecolors="none")
        if finite.size:
            mean, std = float(finite.mean()), float(finite.std())
            ax.hlines(mean, i - 0.3, i + 0.3, color="k", lw=2)
            ax.text(i + 0.32, mean, f"{mean:.3f}\n± {std:.3f}", fontsize=7, va="center")
        n_nan = v.size - finite.size
        labels.append(f"{method}\n(n={finite.size}" + (f", {n_nan} NaN)" if n_nan else ")"))
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlim(-0.6, len(labels) - 0.2)
    joined = np.concatenate(all_vals) if all_vals else np.zeros(0)
    if joined.size and joined.min() >= 0 and joined.max() <= 1:
        ax.set_ylim(0, 1.02)
    ax.set_ylabel(f"{metric} per subject")
    ax.set_title(title or f"{metric} per subject (bar = mean)")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path, dpi)


def _pick_slices(volume: np.ndarray, n: int) -> np.ndarray:
    """Up to `n` evenly spaced indices over the slices that are not constant (i.e. hold anatomy)."""
    flat = volume.reshape(volume.shape[0], -1)
    content = np.flatnonzero(flat.max(axis=1) > flat.min(axis=1))
    if content.size == 0:
        content = np.arange(volume.shape[0])
    pos = np.linspace(0, content.size - 1, min(n, content.size)).round().astype(int)
    return np.unique(content[pos])


def montage(volume_slices: np.ndarray, overlay: np.ndarray | None, path: str | Path, n: int = 16,
            indices: Sequence[int] | None = None, threshold: float | None = None, title: str | None = None,
            dpi: int = 100) -> Path:
    """A montage of `n` slices of a volume (N, H, W), with an optional overlay (N, H, W).

    overlay bool:  outlined in red (e.g. a binary prediction or ground truth)
    overlay float: an anomaly map blended in "inferno" on one scale for all slices (zeros transparent);
                   with `threshold`, the region overlay >= threshold is outlined in cyan
    indices:       slices to show (default: evenly spaced over slices with content); labelled z=<index>"""
    vol = np.asarray(volume_slices)
    if vol.ndim != 3 or (overlay is not None and np.shape(overlay) != vol.shape):
        raise ValueError(f"montage: expected volume (N, H, W) and overlay of the same shape, found {vol.shape}"
                         f" and {None if overlay is None else np.shape(overlay)}")
    idx = np.asarray(indices, dtype=int) if indices is not None else _pick_slices(vol, n)
    ncols = int(np.ceil(np.sqrt(idx.size)))
    nrows = int(np.ceil(idx.size / ncols))
    fig = Figure(figsize=(2.0 * ncols + 0.8, 2.0 * nrows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    lo, hi = _range([vol[idx]])
    ov = None if overlay is None else np.asarray(overlay)
    m_lo, m_hi = 0.0, 1.0
    if ov is not None and ov.dtype != bool:
        sel = ov[idx][np.isfinite(ov[idx]) & (ov[idx] != 0)]
        if sel.size:
            m_lo, m_hi = float(sel.min()), float(np.percentile(sel, 99.9))
            m_hi = m_hi if m_hi > m_lo else m_lo + 1e-6
    im = None
    for ax in axes:
        _bare(ax)
    for ax, z in zip(axes, idx, strict=False):
        ax.imshow(vol[z], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(f"z={int(z)}", fontsize=8)
        if ov is None:
            continue
        if ov.dtype == bool:
            _outline(ax, ov[z], PRED_COLOR)
        else:
            shown = np.ma.masked_where(~np.isfinite(ov[z]) | (ov[z] == 0), ov[z])
            im = ax.imshow(shown, cmap=MAP_CMAP, vmin=m_lo, vmax=m_hi, alpha=0.6, interpolation="nearest")
            if threshold is not None:
                mask = np.nan_to_num(ov[z]) >= threshold
                if mask.any() and not mask.all():
                    ax.contour(mask.astype(float), levels=[0.5], colors=["cyan"], linewidths=0.8)
    if im is not None:
        fig.colorbar(im, ax=axes.tolist(), shrink=0.6, label="anomaly score")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path, dpi)
