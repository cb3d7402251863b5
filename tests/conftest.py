"""Shared fixtures: tiny generated data sets, their TFRecords, and a small exported model; all made on the fly."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from datasources.synthetic_pets import make_dataset  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from schemas import load_hierarchy, load_schema  # noqa: E402


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
    make_dataset(out, per_breed=3, seed=7)
    return str(out)


@pytest.fixture(scope="session")
def tiny_tfrecords(tiny_data, hierarchy, schema, tmp_path_factory):
    """(tfrecord_dir, written per split) of the tiny data set through the real Beam data stage."""
    from pipeline.data_stage import run_span_job

    work = tmp_path_factory.mktemp("tiny-tfrecords")
    config = load_config(None, [f"work_dir={work}", "data.eval_fraction=0.3", "preprocess.num_shards=2"])
    result = run_span_job(config, tiny_data, 0, hierarchy, schema, [])
    return result.tfrecord_dir, result.written


@pytest.fixture(scope="session")
def small_model(hierarchy):
    """An untrained multi-head model with a tiny backbone: fast to build, export and serve."""
    from components.model import build_multihead_model

    return build_multihead_model(hierarchy, image_size=32, filters=(4, 8))


@pytest.fixture(scope="session")
def exported_model(small_model, hierarchy, tmp_path_factory):
    """(model_base_path, version, path) of `small_model` exported once."""
    from components.export import export_model

    base = str(tmp_path_factory.mktemp("serving") / "pets")
    version, path = export_model(small_model, hierarchy, base, image_size=32, top_k=5)
    return base, version, path
