"""End to end: the default configuration on the embedded data set, ending in gRPC Predict calls."""

import os

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from components.ingest import label_record, read_oxford_annotations
from pipeline.config import load_config
from pipeline.run import run_pipeline
from serving.server import start_server

pytestmark = pytest.mark.slow  # trains, runs Beam jobs or subprocess servers: left out of make test-fast


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """`petpipe run` with every default (60 images per breed, 18 epochs): about two minutes on 2 cores."""
    config = load_config(None, [f"work_dir={tmp_path_factory.mktemp('default-run')}"])
    return config, run_pipeline(config, [])


def test_default_run_meets_the_quality_bar(default_run):
    _, summary = default_run
    assert summary.metrics["examples"] == 37 * 18  # 30% of 60 per breed are test images
    assert summary.metrics["species_accuracy"] >= 0.95
    assert summary.metrics["breed_top1_accuracy"] >= 0.60
    assert summary.counts["train"] + summary.counts["eval"] == 37 * 42
    assert summary.counts["eval"] > 0


def test_export_and_smoke_query(default_run):
    config, summary = default_run
    assert summary.version == 1
    assert summary.version_path == os.path.join(config.model_base_path, "1")
    assert summary.trained_on == [os.path.join(config.tfrecord_root, "span-0")]
    assert os.path.isfile(os.path.join(summary.version_path, "saved_model.pb"))
    assert len(summary.answers) == 3 and all("breed" in line and "top-5" in line for line in summary.answers)


def test_grpc_predict_on_test_images(default_run, hierarchy):
    config, summary = default_run
    test_file = os.path.join(summary.data_dir, "annotations", "test.txt")
    sources = read_oxford_annotations(test_file, os.path.join(summary.data_dir, "images"), 0.0)[::9]
    records = [label_record(r, hierarchy) for r in sources]  # 74 images, every breed
    images = []
    for source in sources:
        with open(source.image_path, "rb") as f:
            images.append(f.read())
    server = start_server(config.model_base_path, "pets", port=0)
    try:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "pets"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    finally:
        server.stop()
    out = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
    np.testing.assert_allclose(out["breed_probs"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["species_probs"].sum(axis=1), 1.0, rtol=1e-5)
    species = [s.decode() for s in out["species"]]
    breeds = [b.decode() for b in out["breed"]]
    assert all(hierarchy.by_name[b].species == s for b, s in zip(breeds, species, strict=True))
    correct = [hierarchy.breeds[r.breed].name == b for r, b in zip(records, breeds, strict=True)]
    assert np.mean(correct) >= 0.6
