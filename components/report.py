"""Run report: one static HTML page (inline CSS, no JavaScript) plus PNG plots, written into a directory.

The plots are drawn by components/report_plots.py; the page is the Jinja2 template
components/templates/run_report.html.j2 (with run_report.css), rendered with autoescape on, so every value from
the metrics, the hierarchy or the caller is escaped. This module turns the inputs into the template's rows of
formatted text. Every section tolerates missing input: it is left out with a short note, so partial metrics
still give a page. The output directory may be a gs://, s3://, ... URL: plots are rendered into memory and every
file is written through tf.io.gfile (components/fileio.py).
"""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Callable

import jinja2
import numpy as np
from matplotlib.figure import Figure

from components import report_plots
from components.report_plots import LOWER_IS_BETTER, NEUTRAL, PlotSkipped, finite_number, scalar_metric_names
from schemas import Hierarchy

INDEX = "index.html"
TEMPLATE = "run_report.html.j2"
DPI = 100

TRAINING_CURVES = "training_curves.png"
SPECIES_CONFUSION = "species_confusion.png"
BREED_CONFUSION = "breed_confusion.png"
PER_BREED_ACCURACY = "per_breed_accuracy.png"
RELIABILITY = "reliability.png"
CANDIDATE_VS_BASELINE = "candidate_vs_baseline.png"
IMAGES = (TRAINING_CURVES, SPECIES_CONFUSION, BREED_CONFUSION, PER_BREED_ACCURACY, RELIABILITY, CANDIDATE_VS_BASELINE)


def write_run_report(
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
            lambda: report_plots.training_curves(history),
        ),
        (
            SPECIES_CONFUSION,
            "Species confusion matrix: rows true, columns predicted; counts, colour = fraction of the row.",
            lambda: report_plots.species_confusion(metrics, hierarchy),
        ),
        (
            BREED_CONFUSION,
            "Breed confusion matrix, grouped by species (lines separate species): rows true, columns predicted; "
            "colour = fraction of the row.",
            lambda: report_plots.breed_confusion(metrics, hierarchy),
        ),
        (
            PER_BREED_ACCURACY,
            "Per-breed top-1 accuracy, coloured by species, best first within each species.",
            lambda: report_plots.per_breed_accuracy(metrics, hierarchy),
        ),
        (
            RELIABILITY,
            "Reliability diagram: accuracy per confidence bin against the diagonal (perfect calibration); "
            "hatched = gap to the bin's mean confidence (red over-, green under-confident). Below: examples per bin.",
            lambda: report_plots.reliability(metrics),
        ),
        (
            CANDIDATE_VS_BASELINE,
            "Candidate vs baseline (the currently served model on the same data).",
            lambda: report_plots.candidate_vs_baseline(metrics, baseline_metrics),
        ),
    ]
    figures = []
    for name, caption, draw in plots:
        try:
            fig = draw()
        except PlotSkipped as skip:
            figures.append({"note": f"{name[:-4].replace('_', ' ').capitalize()}: {skip}"})
            continue
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=DPI)
        fileio.write_bytes(os.path.join(out_dir, name), png.getvalue())
        figures.append({"file": name, "caption": caption})

    page = _template().render(
        title=title,
        decision=_decision(blessing),
        metrics=_metrics_table(metrics, baseline_metrics),
        by_species=_by_species_table(metrics, baseline_metrics, hierarchy),
        figures=figures,
        facts=_facts(extra),
    )
    index = os.path.join(out_dir, INDEX)
    # Write then rename, so a reader never opens a half-written page.
    tmp = index + ".tmp"
    fileio.write_text(tmp, page)
    fileio.replace(tmp, index)
    return index


# Old name, until pipeline/stages/evaluate.py and tests/components/test_remote_paths.py call write_run_report.


@functools.cache
def _template() -> jinja2.Template:
    # PackageLoader finds components/templates/ in a checkout and in an installed package (setup.py package_data).
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("components", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name in the template fails instead of printing nothing
    )
    return environment.get_template(TEMPLATE)


# ---------------------------------------------------------------- the template's sections


def _decision(blessing: dict | None) -> dict | None:
    """The blessing banner, its reason and its checks; None without a decision."""
    if not blessing:
        return None
    blessed = bool(blessing.get("blessed"))
    checks = [
        {
            "metric": check.get("metric", ""),
            "kind": check.get("kind", ""),
            "value": _fmt(check.get("value")),
            "threshold": _fmt(check.get("threshold")),
            "baseline": _fmt(check.get("baseline")),
            "passed": bool(check.get("passed")),
        }
        for check in blessing.get("checks") or []
    ]
    return {
        "word": "BLESSED" if blessed else "NOT BLESSED",
        "css_class": "blessed" if blessed else "rejected",
        "reason": blessing.get("reason", ""),
        "checks": checks,
    }


def _metrics_table(metrics: dict, baseline: dict | None) -> dict:
    """The scalar metrics, candidate and (if any) baseline with the change; no rows if there is no scalar."""
    rows = [(m, metrics.get(m), (baseline or {}).get(m)) for m in scalar_metric_names(metrics)]
    # The breed accuracy within each (correctly predicted) species is a dict; show it as one row per species.
    given = metrics.get("breed_accuracy_given_species")
    if isinstance(given, dict):
        base_given = (baseline or {}).get("breed_accuracy_given_species") or {}
        rows += [(f"breed_accuracy_given_species[{s}]", v, base_given.get(s)) for s, v in given.items()]
    return {
        "header": ["metric", "candidate"] + (["baseline", "change"] if baseline else []),
        "with_baseline": bool(baseline),
        "rows": [
            {
                "name": name,
                "value": _fmt(value),
                "baseline": _fmt(base),
                "change": _change(value, base, lower_is_better=name in LOWER_IS_BETTER, neutral=name in NEUTRAL),
            }
            for name, value, base in rows
        ],
    }


def _by_species_table(metrics: dict, baseline: dict | None, hierarchy: Hierarchy) -> dict | None:
    """One row per species (hierarchy order, then any other), one column per metric; None without 'by_species'."""
    by_species = metrics.get("by_species")
    if not isinstance(by_species, dict) or not by_species:
        return None
    base = (baseline or {}).get("by_species") or {}
    species = [s for s in hierarchy.species if s in by_species] + [s for s in by_species if s not in hierarchy.species]
    columns: list[str] = []
    for s in species:
        columns += [m for m in by_species[s] or {} if m not in columns]
    rows = []
    for s in species:
        cells = []
        for m in columns:
            value = (by_species[s] or {}).get(m)
            base_value = (base.get(s) or {}).get(m)
            change = None
            if baseline and finite_number(base_value) is not None and finite_number(value) is not None:
                change = _change(value, base_value, lower_is_better=m in LOWER_IS_BETTER, neutral=m in NEUTRAL)
            cells.append({"value": _fmt(value), "change": change})
        rows.append({"species": s, "cells": cells})
    return {"header": ["species", *columns], "rows": rows, "shows_change": bool(baseline and base)}


def _facts(extra: dict | None) -> list[tuple[str, str]]:
    """(key, text) per run fact: strings as they are, anything else as JSON."""
    return [
        (key, value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str))
        for key, value in (extra or {}).items()
    ]


def _fmt(value) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    number = finite_number(value)
    if number is None:
        return "n/a" if value is None else str(value)
    return f"{number:.4f}"


def _change(value, base, *, lower_is_better: bool = False, neutral: bool = False) -> dict | None:
    """The signed change as {text, css_class}: better, worse, or same when unchanged or `neutral` (e.g. counts);
    None ("n/a") when either side is not a number."""
    v, b = finite_number(value), finite_number(base)
    if v is None or b is None:
        return None
    delta = v - b
    better = delta < 0 if lower_is_better else delta > 0
    css_class = "same" if abs(delta) < 1e-12 or neutral else ("better" if better else "worse")
    counts = all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in (value, base))
    return {"text": f"{int(delta):+,}" if counts else f"{delta:+.4f}", "css_class": css_class}
