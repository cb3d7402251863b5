"""The model versions under a TF Serving model base path, as TF Serving discovers them (schemas.serving_layout).
Light on purpose: the orchestrator's "nothing to do" decision reads them without importing TensorFlow or Keras."""

from __future__ import annotations

from components import fileio
from schemas.serving_layout import version_dirs


def version_dirs_under(model_base_path: str) -> dict[int, str]:
    """version → directory name under `model_base_path` ({} when it does not exist)."""
    if not fileio.isdir(model_base_path):
        return {}
    return version_dirs(fileio.listdir(model_base_path))


def existing_versions(model_base_path: str) -> list[int]:
    """The version numbers under a model base path, ascending (TF Serving's notion of versions)."""
    return list(version_dirs_under(model_base_path))
