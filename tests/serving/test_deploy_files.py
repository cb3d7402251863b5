"""deploy/serving/ runs real TF Serving, which cannot run here: so `petpipe serve` is started with exactly the
flags and files of the docker-compose service, and must serve the exported directory with them."""

import os
import shutil
import urllib.request

import tensorflow as tf
import yaml
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from components.export import write_model_config
from serving.protos import SSLConfig, read_text_proto
from tests.image_factory import jpeg_bytes
from tests.serving.server_process import REPO, serving_process

DEPLOY = os.path.join(REPO, "deploy", "serving")


def test_compose_flags_and_files_serve_the_exported_directory(exported_model, tmp_path):
    serving_dir = str(tmp_path / "serving")
    shutil.copytree(exported_model[2], os.path.join(serving_dir, "pets", "1"))
    write_model_config(serving_dir, "pets", os.path.join(serving_dir, "pets"))
    with open(os.path.join(DEPLOY, "docker-compose.yml")) as f:
        service = yaml.safe_load(f)["services"]["tf-serving"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    config_files = {target: os.path.normpath(os.path.join(DEPLOY, source)) for target, source in mounts.items()
                    if target.startswith("/config/")}  # fmt: skip
    assert set(config_files) == {"/config/batching_parameters.txt", "/config/monitoring_config.txt"}
    flags = []
    for flag in service["command"]:  # every file a flag names is mounted; here it is read from the repo
        flag = flag.replace("${PETPIPE_SERVING_DIR}", serving_dir)
        for target, source in config_files.items():
            flag = flag.replace(target, source)
        flags.append(flag)
    assert "--enable_batching=true" in flags
    with serving_process(flags, str(tmp_path)) as server:  # our --port/--rest_api_port come last and win
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "pets"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([jpeg_bytes(3)], dtype=tf.string))
        with server.channel() as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        assert response.model_spec.version.value == 1
        assert tf.make_ndarray(response.outputs["breed"])[0].decode()
        assert "models: pets" in server.log()
        # The Prometheus page where deploy/prometheus/prometheus.yml scrapes it, with the request just answered.
        with open(os.path.join(REPO, "deploy", "prometheus", "prometheus.yml")) as f:
            metrics_path = yaml.safe_load(f)["scrape_configs"][0]["metrics_path"]
        with urllib.request.urlopen(server.rest + metrics_path, timeout=30) as answer:
            page = answer.read().decode()
        assert ':tensorflow:serving:request_count{model_name="pets",status="OK"} 1' in page


def test_ssl_config_example_is_a_valid_tf_serving_ssl_config():
    ssl = read_text_proto(os.path.join(DEPLOY, "ssl_config.example.txt"), SSLConfig)
    assert ssl.client_verify and ssl.server_key.startswith("-----BEGIN PRIVATE KEY-----\n")
