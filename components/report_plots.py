"""The run report's plots: matplotlib figures drawn from the evaluator's metrics and the training history.

Plots use matplotlib's object API (`matplotlib.figure.Figure`), which renders through Agg when saving to PNG and
keeps no global figure registry, so nothing leaks between reports and no pyplot backend has to be chosen.
A plot that cannot be drawn from its input raises PlotSkipped with the reason, which the page shows instead.
Also here: how the evaluator's scalar metrics are read (order, direction), which the page's tables share.
"""

from __future__ import annotations

import math
import re

import numpy as np
from matplotlib.figure import Figure

from schemas import Hierarchy

# The evaluator's scalars, in the order a reader wants them; unknown scalars are appended after these.
SCALAR_METRICS = (
    "examples",
    "species_accuracy",
    "breed_top1_accuracy",
    "breed_top5_accuracy",
    "mean_per_class_accuracy",
    "hierarchical_precision",
    "hierarchical_recall",
    "hierarchical_f1",
    "hierarchy_consistency",
    "expected_calibration_error",
    "species_expected_calibration_error",
)
LOWER_IS_BETTER = frozenset({"expected_calibration_error", "species_expected_calibration_error"})
NEUTRAL = frozenset({"examples"})  # a change in count is neither better nor worse
# The evaluator names the top-k key after the k it actually served (top_k capped by the smallest species).
TOP_K = re.compile(r"breed_top(\d+)_accuracy")


class PlotSkipped(Exception):
    """A plot cannot be drawn from the given input; the message says why and goes on the page."""


def scalar_metric_names(metrics: dict) -> list[str]:
    """The scalar (or null) entries of `metrics`: the known ones in reading order, then any others by name."""

    def rank(name: str) -> tuple:
        if name in SCALAR_METRICS:
            return (SCALAR_METRICS.index(name), 0, name)
        top_k = TOP_K.fullmatch(name)
        if top_k:  # wherever k is, next to top-1
            return (SCALAR_METRICS.index("breed_top1_accuracy"), int(top_k.group(1)), name)
        return (len(SCALAR_METRICS), 0, name)

    scalars = [
        k
        for k, v in metrics.items()
        if v is None or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool))
    ]
    return sorted(scalars, key=rank)


def finite_number(value) -> float | None:
    """A finite float, or None for missing / non-numeric / NaN values."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------- plots


def training_curves(history: dict | None) -> Figure:
    if not history:
        raise PlotSkipped("no training history was given.")
    names = sorted({k.removeprefix("val_") for k in history}, key=lambda n: (n not in ("loss", "accuracy"), n))
    losses = [n for n in names if n == "loss" or n.endswith("_loss")]  # the total loss first, then per head
    accuracies = [n for n in names if n == "accuracy" or n.endswith("_accuracy")]
    if not losses and not accuracies:
        raise PlotSkipped(f"the history has no loss or accuracy series (keys: {sorted(history)}).")
    panels = [(p, label) for p, label in ((losses, "loss"), (accuracies, "accuracy")) if p]
    fig = Figure(figsize=(6 * len(panels), 4.2), layout="constrained")
    # One colour per head in both panels (the total loss in black), so a head's loss and accuracy match up.
    heads = sorted({_head(n) for n in losses + accuracies} - {""})
    colour_of = {"": "black", **dict(zip(heads, _colours(len(heads)), strict=True))}
    for i, (names, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for name in names:
            colour = colour_of[_head(name)]
            for key, style, suffix in ((name, "-", "train"), (f"val_{name}", "--", "val")):
                values = _series(history.get(key))
                if values is not None:
                    epochs = np.arange(1, len(values) + 1)
                    ax.plot(epochs, values, style, color=colour, marker=".", label=_plot_text(f"{name} ({suffix})"))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title("Losses" if label == "loss" else "Accuracies")
        if label == "accuracy":
            ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def _head(series: str) -> str:
    """'cat_breed_loss' -> 'cat_breed'; the overall 'loss' / 'accuracy' -> ''."""
    return series.rpartition("_")[0]


def species_confusion(metrics: dict, hierarchy: Hierarchy) -> Figure:
    cm = _square(metrics, "species_confusion", len(hierarchy.species))
    labels = [_plot_text(s) for s in hierarchy.species]
    n = len(labels)
    size = 2.5 + 0.9 * n
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.add_subplot()
    norm = _row_normalise(cm)
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for r in range(n):
        for c in range(n):
            ax.text(
                c,
                r,
                f"{int(cm[r, c])}\n{norm[r, c]:.1%}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if norm[r, c] > 0.5 else "black",
            )
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted species")
    ax.set_ylabel("true species")
    fig.colorbar(image, ax=ax, label="fraction of true row")
    return fig


def breed_confusion(metrics: dict, hierarchy: Hierarchy) -> Figure:
    cm = _square(metrics, "breed_confusion", len(hierarchy.breeds))
    # Regroup the global (species-mixed) order by species, so within-species confusions sit in diagonal blocks.
    order = [b.global_index for s in hierarchy.species for b in hierarchy.breeds_of[s]]
    norm = _row_normalise(cm[np.ix_(order, order)])
    names = [_plot_text(hierarchy.breeds[i].name) for i in order]
    colours = dict(zip(hierarchy.species, _colours(len(hierarchy.species)), strict=True))
    tick_colours = [colours[hierarchy.breeds[i].species] for i in order]
    n = len(order)
    size = min(16.0, 3 + 0.2 * n)  # about 0.2 inch a row keeps 6-point labels apart
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(n), names, rotation=90, fontsize=6)
    ax.set_yticks(range(n), names, fontsize=6)
    for tick_labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        for tick, colour in zip(tick_labels, tick_colours, strict=True):
            tick.set_color(colour)
    edge = 0
    for s in hierarchy.species[:-1]:
        edge += len(hierarchy.breeds_of[s])
        ax.axhline(edge - 0.5, color="black", linewidth=1)
        ax.axvline(edge - 0.5, color="black", linewidth=1)
    ax.set_xlabel("predicted breed")
    ax.set_ylabel("true breed")
    fig.colorbar(image, ax=ax, shrink=0.6, label="fraction of true row")
    return fig


def per_breed_accuracy(metrics: dict, hierarchy: Hierarchy) -> Figure:
    per_breed = metrics.get("per_breed_accuracy")
    if not isinstance(per_breed, dict) or not per_breed:
        raise PlotSkipped("the metrics have no 'per_breed_accuracy'.")
    colours = dict(zip(hierarchy.species, _colours(len(hierarchy.species)), strict=True))
    rows: list[tuple[float, str, str, float | None]] = []  # (y, label, species, accuracy)
    y = 0.0
    for s in hierarchy.species:
        group = [(b.name, finite_number(per_breed.get(b.name))) for b in hierarchy.breeds_of[s]]
        # Best first; breeds without test examples (None) go last.
        group.sort(key=lambda item: (item[1] is None, -(item[1] or 0.0), item[0]))
        for name, acc in group:
            rows.append((y, name, s, acc))
            y += 1
        y += 0.6  # a gap between species groups
    fig = Figure(figsize=(8, 1.2 + 0.2 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    for s in hierarchy.species:
        ys = [r[0] for r in rows if r[2] == s and r[3] is not None]
        accs = [r[3] for r in rows if r[2] == s and r[3] is not None]
        ax.barh(ys, accs, height=0.8, color=colours[s], label=_plot_text(s))
    for ry, _, _, acc in rows:
        ax.text((acc or 0.0) + 0.01, ry, "no examples" if acc is None else f"{acc:.2f}", va="center", fontsize=6)
    ax.set_yticks([r[0] for r in rows], [_plot_text(r[1]) for r in rows], fontsize=7)
    ax.invert_yaxis()  # first row at the top
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("top-1 accuracy")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def reliability(metrics: dict) -> Figure:
    rel = metrics.get("reliability")
    if not isinstance(rel, dict):
        raise PlotSkipped("the metrics have no 'reliability'.")
    try:
        edges = np.asarray(rel["bin_edges"], dtype=float)
        n = len(edges) - 1
        conf = [finite_number(v) for v in rel["confidence"]]
        acc = [finite_number(v) for v in rel["accuracy"]]
        count = [int(v or 0) for v in rel["count"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise PlotSkipped(f"'reliability' is malformed ({exc!r}).") from None
    if n < 1 or not len(conf) == len(acc) == len(count) == n:
        raise PlotSkipped(f"'reliability' needs n+1 bin edges and n values per series; got {len(edges)} edges.")
    lefts, widths = edges[:-1], np.diff(edges)
    filled = [i for i in range(n) if acc[i] is not None and conf[i] is not None]
    fig = Figure(figsize=(6, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration", zorder=3)
    x, w = [lefts[i] for i in filled], [widths[i] for i in filled]
    top.bar(x, [acc[i] for i in filled], width=w, align="edge", color="#4c72b0", label="accuracy", zorder=1)
    # The gap spans accuracy to mean confidence: red above the bar (over-confident), green inside (under).
    for sign, colour, label in ((1, "#dd4444", "over-confident gap"), (-1, "#2ca02c", "under-confident gap")):
        side = [i for i in filled if sign * (conf[i] - acc[i]) > 0]
        if side:
            top.bar(
                [lefts[i] for i in side],
                [conf[i] - acc[i] for i in side],
                bottom=[acc[i] for i in side],
                width=[widths[i] for i in side],
                align="edge",
                color=colour,
                alpha=0.45,
                edgecolor=colour,
                linewidth=0.5,
                hatch="//",
                label=label,
                zorder=2,
            )
    # Outlines last, so each bin's accuracy stays readable where a gap is drawn over its bar.
    top.bar(x, [acc[i] for i in filled], width=w, align="edge", fill=False, edgecolor="black", linewidth=0.7, zorder=4)
    top.set_xlim(edges[0], edges[-1])
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    ece = finite_number(metrics.get("expected_calibration_error"))
    top.set_title("Reliability" + (f" (ECE {ece:.3f})" if ece is not None else ""))
    top.legend(loc="upper left", fontsize=8, framealpha=0.9)
    top.grid(alpha=0.3, zorder=0)
    bottom.bar(lefts, count, width=widths, align="edge", color="grey", edgecolor="black", linewidth=0.5)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("examples")
    return fig


def candidate_vs_baseline(metrics: dict, baseline: dict | None) -> Figure:
    if not baseline:
        raise PlotSkipped("no baseline model to compare with (first run).")
    # Counts ("examples") are not rates: they would flatten every other bar.
    pairs = [
        (m, finite_number(metrics.get(m)), finite_number(baseline.get(m)))
        for m in scalar_metric_names(metrics)
        if m not in NEUTRAL
    ]
    pairs = [p for p in pairs if p[1] is not None and p[2] is not None]
    if not pairs:
        raise PlotSkipped("candidate and baseline share no scalar metric.")
    x = np.arange(len(pairs))
    fig = Figure(figsize=(max(6.0, 1.0 + 0.8 * len(pairs)), 4.8), layout="constrained")
    ax = fig.add_subplot()
    for offset, idx, label, colour in ((-0.2, 1, "candidate", "#4c72b0"), (0.2, 2, "baseline", "#aaaaaa")):
        values = [p[idx] for p in pairs]
        bars = ax.bar(x + offset, values, width=0.4, label=label, color=colour, edgecolor="black", linewidth=0.5)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    names = [m + (" (lower is better)" if m in LOWER_IS_BETTER else "") for m, _, _ in pairs]
    ax.set_xticks(x, [_plot_text(n.replace("_", " ")) for n in names], rotation=35, ha="right", fontsize=7)
    ax.set_ylim(0, max(1.0, max(max(p[1], p[2]) for p in pairs)) * 1.15)
    ax.set_ylabel("value")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


# ---------------------------------------------------------------- helpers


def _plot_text(text: str) -> str:
    """Plot-safe text: a '$' would otherwise start matplotlib mathtext."""
    return str(text).replace("$", r"\$")


def _series(values) -> np.ndarray | None:
    try:
        array = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    return array if values is not None and array.size else None


def _square(metrics: dict, key: str, n: int) -> np.ndarray:
    if key not in metrics or metrics[key] is None:
        raise PlotSkipped(f"the metrics have no '{key}'.")
    try:
        cm = np.asarray(metrics[key], dtype=float)
    except (TypeError, ValueError) as exc:
        raise PlotSkipped(f"'{key}' is not a numeric matrix ({exc}).") from None
    if cm.shape != (n, n):
        raise PlotSkipped(f"'{key}' has shape {cm.shape}, expected ({n}, {n}) for this hierarchy.")
    return cm


def _row_normalise(cm: np.ndarray) -> np.ndarray:
    totals = cm.sum(axis=1, keepdims=True)
    # Rows without examples stay 0 instead of dividing by zero.
    return np.divide(cm, totals, out=np.zeros_like(cm, dtype=float), where=totals > 0)


def _colours(n: int) -> list:
    """n distinct colours from the tab10 cycle (repeats after 10, which no species count here reaches)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(max(n, 1))]
