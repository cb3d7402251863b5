"""Evaluate: score the served (hierarchical) answer on the test split.

`evaluate_outputs` is the pure core: labels and the model's probabilities (numpy) in, a JSON-able dict out. The
answer is decoded by components.model.hierarchical_answer — the same function the serving signature uses — so
every metric describes exactly what is served: species = argmax p(species), breed = the most probable breed of
that species under the joint p(species)·p(breed | species), confidence = that breed's joint probability, top-k =
that species' most probable breeds (from every species when max p(species) < uncertainty_threshold).

Returned dict (k = the top-k actually served: top_k capped at the smallest species' breed count; "null" = None):
  examples                         int, N
  species_accuracy                 served species == true species
  breed_top1_accuracy              served breed == true breed (end to end: a wrong species is a wrong breed)
  breed_top{k}_accuracy            true breed among the served top-k
  breed_accuracy_given_species     {species: accuracy of that species' head argmax on the examples whose TRUE
                                   species it is, or null when there are none} — the breed head alone
  mean_per_class_accuracy          mean over breeds with ≥1 example of per-breed top-1 (Oxford-IIIT Pet metric)
  hierarchical_precision / _recall / _f1
                                   Kiritchenko et al., micro-averaged: each label set is {species, breed} (the
                                   root excluded), hP = Σ|pred ∩ true| / Σ|pred|, hR = Σ|pred ∩ true| / Σ|true|,
                                   hF = 2·hP·hR / (hP + hR). One example: 1 all right, 0.5 right species only,
                                   0 wrong species (every answer names a breed, so here hP = hR = hF).
  expected_calibration_error       ECE of the breed answer: 15 equal-width bins (lo, hi] of its confidence (the
                                   answered breed's joint probability; = top_k_scores[:, 0] unless the species is
                                   uncertain), Σ_b (n_b / N)·|accuracy_b − confidence_b|
  species_expected_calibration_error  the same for max p(species) vs species correctness
  reliability                      breed answer: {"bin_edges": [16], "confidence": [15] mean or null,
                                   "accuracy": [15] or null, "count": [15] ints} — a reliability diagram
  hierarchy_consistency            fraction of breed answers whose breed is of the answered species (must be 1)
  per_breed_accuracy               {breed: top-1 on that breed's examples, or null}, hierarchy (global) order
  species_confusion                S×S ints, rows true species, columns served species
  breed_confusion                  B×B ints in global breed order, rows true, columns served breed
  by_species                       {species: {examples, species_accuracy, breed_top1_accuracy,
                                   breed_top{k}_accuracy, mean_per_class_accuracy, hierarchical_f1,
                                   expected_calibration_error}} on the examples of that TRUE species (null
                                   metrics when it has none)

`metric_names` / `metric_value` address every scalar by a dotted name ("by_species.cat.breed_top1_accuracy").
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from components.model import SPECIES_HEAD, breed_head, hierarchical_answer
from schemas import Hierarchy

ECE_BINS = 15
SIGNATURE_SUFFIX = "_probs"  # the SavedModel signature names its probability outputs '<head>_probs'
# A species slice reports hF alone (hP = hR = hF while every answer names a breed).
NOT_BY_SPECIES = ("hierarchical_precision", "hierarchical_recall")


def _head_probabilities(outputs: dict, hierarchy: Hierarchy, examples: int) -> dict[str, np.ndarray]:
    """{'species': [N,S], '<s>_breed': [N,B_s]} float32, from Keras names or the signature's '<head>_probs'."""
    expected = {SPECIES_HEAD: len(hierarchy.species)}
    expected.update({breed_head(s): len(breeds) for s, breeds in hierarchy.breeds_of.items()})
    heads = {}
    for head, width in expected.items():
        # The signature's name first: there, plain 'species' is the answered label (strings), not probabilities.
        key = next((k for k in (head + SIGNATURE_SUFFIX, head) if k in outputs), None)
        if key is None:
            raise ValueError(f"outputs lack {head!r} (or {head + SIGNATURE_SUFFIX!r}); got {sorted(outputs)}")
        probs = np.asarray(outputs[key], dtype=np.float32)
        if probs.shape != (examples, width):
            raise ValueError(f"outputs[{key!r}] has shape {probs.shape}, expected {(examples, width)}")
        heads[head] = probs
    return heads


def _decode(heads: dict[str, np.ndarray], hierarchy: Hierarchy, top_k: int, uncertainty_threshold: float) -> dict:
    """The served answer, as numpy, from components.model.hierarchical_answer."""
    tensors = {head: tf.constant(probs) for head, probs in heads.items()}
    answer = hierarchical_answer(tensors, hierarchy, top_k, uncertainty_threshold)
    return {name: np.asarray(value) for name, value in answer.items()}


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _calibration(confidence: np.ndarray, correct: np.ndarray) -> tuple[float | None, dict]:
    """(ECE, reliability table) over 15 equal-width bins (lo, hi]; a confidence of 0 falls in the first bin."""
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    # searchsorted on the inner edges puts a value equal to an edge into the bin it closes; > 1 (float32 rounding
    # of a joint probability) lands in the last bin.
    bins = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(bins, minlength=ECE_BINS)
    conf_sum = np.bincount(bins, weights=confidence, minlength=ECE_BINS)
    hit_sum = np.bincount(bins, weights=correct.astype(np.float64), minlength=ECE_BINS)
    filled = count > 0
    mean_conf = np.divide(conf_sum, count, out=np.zeros(ECE_BINS), where=filled)
    mean_acc = np.divide(hit_sum, count, out=np.zeros(ECE_BINS), where=filled)
    ece = float(np.sum(count * np.abs(mean_acc - mean_conf)) / len(confidence)) if len(confidence) else None
    table = {
        "bin_edges": [float(e) for e in edges],
        "confidence": [float(c) if f else None for c, f in zip(mean_conf, filled, strict=True)],
        "accuracy": [float(a) if f else None for a, f in zip(mean_acc, filled, strict=True)],
        "count": [int(n) for n in count],
    }
    return ece, table


class _Scores:
    """Per-example facts of the served answer; `slice_metrics` aggregates them over any subset."""

    def __init__(self, species_true, breed_true, answer, hierarchy: Hierarchy):
        self.species_true, self.breed_true = species_true, breed_true
        self.species_pred, self.breed_pred = answer["species"].astype(np.int64), answer["breed"].astype(np.int64)
        self.top_k = answer["top_k_breeds"].shape[1]
        self.num_breeds = len(hierarchy.breeds)
        self.species_right = self.species_pred == species_true
        self.breed_right = self.breed_pred == breed_true
        self.in_top_k = np.any(answer["top_k_breeds"] == breed_true[:, None], axis=1)
        # The answered breed's joint probability, not top_k_scores[:, 0]: under an uncertain species the top-k
        # range over every species, so their first entry can be another breed than the answer.
        joint = answer["breed_probs"][np.arange(len(breed_true)), self.breed_pred]
        self.confidence = np.clip(joint.astype(np.float64), 0.0, 1.0)
        # Label sets {species, breed} on both sides (2 labels each); matched by identity.
        self.overlap = self.species_right.astype(np.int64) + self.breed_right

    def per_breed(self, mask: np.ndarray) -> np.ndarray:
        """[B] top-1 accuracy per true breed within `mask`; NaN where the breed has no example."""
        count = np.bincount(self.breed_true[mask], minlength=self.num_breeds)
        hits = np.bincount(self.breed_true[mask], weights=self.breed_right[mask], minlength=self.num_breeds)
        return np.divide(hits, count, out=np.full(self.num_breeds, np.nan), where=count > 0)

    def slice_metrics(self, mask: np.ndarray) -> dict:
        n = int(mask.sum())
        overlap = int(self.overlap[mask].sum())
        predicted = true = 2 * n
        precision = overlap / predicted if predicted else None
        recall = overlap / true if true else None
        if precision is None or recall is None:
            f1 = None
        else:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_breed = self.per_breed(mask)
        return {
            "examples": n,
            "species_accuracy": _mean(self.species_right[mask]),
            "breed_top1_accuracy": _mean(self.breed_right[mask]),
            f"breed_top{self.top_k}_accuracy": _mean(self.in_top_k[mask]),
            "mean_per_class_accuracy": _mean(per_breed[~np.isnan(per_breed)]),
            "hierarchical_precision": precision,
            "hierarchical_recall": recall,
            "hierarchical_f1": f1,
            "expected_calibration_error": _calibration(self.confidence[mask], self.breed_right[mask])[0],
        }


def _confusion(true: np.ndarray, pred: np.ndarray, size: int) -> list[list[int]]:
    matrix = np.zeros((size, size), dtype=np.int64)
    np.add.at(matrix, (true, pred), 1)
    return matrix.tolist()


def evaluate_outputs(
    species_true: np.ndarray,
    breed_true: np.ndarray,
    outputs: dict[str, np.ndarray],
    hierarchy: Hierarchy,
    top_k: int = 5,
    uncertainty_threshold: float = 0.0,
) -> dict:
    """All test metrics (see the module docstring) of the answer served for `outputs` (Keras or signature names)."""
    species_true = np.asarray(species_true, dtype=np.int64).reshape(-1)
    breed_true = np.asarray(breed_true, dtype=np.int64).reshape(-1)
    n = len(species_true)
    if n == 0:
        raise ValueError("no examples to evaluate")
    if breed_true.shape != (n,):
        raise ValueError(f"{len(breed_true)} breed labels for {n} species labels")
    species_of_breed = np.array([b.species_index for b in hierarchy.breeds])
    if species_true.min() < 0 or species_true.max() >= len(hierarchy.species):
        raise ValueError(f"species labels outside [0, {len(hierarchy.species)})")
    if breed_true.min() < 0 or breed_true.max() >= len(hierarchy.breeds):
        raise ValueError(f"breed labels outside [0, {len(hierarchy.breeds)})")
    if np.any(species_of_breed[breed_true] != species_true):
        raise ValueError("breed labels contradict species labels (a breed of another species)")

    heads = _head_probabilities(outputs, hierarchy, n)
    answer = _decode(heads, hierarchy, top_k, uncertainty_threshold)
    scores = _Scores(species_true, breed_true, answer, hierarchy)
    everything = np.ones(n, dtype=bool)
    overall = scores.slice_metrics(everything)

    index_in_species = np.array([b.index_in_species for b in hierarchy.breeds])
    given_species = {}
    for i, species in enumerate(hierarchy.species):
        rows = species_true == i
        head_pred = np.argmax(heads[breed_head(species)][rows], axis=1)
        given_species[species] = _mean(head_pred == index_in_species[breed_true[rows]])

    species_conf = heads[SPECIES_HEAD].max(axis=1).astype(np.float64)
    species_ece, _ = _calibration(np.clip(species_conf, 0.0, 1.0), scores.species_right)
    ece, reliability = _calibration(scores.confidence, scores.breed_right)
    consistent = species_of_breed[scores.breed_pred] == scores.species_pred
    per_breed = scores.per_breed(everything)
    topk_key = f"breed_top{scores.top_k}_accuracy"
    return {
        "examples": n,
        "species_accuracy": overall["species_accuracy"],
        "breed_top1_accuracy": overall["breed_top1_accuracy"],
        topk_key: overall[topk_key],
        "breed_accuracy_given_species": given_species,
        "mean_per_class_accuracy": overall["mean_per_class_accuracy"],
        "hierarchical_precision": overall["hierarchical_precision"],
        "hierarchical_recall": overall["hierarchical_recall"],
        "hierarchical_f1": overall["hierarchical_f1"],
        "expected_calibration_error": ece,
        "species_expected_calibration_error": species_ece,
        "reliability": reliability,
        "hierarchy_consistency": float(np.mean(consistent)),
        "per_breed_accuracy": {
            name: None if np.isnan(acc) else float(acc)
            for name, acc in zip(hierarchy.breed_names, per_breed, strict=True)
        },
        "species_confusion": _confusion(species_true, scores.species_pred, len(hierarchy.species)),
        "breed_confusion": _confusion(breed_true, scores.breed_pred, len(hierarchy.breeds)),
        "by_species": {
            species: {k: v for k, v in scores.slice_metrics(species_true == i).items() if k not in NOT_BY_SPECIES}
            for i, species in enumerate(hierarchy.species)
        },
    }


def evaluate_model(model, dataset, hierarchy: Hierarchy, top_k: int = 5, uncertainty_threshold: float = 0.0) -> dict:
    """Run `model` over (images, labels incl. 'species' and 'breed') batches, then `evaluate_outputs`."""
    species_true, breed_true, outputs = [], [], {}
    for images, labels in dataset:
        for name, value in model(images, training=False).items():
            outputs.setdefault(name, []).append(np.asarray(value))
        species_true.append(np.asarray(labels[SPECIES_HEAD]).reshape(-1))
        breed_true.append(np.asarray(labels["breed"]).reshape(-1))
    if not species_true:
        raise ValueError("the evaluation split is empty")
    return evaluate_outputs(
        np.concatenate(species_true),
        np.concatenate(breed_true),
        {name: np.concatenate(parts) for name, parts in outputs.items()},
        hierarchy,
        top_k,
        uncertainty_threshold,
    )


def _flatten(metrics: dict, prefix: str = "") -> dict[str, float | None]:
    """Dotted name → scalar (None kept) for every int/float leaf; lists (confusion, reliability) are not metrics."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        elif value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            flat[name] = value
    return flat


def metric_names(metrics: dict) -> list[str]:
    """Every scalar metric with a value, as a dotted name, e.g. 'by_species.cat.breed_top1_accuracy'."""
    return [name for name, value in _flatten(metrics).items() if value is not None]


def metric_value(metrics: dict, name: str) -> float:
    """The metric named `name` (see metric_names); ValueError when unknown or without a value."""
    flat = _flatten(metrics)
    if name not in flat:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(metric_names(metrics))}")
    if flat[name] is None:
        raise ValueError(f"metric {name!r} has no value (no test examples for it)")
    return float(flat[name])
