"""Run report: one static HTML page (inline CSS, no JavaScript) plus PNG plots, written into a directory.

Plots use matplotlib's object API (`matplotlib.figure.Figure`), which renders through Agg when saving to PNG and
keeps no global figure registry, so nothing leaks between reports and no pyplot backend has to be chosen.
Every section tolerates missing input: it is left out with a short note, so partial metrics still give a page.
The output directory may be a gs://, s3://, ... URL: plots are rendered into memory and every file is written
through tf.io.gfile (components/fileio.py).
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
from collections.abc import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

from schemas import Hierarchy

INDEX = "index.html"
DPI = 100

TRAINING_CURVES = "training_curves.png"
SPECIES_CONFUSION = "species_confusion.png"
BREED_CONFUSION = "breed_confusion.png"
PER_BREED_ACCURACY = "per_breed_accuracy.png"
RELIABILITY = "reliability.png"
CANDIDATE_VS_BASELINE = "candidate_vs_baseline.png"
IMAGES = (TRAINING_CURVES, SPECIES_CONFUSION, BREED_CONFUSION, PER_BREED_ACCURACY, RELIABILITY, CANDIDATE_VS_BASELINE)

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


class _Skip(Exception):
    """A section cannot be drawn from the given input; the message says why and goes on the page."""


def write_report(
    out_dir: str,
    *,
    title: str,
    metrics: dict,
    history: dict | None,
    hierarchy: Hierarchy,
    baseline_metrics: dict | None = None,
    blessing: dict | None = None,
    extra: dict | None = None,
) -> str:
    """Write index.html and its PNG plots into `out_dir`; return the path of index.html."""
    import tensorflow as tf

    from components import fileio

    tf.io.gfile.makedirs(out_dir)
    # A reused directory may hold plots of an earlier run that this run skips; remove them so none goes stale.
    for name in IMAGES:
        path = os.path.join(out_dir, name)
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    metrics = metrics or {}

    plots: list[tuple[str, str, Callable[[], Figure]]] = [
        (
            TRAINING_CURVES,
            "Training curves: train solid, validation dashed; one colour per head.",
            lambda: _training_curves(history),
        ),
        (
            SPECIES_CONFUSION,
            "Species confusion matrix: rows true, columns predicted; counts, colour = fraction of the row.",
            lambda: _species_confusion(metrics, hierarchy),
        ),
        (
            BREED_CONFUSION,
            "Breed confusion matrix, grouped by species (lines separate species): rows true, columns predicted; "
            "colour = fraction of the row.",
            lambda: _breed_confusion(metrics, hierarchy),
        ),
        (
            PER_BREED_ACCURACY,
            "Per-breed top-1 accuracy, coloured by species, best first within each species.",
            lambda: _per_breed_accuracy(metrics, hierarchy),
        ),
        (
            RELIABILITY,
            "Reliability diagram: accuracy per confidence bin against the diagonal (perfect calibration); "
            "hatched = gap to the bin's mean confidence (red over-, green under-confident). Below: examples per bin.",
            lambda: _reliability(metrics),
        ),
        (
            CANDIDATE_VS_BASELINE,
            "Candidate vs baseline (the currently served model on the same data).",
            lambda: _candidate_vs_baseline(metrics, baseline_metrics),
        ),
    ]
    figures = []
    for name, caption, draw in plots:
        try:
            fig = draw()
        except _Skip as skip:
            figures.append(_note(f"{name[:-4].replace('_', ' ').capitalize()}: {skip}"))
            continue
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=DPI)
        fileio.write_bytes(os.path.join(out_dir, name), png.getvalue())
        figures.append(
            f'<figure><img src="{_e(name)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'
        )

    body = [
        f"<h1>{_e(title)}</h1>",
        _blessing_html(blessing),
        "<h2>Metrics</h2>",
        _metrics_html(metrics, baseline_metrics),
        "<h2>By species</h2>",
        _by_species_html(metrics, baseline_metrics, hierarchy),
        "<h2>Plots</h2>",
        *figures,
        "<h2>Run facts</h2>",
        _extra_html(extra),
    ]
    page = (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>\n'
        f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    index = os.path.join(out_dir, INDEX)
    # Write then rename, so a reader never opens a half-written page.
    tmp = index + ".tmp"
    fileio.write_text(tmp, page)
    fileio.replace(tmp, index)
    return index


# ---------------------------------------------------------------- plots


def _training_curves(history: dict | None) -> Figure:
    if not history:
        raise _Skip("no training history was given.")
    names = sorted({k.removeprefix("val_") for k in history}, key=lambda n: (n not in ("loss", "accuracy"), n))
    losses = [n for n in names if n == "loss" or n.endswith("_loss")]  # the total loss first, then per head
    accuracies = [n for n in names if n == "accuracy" or n.endswith("_accuracy")]
    if not losses and not accuracies:
        raise _Skip(f"the history has no loss or accuracy series (keys: {sorted(history)}).")
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
                    ax.plot(epochs, values, style, color=colour, marker=".", label=_t(f"{name} ({suffix})"))
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


def _species_confusion(metrics: dict, hierarchy: Hierarchy) -> Figure:
    cm = _square(metrics, "species_confusion", len(hierarchy.species))
    labels = [_t(s) for s in hierarchy.species]
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


def _breed_confusion(metrics: dict, hierarchy: Hierarchy) -> Figure:
    cm = _square(metrics, "breed_confusion", len(hierarchy.breeds))
    # Regroup the global (species-mixed) order by species, so within-species confusions sit in diagonal blocks.
    order = [b.global_index for s in hierarchy.species for b in hierarchy.breeds_of[s]]
    norm = _row_normalise(cm[np.ix_(order, order)])
    names = [_t(hierarchy.breeds[i].name) for i in order]
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


def _per_breed_accuracy(metrics: dict, hierarchy: Hierarchy) -> Figure:
    per_breed = metrics.get("per_breed_accuracy")
    if not isinstance(per_breed, dict) or not per_breed:
        raise _Skip("the metrics have no 'per_breed_accuracy'.")
    colours = dict(zip(hierarchy.species, _colours(len(hierarchy.species)), strict=True))
    rows: list[tuple[float, str, str, float | None]] = []  # (y, label, species, accuracy)
    y = 0.0
    for s in hierarchy.species:
        group = [(b.name, _number(per_breed.get(b.name))) for b in hierarchy.breeds_of[s]]
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
        ax.barh(ys, accs, height=0.8, color=colours[s], label=_t(s))
    for ry, _, _, acc in rows:
        ax.text((acc or 0.0) + 0.01, ry, "no examples" if acc is None else f"{acc:.2f}", va="center", fontsize=6)
    ax.set_yticks([r[0] for r in rows], [_t(r[1]) for r in rows], fontsize=7)
    ax.invert_yaxis()  # first row at the top
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("top-1 accuracy")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _reliability(metrics: dict) -> Figure:
    rel = metrics.get("reliability")
    if not isinstance(rel, dict):
        raise _Skip("the metrics have no 'reliability'.")
    try:
        edges = np.asarray(rel["bin_edges"], dtype=float)
        n = len(edges) - 1
        conf = [_number(v) for v in rel["confidence"]]
        acc = [_number(v) for v in rel["accuracy"]]
        count = [int(v or 0) for v in rel["count"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise _Skip(f"'reliability' is malformed ({exc!r}).") from None
    if n < 1 or not len(conf) == len(acc) == len(count) == n:
        raise _Skip(f"'reliability' needs n+1 bin edges and n values per series; got {len(edges)} edges.")
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
    ece = _number(metrics.get("expected_calibration_error"))
    top.set_title("Reliability" + (f" (ECE {ece:.3f})" if ece is not None else ""))
    top.legend(loc="upper left", fontsize=8, framealpha=0.9)
    top.grid(alpha=0.3, zorder=0)
    bottom.bar(lefts, count, width=widths, align="edge", color="grey", edgecolor="black", linewidth=0.5)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("examples")
    return fig


def _candidate_vs_baseline(metrics: dict, baseline: dict | None) -> Figure:
    if not baseline:
        raise _Skip("no baseline model to compare with (first run).")
    # Counts ("examples") are not rates: they would flatten every other bar.
    pairs = [
        (m, _number(metrics.get(m)), _number(baseline.get(m)))
        for m in _scalar_names(metrics)
        if m not in NEUTRAL and _number(metrics.get(m)) is not None and _number(baseline.get(m)) is not None
    ]
    if not pairs:
        raise _Skip("candidate and baseline share no scalar metric.")
    x = np.arange(len(pairs))
    fig = Figure(figsize=(max(6.0, 1.0 + 0.8 * len(pairs)), 4.8), layout="constrained")
    ax = fig.add_subplot()
    for offset, idx, label, colour in ((-0.2, 1, "candidate", "#4c72b0"), (0.2, 2, "baseline", "#aaaaaa")):
        values = [p[idx] for p in pairs]
        bars = ax.bar(x + offset, values, width=0.4, label=label, color=colour, edgecolor="black", linewidth=0.5)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    names = [m + (" (lower is better)" if m in LOWER_IS_BETTER else "") for m, _, _ in pairs]
    ax.set_xticks(x, [_t(n.replace("_", " ")) for n in names], rotation=35, ha="right", fontsize=7)
    ax.set_ylim(0, max(1.0, max(max(p[1], p[2]) for p in pairs)) * 1.15)
    ax.set_ylabel("value")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


# ---------------------------------------------------------------- HTML sections


def _blessing_html(blessing: dict | None) -> str:
    if not blessing:
        return '<div id="decision" class="decision none">NO DECISION</div>' + _note("No blessing decision was given.")
    blessed = bool(blessing.get("blessed"))
    word, cls = ("BLESSED", "blessed") if blessed else ("NOT BLESSED", "rejected")
    parts = [
        f'<div id="decision" class="decision {cls}">{word}</div>',
        f'<p class="reason">{_e(blessing.get("reason", ""))}</p>',
    ]
    checks = blessing.get("checks") or []
    if checks:
        rows = []
        for check in checks:
            passed = bool(check.get("passed"))
            rows.append(
                [
                    _e(check.get("metric", "")),
                    _e(check.get("kind", "")),
                    _fmt(check.get("value")),
                    _fmt(check.get("threshold")),
                    _fmt(check.get("baseline")),
                    f'<span class="{"pass" if passed else "fail"}">{"pass" if passed else "FAIL"}</span>',
                ]
            )
        parts.append(_table(["metric", "check", "value", "threshold", "baseline", "result"], rows, "checks"))
    return "\n".join(parts)


def _metrics_html(metrics: dict, baseline: dict | None) -> str:
    rows = [(m, metrics.get(m), (baseline or {}).get(m)) for m in _scalar_names(metrics)]
    # The breed accuracy within each (correctly predicted) species is a dict; show it as one row per species.
    given = metrics.get("breed_accuracy_given_species")
    if isinstance(given, dict):
        base_given = (baseline or {}).get("breed_accuracy_given_species") or {}
        rows += [(f"breed_accuracy_given_species[{s}]", v, base_given.get(s)) for s, v in given.items()]
    if not rows:
        return _note("The metrics have no scalar values.")
    header = ["metric", "candidate"] + (["baseline", "change"] if baseline else [])
    out = []
    for name, value, base in rows:
        row = [_e(name), _fmt(value)]
        if baseline:
            row += [_fmt(base), _change(value, base, lower_is_better=name in LOWER_IS_BETTER, neutral=name in NEUTRAL)]
        out.append(row)
    return _table(header, out, "metrics")


def _by_species_html(metrics: dict, baseline: dict | None, hierarchy: Hierarchy) -> str:
    by_species = metrics.get("by_species")
    if not isinstance(by_species, dict) or not by_species:
        return _note("The metrics have no 'by_species' section.")
    base = (baseline or {}).get("by_species") or {}
    species = [s for s in hierarchy.species if s in by_species] + [s for s in by_species if s not in hierarchy.species]
    columns: list[str] = []
    for s in species:
        columns += [m for m in by_species[s] or {} if m not in columns]
    rows = []
    for s in species:
        row = [_e(s)]
        for m in columns:
            value = (by_species[s] or {}).get(m)
            cell = _fmt(value)
            base_value = (base.get(s) or {}).get(m)
            if baseline and _number(base_value) is not None and _number(value) is not None:
                cell += f" ({_change(value, base_value, lower_is_better=m in LOWER_IS_BETTER, neutral=m in NEUTRAL)})"
            row.append(cell)
        rows.append(row)
    note = _note("In brackets: change from the baseline.") if baseline and base else ""
    return _table(["species", *columns], rows, "by-species") + note


def _extra_html(extra: dict | None) -> str:
    if not extra:
        return _note("No run facts were given.")
    rows = []
    for key, value in extra.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        rows.append([_e(key), f"<code>{_e(text)}</code>"])
    return _table(["fact", "value"], rows, "facts")


# ---------------------------------------------------------------- helpers


def _scalar_names(metrics: dict) -> list[str]:
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


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _t(text: str) -> str:
    """Plot-safe text: a '$' would otherwise start matplotlib mathtext."""
    return str(text).replace("$", r"\$")


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str) -> str:
    """A table from already-escaped cells (header cells are escaped here)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{_e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _number(value) -> float | None:
    """A finite float, or None for missing / non-numeric / NaN values."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return _e(f"{int(value):,}")
    number = _number(value)
    if number is None:
        return "n/a" if value is None else _e(value)
    return _e(f"{number:.4f}")


def _change(value, base, *, lower_is_better: bool = False, neutral: bool = False) -> str:
    """The signed change, green when better, red when worse, grey when unchanged or `neutral` (e.g. counts)."""
    v, b = _number(value), _number(base)
    if v is None or b is None:
        return "n/a"
    delta = v - b
    better = delta < 0 if lower_is_better else delta > 0
    cls = "same" if abs(delta) < 1e-12 or neutral else ("better" if better else "worse")
    counts = all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in (value, base))
    text = f"{int(delta):+,}" if counts else f"{delta:+.4f}"
    return f'<span class="{cls}">{_e(text)}</span>'


def _series(values) -> np.ndarray | None:
    try:
        array = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    return array if values is not None and array.size else None


def _square(metrics: dict, key: str, n: int) -> np.ndarray:
    if key not in metrics or metrics[key] is None:
        raise _Skip(f"the metrics have no '{key}'.")
    try:
        cm = np.asarray(metrics[key], dtype=float)
    except (TypeError, ValueError) as exc:
        raise _Skip(f"'{key}' is not a numeric matrix ({exc}).") from None
    if cm.shape != (n, n):
        raise _Skip(f"'{key}' has shape {cm.shape}, expected ({n}, {n}) for this hierarchy.")
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


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.3em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.decision { display: inline-block; font-size: 1.6em; font-weight: bold; padding: 0.3em 0.8em; border-radius: 6px;
            letter-spacing: 0.05em; }
.decision.blessed { background: #d9f2dd; color: #14652a; border: 2px solid #14652a; }
.decision.rejected { background: #fbdcdc; color: #8b1414; border: 2px solid #8b1414; }
.decision.none { background: #eee; color: #555; border: 2px solid #999; }
.reason { font-size: 1.1em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td { font-variant-numeric: tabular-nums; }
.pass, .better { color: #14652a; font-weight: bold; }
.fail, .worse { color: #8b1414; font-weight: bold; }
.same { color: #777; }
.note { color: #666; font-style: italic; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; margin-top: 0.3em; }
code { white-space: pre-wrap; word-break: break-word; }
"""
