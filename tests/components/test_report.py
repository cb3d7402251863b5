"""Report: the page parses, every image it references is a real PNG, and sections degrade to notes on missing input."""

from __future__ import annotations

import copy
import os
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from components.report import (
    BREED_CONFUSION,
    CANDIDATE_VS_BASELINE,
    IMAGES,
    PER_BREED_ACCURACY,
    RELIABILITY,
    SPECIES_CONFUSION,
    TRAINING_CURVES,
    write_run_report,
)
from schemas import Hierarchy

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Collects <img src>, the text of the #decision banner, and all visible text."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.decision = ""
        self.text: list[str] = []
        self._in_decision = False
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if attrs.get("id") == "decision":
            self._in_decision = True
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag == "div":
            self._in_decision = False
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_decision:
            self.decision += data
        if not self._in_style:
            self.text.append(data)


def _parse(index: str) -> _Page:
    page = _Page()
    with open(index, encoding="utf-8") as f:
        page.feed(f.read())
    page.close()
    return page


def _synthetic_metrics(hierarchy, seed: int = 0, skill: float = 0.7) -> dict:
    """Evaluator-shaped metrics for `hierarchy`, self-consistent enough to plot (counts drive the accuracies)."""
    rng = np.random.default_rng(seed)
    n_breeds, n_species = len(hierarchy.breeds), len(hierarchy.species)
    breed_cm = rng.integers(0, 3, size=(n_breeds, n_breeds))
    breed_cm += np.diag(rng.integers(5, 5 + int(40 * skill), size=n_breeds))
    breed_cm[3] = 0  # one breed without test examples
    species_of = np.array([b.species_index for b in hierarchy.breeds])
    species_cm = np.zeros((n_species, n_species), dtype=int)
    for t in range(n_species):
        for p in range(n_species):
            species_cm[t, p] = breed_cm[np.ix_(species_of == t, species_of == p)].sum()
    totals = breed_cm.sum(axis=1)
    per_breed = {
        b.name: (None if totals[i] == 0 else float(breed_cm[i, i] / totals[i])) for i, b in enumerate(hierarchy.breeds)
    }
    edges = np.linspace(0, 1, 16)
    confidence = [None, None] + [float(c) for c in (edges[2:-1] + edges[3:]) / 2]
    accuracy = [None, None] + [float(np.clip(c - 0.08 + 0.05 * rng.standard_normal(), 0, 1)) for c in confidence[2:]]
    accuracy[5] = min(1.0, confidence[5] + 0.1)  # one under-confident bin: the gap is drawn inside the bar
    count = [0, 0] + rng.integers(1, 200, size=13).tolist()
    scalars = {
        "species_accuracy": 0.9 + 0.05 * skill,
        "breed_top1_accuracy": 0.5 + 0.3 * skill,
        "breed_top5_accuracy": 0.8 + 0.15 * skill,
        "mean_per_class_accuracy": 0.45 + 0.3 * skill,
        "hierarchical_precision": 0.7 + 0.2 * skill,
        "hierarchical_recall": 0.68 + 0.2 * skill,
        "hierarchical_f1": 0.69 + 0.2 * skill,
        "expected_calibration_error": 0.12 - 0.08 * skill,
        "species_expected_calibration_error": 0.05 - 0.03 * skill,
        "hierarchy_consistency": 0.95 + 0.04 * skill,
    }
    return {
        "examples": int(breed_cm.sum()),
        **scalars,
        "breed_accuracy_given_species": {s: 0.6 + 0.1 * i * skill for i, s in enumerate(hierarchy.species)},
        "per_breed_accuracy": per_breed,
        "species_confusion": species_cm.tolist(),
        "breed_confusion": breed_cm.tolist(),
        "reliability": {"bin_edges": edges.tolist(), "confidence": confidence, "accuracy": accuracy, "count": count},
        "by_species": {
            s: {"breed_top1_accuracy": 0.6 + 0.05 * i, "examples": 100 + i, "expected_calibration_error": 0.04}
            for i, s in enumerate(hierarchy.species)
        },
    }


def _history(hierarchy, epochs: int = 6) -> dict:
    e = np.arange(1, epochs + 1)
    history = {"loss": (3 / e).tolist(), "val_loss": (3.2 / e + 0.1).tolist()}
    for k, head in enumerate(["species", *(f"{s}_breed" for s in hierarchy.species)]):
        history[f"{head}_loss"] = ((1.5 + 0.4 * k) / e).tolist()
        history[f"val_{head}_loss"] = ((1.6 + 0.4 * k) / e + 0.05).tolist()
        history[f"{head}_accuracy"] = (1 - (0.5 + 0.1 * k) / e).tolist()
        history[f"val_{head}_accuracy"] = (1 - (0.55 + 0.1 * k) / e).tolist()
    return history


def _blessing(blessed: bool) -> dict:
    return {
        "blessed": blessed,
        "reason": "all checks passed" if blessed else "breed_top1_accuracy regressed by 0.031 (tolerance 0.01)",
        "checks": [
            {
                "metric": "species_accuracy",
                "kind": "lower_bound",
                "value": 0.93,
                "threshold": 0.8,
                "baseline": None,
                "passed": True,
            },
            {
                "metric": "breed_top1_accuracy",
                "kind": "no_regression",
                "value": 0.71,
                "threshold": 0.73,
                "baseline": 0.741,
                "passed": blessed,
            },
        ],
    }


def _assert_images_valid(out_dir, page: _Page):
    assert page.images, "the page references no image"
    for src in page.images:
        assert os.path.basename(src) == src, f"{src!r} must be a plain relative file name"
        path = os.path.join(out_dir, src)
        assert os.path.isfile(path), f"{src} is referenced but missing"
        with open(path, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE, f"{src} is not a PNG"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            width, height = image.size
        assert width > 100 and height > 100, f"{src} is only {width}x{height}"


def test_full_report_with_baseline_blessed(hierarchy, tmp_path):
    out = tmp_path / "report"
    index = write_run_report(
        str(out),
        title="petpipe run 7",
        metrics=_synthetic_metrics(hierarchy, seed=1, skill=0.8),
        history=_history(hierarchy),
        hierarchy=hierarchy,
        baseline_metrics=_synthetic_metrics(hierarchy, seed=2, skill=0.6),
        blessing=_blessing(True),
        extra={"version": 7, "spans": [0, 1, 2], "config": {"epochs": 6, "batch_size": 32}, "train_seconds": 41.5},
    )
    assert index == os.path.join(str(out), "index.html") and os.path.isfile(index)
    page = _parse(index)
    assert sorted(page.images) == sorted(IMAGES)
    _assert_images_valid(str(out), page)
    assert page.decision.strip() == "BLESSED"
    text = " ".join(page.text)
    assert "all checks passed" in text
    assert "no_regression" in text and "lower_bound" in text  # the checks table
    assert "breed_accuracy_given_species[cat]" in text
    assert "train_seconds" in text and "41.5" in text


def test_not_blessed_first_run_has_no_baseline_plot(hierarchy, tmp_path):
    out = tmp_path / "report"
    index = write_run_report(
        str(out),
        title="first run",
        metrics=_synthetic_metrics(hierarchy),
        history=_history(hierarchy),
        hierarchy=hierarchy,
        baseline_metrics=None,
        blessing=_blessing(False),
    )
    page = _parse(index)
    assert page.decision.strip() == "NOT BLESSED"
    assert "regressed by 0.031" in " ".join(page.text)
    assert CANDIDATE_VS_BASELINE not in page.images
    assert not (out / CANDIDATE_VS_BASELINE).exists()
    assert set(page.images) == set(IMAGES) - {CANDIDATE_VS_BASELINE}
    _assert_images_valid(str(out), page)
    assert "no baseline model" in " ".join(page.text)


def test_missing_breed_confusion_still_writes_the_rest(hierarchy, tmp_path):
    metrics = _synthetic_metrics(hierarchy)
    del metrics["breed_confusion"]
    index = write_run_report(
        str(tmp_path), title="partial", metrics=metrics, history=_history(hierarchy), hierarchy=hierarchy
    )
    page = _parse(index)
    assert BREED_CONFUSION not in page.images and not (tmp_path / BREED_CONFUSION).exists()
    assert {TRAINING_CURVES, SPECIES_CONFUSION, PER_BREED_ACCURACY, RELIABILITY} <= set(page.images)
    _assert_images_valid(str(tmp_path), page)
    assert "no 'breed_confusion'" in " ".join(page.text)
    assert page.decision.strip() == "NO DECISION"


def test_minimal_metrics_and_no_history(hierarchy, tmp_path):
    index = write_run_report(
        str(tmp_path), title="bare", metrics={"species_accuracy": 0.5}, history=None, hierarchy=hierarchy
    )
    page = _parse(index)
    assert page.images == []
    text = " ".join(page.text)
    assert "species_accuracy" in text and "0.5000" in text
    assert "no training history" in text


def test_malformed_sections_are_skipped_with_a_note(hierarchy, tmp_path):
    metrics = _synthetic_metrics(hierarchy)
    metrics["breed_confusion"] = np.ones((5, 5), dtype=int).tolist()  # wrong size for 37 breeds
    metrics["reliability"] = {"bin_edges": [0, 0.5, 1], "confidence": [0.2], "accuracy": [0.1], "count": [3]}
    index = write_run_report(str(tmp_path), title="bad", metrics=metrics, history={"lr": [0.1]}, hierarchy=hierarchy)
    page = _parse(index)
    assert set(page.images) == {SPECIES_CONFUSION, PER_BREED_ACCURACY}
    _assert_images_valid(str(tmp_path), page)
    text = " ".join(page.text)
    assert "shape (5, 5)" in text and "reliability" in text.lower() and "no loss or accuracy" in text


def test_rewriting_a_directory_drops_stale_plots(hierarchy, tmp_path):
    full = _synthetic_metrics(hierarchy)
    write_run_report(
        str(tmp_path), title="a", metrics=full, history=None, hierarchy=hierarchy, baseline_metrics=copy.deepcopy(full)
    )
    assert (tmp_path / BREED_CONFUSION).exists() and (tmp_path / CANDIDATE_VS_BASELINE).exists()
    partial = {k: v for k, v in full.items() if k != "breed_confusion"}
    page = _parse(write_run_report(str(tmp_path), title="b", metrics=partial, history=None, hierarchy=hierarchy))
    assert not (tmp_path / BREED_CONFUSION).exists() and not (tmp_path / CANDIDATE_VS_BASELINE).exists()
    _assert_images_valid(str(tmp_path), page)


@pytest.mark.parametrize("field", ["title", "reason", "extra"])
def test_text_is_escaped(hierarchy, tmp_path, field):
    evil = '<script>alert("x")</script>&'
    blessing = _blessing(False)
    kwargs = {"title": "t", "extra": {"note": "ok"}}
    if field == "title":
        kwargs["title"] = evil
    elif field == "reason":
        blessing["reason"] = evil
    else:
        kwargs["extra"] = {evil: evil}
    index = write_run_report(
        str(tmp_path), metrics={"species_accuracy": 0.5}, history=None, hierarchy=hierarchy, blessing=blessing, **kwargs
    )
    with open(index, encoding="utf-8") as f:
        raw = f.read()
    assert "<script>" not in raw
    assert "&lt;script&gt;" in raw
    assert evil in "".join(_parse(index).text)  # the reader still sees the text as written


def test_species_breed_and_fact_names_are_escaped(tmp_path):
    """Names come from the hierarchy file and values from the caller: markup in them is shown, never run."""
    species, breed = '<script>alert("s")</script> & co', "<script>b</script>&terrier"
    hierarchy = Hierarchy.from_dict(
        {
            "species": ["cat", species],
            "breeds": [{"name": "Bengal", "species": "cat"}, {"name": breed, "species": species}],
        }
    )
    metrics = {
        "species_accuracy": 0.5,
        "breed_accuracy_given_species": {"cat": 0.5, species: 0.25},
        "per_breed_accuracy": {"Bengal": 0.5, breed: 0.25},
        "species_confusion": [[3, 1], [1, 3]],
        "breed_confusion": [[3, 1], [1, 3]],
        "by_species": {"cat": {"examples": 4}, species: {"examples": 4}},
    }
    extra = {"breeds": f"Bengal & {breed}"}
    index = write_run_report(str(tmp_path), title="t", metrics=metrics, history=None, hierarchy=hierarchy, extra=extra)
    with open(index, encoding="utf-8") as f:
        raw = f.read()
    assert "<script>" not in raw
    assert "&lt;script&gt;alert(" in raw and "&lt;/script&gt;&amp;terrier" in raw and "&amp; co" in raw
    page = _parse(index)
    text = "".join(page.text)
    assert species in text  # the by-species row
    assert f"breed_accuracy_given_species[{species}]" in text
    assert f"Bengal & {breed}" in text  # the run fact
    assert {SPECIES_CONFUSION, BREED_CONFUSION, PER_BREED_ACCURACY} <= set(page.images)
    _assert_images_valid(str(tmp_path), page)


def test_nulls_and_a_served_top_k_other_than_5(hierarchy, tmp_path):
    """The evaluator writes null for undefined metrics and names top-k after the k it served (capped)."""
    metrics, baseline = _synthetic_metrics(hierarchy, seed=3), _synthetic_metrics(hierarchy, seed=4)
    for m in (metrics, baseline):
        m["breed_top3_accuracy"] = m.pop("breed_top5_accuracy")
    metrics["hierarchical_f1"] = None
    metrics["breed_accuracy_given_species"]["cat"] = None
    metrics["by_species"]["cat"] = {"examples": 0, "breed_top1_accuracy": None}
    index = write_run_report(
        str(tmp_path), title="nulls", metrics=metrics, history=None, hierarchy=hierarchy, baseline_metrics=baseline
    )
    page = _parse(index)
    assert CANDIDATE_VS_BASELINE in page.images
    _assert_images_valid(str(tmp_path), page)
    with open(index, encoding="utf-8") as f:
        raw = f.read()
    assert raw.index("breed_top1_accuracy</td>") < raw.index("breed_top3_accuracy</td>") < raw.index("mean_per_class")
    assert "<tr><td>hierarchical_f1</td><td>n/a</td>" in raw
