"""Shared by the tests that port TF Serving's own test expectations (test_tf_serving_*.py): the fixture models
(tests/serving/tf_serving_models.py), a server of them as tensorflow_model_server_test.py runs one (one per test
module that asks for it), and tf.Examples of a feature x."""

from __future__ import annotations

import grpc
import pytest
import tensorflow as tf
from google.protobuf import text_format

from serving.protos import ModelServerConfig
from serving.server import ServeOptions, start_server
from tests.serving.tf_serving_models import half_plus_three_tf1, half_plus_two_tf1, half_plus_two_tf2, model_base

TWO_VERSIONS = "saved_model_half_plus_two_2_versions"  # http_rest_api_handler_test.cc's kTestModelName


@pytest.fixture(scope="module")
def tf_serving_models(tmp_path_factory):
    """Base paths of the fixture models (read-only for every test)."""
    root = str(tmp_path_factory.mktemp("tf-serving-models"))
    return {
        "half_plus_two": model_base(root, "half_plus_two", half_plus_two_tf1),
        "half_plus_three": model_base(root, "half_plus_three", half_plus_three_tf1),
        "two_versions": model_base(root, "two_versions", half_plus_two_tf1, ("00000123", "00000124")),
        "tf2": model_base(root, "tf2", half_plus_two_tf2),
    }


def _config(entries: str) -> ModelServerConfig:
    return text_format.Parse(entries, ModelServerConfig())


@pytest.fixture(scope="module")
def tf_serving_server(tf_serving_models):
    """One server, as tensorflow_model_server_test.py runs them: 'default' is half_plus_two (TF1), 'tf2' the TF2
    model, and the two-version model under http_rest_api_handler_test.cc's name with a label."""
    base = tf_serving_models
    config = _config(
        f"""model_config_list {{
          config {{ name: "default" base_path: "{base["half_plus_two"]}" model_platform: "tensorflow" }}
          config {{ name: "tf2" base_path: "{base["tf2"]}" model_platform: "tensorflow" }}
          config {{ name: "half_plus_three" base_path: "{base["half_plus_three"]}" model_platform: "tensorflow" }}
          config {{ name: "{TWO_VERSIONS}" base_path: "{base["two_versions"]}" model_platform: "tensorflow"
                    model_version_policy {{ specific {{ versions: 123 }} }}
                    version_labels {{ key: "Version_Label" value: 123 }} }}
        }}"""
    )
    path = tf_serving_models["half_plus_two"] + "/../models.config"
    with open(path, "w") as f:
        f.write(text_format.MessageToString(config))
    running = start_server(options=ServeOptions(model_config_file=path, port=0, rest_api_port=0))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield running, channel
    channel.close()
    running.stop(grace=1)


def _example(x: float):
    example = tf.train.Example()
    example.features.feature["x"].float_list.value.append(x)
    return example
