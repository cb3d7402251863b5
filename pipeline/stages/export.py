"""The export stage: the blessed candidate saved as the next SavedModel version (with warmup requests), registered
in models.config, retention applied, and its weights kept for the next run's warm start. Output: a PushedVersion."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from common.errors import PetpipeError
from pipeline.config import PipelineConfig, to_dict
from pipeline.stages.train import blessed_weights_path
from schemas import Hierarchy

log = logging.getLogger("petpipe")


@dataclass
class PushedVersion:
    version: int
    path: str
    model_config: str  # the TF Serving models.config that names the model


def check_serving_dir(model_base_path: str) -> None:
    """Fail before any work when the serving directory cannot be written: a scheduled run should not train for an
    hour to find out."""
    from components import fileio

    try:
        fileio.makedirs(model_base_path)
    except OSError as exc:
        raise PetpipeError(f"{model_base_path}: cannot create the model directory: {exc}") from None
    if "://" not in model_base_path and not os.access(model_base_path, os.W_OK):
        raise PetpipeError(f"{model_base_path}: the model directory is not writable by this user")


def remove_stale_staging(model_base_path: str) -> list[str]:
    """Staging directories of exports that never finished (TF Serving ignores them; they only take space)."""
    import tensorflow as tf

    from components.export import STAGING_PREFIX

    if not tf.io.gfile.isdir(model_base_path):
        return []
    stale = [n.rstrip("/") for n in tf.io.gfile.listdir(model_base_path) if n.startswith(STAGING_PREFIX)]
    for name in stale:
        tf.io.gfile.rmtree(os.path.join(model_base_path, name))
    return stale


def version_of_model(model_base_path: str, model_fingerprint: str) -> int | None:
    """The version whose export metadata names this model fingerprint, if any."""
    import tensorflow as tf

    from components.serving_versions import existing_versions

    for version in reversed(existing_versions(model_base_path)):
        path = os.path.join(model_base_path, str(version), "assets.extra", "petpipe.json")
        try:
            with tf.io.gfile.GFile(path) as f:
                if json.load(f).get("model_fingerprint") == model_fingerprint:
                    return version
        except (tf.errors.OpError, ValueError):
            continue  # no metadata (exported by something else) or unreadable: not ours
    return None


def run_export_stage(
    config: PipelineConfig, model, hierarchy: Hierarchy, warmup: list[bytes], metadata: dict
) -> PushedVersion:
    """Export with warmup requests, register in models.config, apply retention, keep the weights for the next
    warm start. Idempotent: a version already holding this model (metadata["model_fingerprint"]; a run killed
    after its export) is not exported again. An OSError (disk full, permissions, a vanished mount) becomes a
    PetpipeError saying the served versions were not touched."""
    try:
        return _export(config, model, hierarchy, warmup, metadata)
    except OSError as exc:
        raise PetpipeError(
            f"export to {config.model_base_path} failed: {exc}; nothing was pushed and the served model is "
            "untouched; the next run retries (reusing the trained model)"
        ) from None


def _export(config: PipelineConfig, model, hierarchy: Hierarchy, warmup: list[bytes], metadata: dict) -> PushedVersion:
    from components.export import apply_retention, export_model, write_model_config

    removed = remove_stale_staging(config.model_base_path)  # we hold the pipeline lock: nobody else is exporting
    if removed:
        log.info("export: removed %d staging directories left by an interrupted export", len(removed))
    model_fingerprint = metadata.get("model_fingerprint")
    existing = version_of_model(config.model_base_path, model_fingerprint) if model_fingerprint else None
    if existing is not None:
        log.info("export: version %d already holds this model (an earlier run exported it); not exporting again",
                 existing)  # fmt: skip
        version, path = existing, os.path.join(config.model_base_path, str(existing))
    else:
        metadata = {"config": to_dict(config), **metadata}
        version, path = export_model(
            model, hierarchy, config.model_base_path, config.preprocess.image_size, config.export, metadata, warmup
        )
    model_config = write_model_config(config.serving_dir, config.export.model_name, config.model_base_path)
    deleted = apply_retention(
        config.serving_dir, config.export.model_name, config.model_base_path, config.export.keep_versions
    )
    if deleted:
        log.info("export: retention (keep %d) removed versions %s", config.export.keep_versions, deleted)
    weights = blessed_weights_path(config)
    os.makedirs(os.path.dirname(weights), exist_ok=True)
    model.save_weights(weights)  # the next run warm-starts from the model being served
    return PushedVersion(version, path, model_config)
