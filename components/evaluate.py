"""Evaluate (basic): species accuracy and breed top-1 / top-5 of the served (hierarchical) answer on the test split."""

from __future__ import annotations

import numpy as np

from components.model import SPECIES_HEAD, hierarchical_answer
from schemas import Hierarchy


def basic_metrics(
    species_true: np.ndarray, breed_true: np.ndarray, species_pred: np.ndarray, top_k_breeds: np.ndarray
) -> dict[str, float]:
    """Accuracies of the served answer: species, breed top-1 and top-k (k = top_k_breeds.shape[1])."""
    if len(species_true) == 0:
        raise ValueError("no examples to evaluate")
    return {
        "examples": int(len(species_true)),
        "species_accuracy": float(np.mean(species_pred == species_true)),
        "breed_top1_accuracy": float(np.mean(top_k_breeds[:, 0] == breed_true)),
        f"breed_top{top_k_breeds.shape[1]}_accuracy": float(
            np.mean(np.any(top_k_breeds == breed_true[:, None], axis=1))
        ),
    }


def evaluate_model(model, dataset, hierarchy: Hierarchy, top_k: int = 5) -> dict[str, float]:
    """Run `model` over (image, labels incl. 'breed') batches; score the answer exactly as serving decodes it."""
    species_true, breed_true, species_pred, top_breeds = [], [], [], []
    for images, labels in dataset:
        answer = hierarchical_answer(model(images, training=False), hierarchy, top_k)
        species_true.append(labels[SPECIES_HEAD].numpy())
        breed_true.append(labels["breed"].numpy())
        species_pred.append(answer["species"].numpy())
        top_breeds.append(answer["top_k_breeds"].numpy())
    if not species_true:
        raise ValueError("the evaluation split is empty")
    return basic_metrics(*(np.concatenate(parts) for parts in (species_true, breed_true, species_pred, top_breeds)))
