"""Shared fixtures: tiny generated data sets, their TFRecords, and a small exported model; all made on the fly."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from components.export_config import ExportConfig  # noqa: E402
from datasources.synthetic_pets import write_synthetic_pets  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from schemas import load_hierarchy, load_schema  # noqa: E402

# Export settings of the tests' small models: the species answer is never "uncertain" (a threshold of 0), so
# what an untrained model answers is the plain argmax.
TEST_EXPORT = ExportConfig(species_uncertainty_threshold=0.0)

# The tests' tiny training, defined once: `load_config` overrides (the KEY=VALUE strings `petpipe run --set`
# takes) for one epoch of a 4/8-filter backbone on 32 px images, without augmentation, and without the absolute
# blessing bars (a tiny training cannot meet them; the gate itself is tested in tests/pipeline/test_gate.py).
# A test that needs more appends its differences, which win because later overrides do:
#     load_config(None, [*TINY_TRAINING, "train.epochs=3"])
#     main(["run", ..., *set_flags(TINY_TRAINING, "train.epochs=3")])
# Component tests start from TINY_TRAIN, the same settings as a TrainConfig (a backbone that builds, trains and
# serves in seconds): dataclasses.replace(TINY_TRAIN, ...).
TINY_TRAINING = (
    "preprocess.image_size=32",
    "train.epochs=1",
    "train.filters=4,8",
    "train.augment=false",
    "bless.lower_bounds=",
)
TINY_TRAIN = load_config(None, TINY_TRAINING).train


def set_flags(*overrides: str | tuple[str, ...] | list[str]) -> list[str]:
    """`--set KEY=VALUE` arguments of `petpipe run` for overrides, given one by one or as lists (TINY_TRAINING)."""
    flat = [item for group in overrides for item in ([group] if isinstance(group, str) else group)]
    return [arg for item in flat for arg in ("--set", item)]


@pytest.fixture(scope="session")
def hierarchy():
    return load_hierarchy()


@pytest.fixture(scope="session")
def schema():
    return load_schema()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """3 images per breed (2 trainval, 1 test): 111 images in the Oxford-IIIT Pet raw layout."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    write_synthetic_pets(out, per_breed=3, seed=7)
    return str(out)


@pytest.fixture(scope="session")
def tiny_tfrecords(tiny_data, hierarchy, schema, tmp_path_factory):
    """(tfrecord_dir, written per split) of the tiny data set through the real Beam data stage."""
    from pipeline.stages.data import run_span_job

    work = tmp_path_factory.mktemp("tiny-tfrecords")
    config = load_config(None, [f"work_dir={work}", "data.eval_fraction=0.3", "preprocess.num_shards=2"])
    result = run_span_job(config, tiny_data, 0, hierarchy, schema, [])
    return result.tfrecord_dir, result.written


@pytest.fixture(scope="session")
def small_model(hierarchy):
    """An untrained multi-head model with a tiny backbone: fast to build, export and serve."""
    from components.model import build_multihead_model

    return build_multihead_model(hierarchy, 32, TINY_TRAIN)


@pytest.fixture(scope="session")
def exported_model(small_model, hierarchy, tmp_path_factory):
    """(model_base_path, version, path) of `small_model` exported once."""
    from components.export import export_model

    base = str(tmp_path_factory.mktemp("serving") / "pets")
    version, path = export_model(small_model, hierarchy, base, 32, TEST_EXPORT)
    return base, version, path
