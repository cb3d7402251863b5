"""The train stage: the configured architecture (components/architectures.py) fitted on the training window's
spans, resumable from its epoch checkpoints; a completed training with the same decision and warm-start weights is
reused from the run store instead of trained again. Output: a TrainedModel."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from components.architectures import architecture
from components.train_config import TrainingJob
from pipeline import fingerprint
from pipeline.config import PipelineConfig
from schemas import Hierarchy

log = logging.getLogger("petpipe")


@dataclass
class TrainedModel:
    model: object  # keras.Model with the multi-head outputs
    history: dict[str, list[float]]
    artifact: int | None  # the model's artifact id in the run store
    weights: str  # the saved .weights.h5


def blessed_weights_path(config: PipelineConfig) -> str:
    """The served model's weights (kept by the export stage): the next training's warm start."""
    return os.path.join(config.work_dir, "blessed", f"{config.train.architecture}.weights.h5")


def warm_start_weights(config: PipelineConfig) -> str | None:
    from components import fileio

    path = blessed_weights_path(config)
    return path if config.train.warm_start and fileio.exists(path) else None


def build_model(config: PipelineConfig, hierarchy: Hierarchy):
    """An untrained model of the configured architecture (to load saved weights into)."""
    return architecture(config.train.architecture).build(hierarchy, config.preprocess.image_size, config.train)


def train(config: PipelineConfig, tfrecord_dirs: list[str], schema, hierarchy: Hierarchy) -> tuple[object, dict]:
    """Fit the configured architecture; checkpoints live in work_dir/train/<architecture> so that a re-run after a
    crash resumes there, and TensorBoard logs beside them. (model, history)."""
    train_dir = os.path.join(config.work_dir, "train", config.train.architecture)
    log.info("train: %s, TensorBoard logs in %s", config.train.architecture, os.path.join(train_dir, "tensorboard"))
    job = TrainingJob(
        config.train,
        tfrecord_dirs,
        schema,
        hierarchy,
        config.preprocess.image_size,
        run_dir=train_dir,
        warm_start_weights=warm_start_weights(config),
        log=log.info,
    )
    return architecture(config.train.architecture).train(job)


def run_train_stage(
    config: PipelineConfig, tfrecord_dirs: list[str], schema, hierarchy: Hierarchy, tracker, decision_key: str,
    window_artifacts: list[int | None], multiworker: bool = False,
) -> TrainedModel:  # fmt: skip
    """`train`, recorded in the run store under a key of the decision and the warm-start weights; a completed
    execution with that key whose weights file is unchanged is reused (its weights loaded, nothing trained).
    `multiworker` (the chief of a multi-worker run): always trains, as the workers were told to, and returns a
    copy of the model outside the strategy, so that evaluation and export run no collective op."""
    warm = warm_start_weights(config)
    key = fingerprint.of_value([decision_key, fingerprint.of_file(warm) if warm else None])
    saved = os.path.join(config.work_dir, "train", config.train.architecture, "trained", f"{key[:20]}.weights.h5")
    inputs = {"spans": tfrecord_dirs, "warm_start": warm}
    with tracker.execution("train", key, inputs, decision_key, window_artifacts) as execution:
        previous = tracker.completed("train", key)
        if previous is not None and os.path.exists(saved) and not multiworker:
            outputs = execution.reuse(previous)
            if fingerprint.of_file(saved) == outputs["fingerprint"]:
                log.info("train: reusing the model trained by run %d (%s)", previous["run_id"], saved)
                model = build_model(config, hierarchy)
                model.load_weights(saved)
                artifact = tracker.artifact("model", saved, fingerprint=outputs["fingerprint"])
                execution.output_artifacts.append(artifact)
                return TrainedModel(model, outputs["history"], artifact, saved)
            execution.status, execution.reused = "complete", None
        model, history = train(config, tfrecord_dirs, schema, hierarchy)
        os.makedirs(os.path.dirname(saved), exist_ok=True)
        staging = saved.replace(".weights.h5", ".partial.weights.h5")  # Keras insists on the suffix
        model.save_weights(staging)
        os.replace(staging, saved)  # a killed run never leaves a half-written model under the final name
        digest = fingerprint.of_file(saved)
        epochs = len(next(iter(history.values()), []))
        history = {k: [float(x) for x in v] for k, v in history.items()}
        execution.outputs = {"weights": saved, "fingerprint": digest, "history": history,
                             "summary": f"{epochs} epochs on {len(tfrecord_dirs)} span(s)"}  # fmt: skip
        artifact = tracker.artifact("model", saved, fingerprint=digest)
        execution.output_artifacts.append(artifact)
        if multiworker:
            model = build_model(config, hierarchy)
            model.load_weights(saved)
        return TrainedModel(model, history, artifact, saved)
