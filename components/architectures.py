"""The model architectures a run can train, in one registry: the config checks names against it without importing
TensorFlow, and the train stage builds and trains through it (nothing else dispatches on the name)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    """Where an architecture's two entry points live, as "module:function", imported on first use:
    build(hierarchy, image_size, train_config) → an untrained model whose outputs are the multi-head model's
    (the exporter and the evaluator take either); train(job: TrainingJob) → (model, history)."""

    name: str
    description: str
    build_entry: str
    train_entry: str

    def build(self, hierarchy, image_size: int, config):
        return _resolve(self.build_entry)(hierarchy, image_size, config)

    def train(self, job):
        return _resolve(self.train_entry)(job)


def _resolve(entry: str):
    module, function = entry.split(":")
    return getattr(importlib.import_module(module), function)


_REGISTERED = (
    Architecture(
        "multihead",
        "one shared backbone, a species head and one breed head per species, breed loss masked where the label is -1",
        "components.model:build_multihead_model",
        "components.train:train_model",
    ),
    Architecture(
        "cascade",
        "the seed's first answer and the measured baseline: a species model, then one breed model per species",
        "components.cascade:build_combined_cascade",
        "components.cascade:train_cascade",
    ),
)
REGISTRY = {architecture.name: architecture for architecture in _REGISTERED}
ARCHITECTURES = tuple(REGISTRY)


def architecture(name: str) -> Architecture:
    """The registered architecture called `name` (the config has checked it)."""
    return REGISTRY[name]
