"""The model server's core: TF Serving's request semantics on protos, without gRPC.

The real `tensorflow_model_server` cannot be installed on our machines, so this is what tests, demos and laptops
talk to; production runs the real one on the same directory. It follows TF Serving's documented behaviour:

* models and versions: serving/server_core.py (ServerCore: config, polling, version policy, labels, reload),
  serving/versions.py (which directories are versions, which of them are aspired) and serving/model_paths.py
  (where base paths may point);
* a version is a SavedModelBundle: a graph-mode session that runs a signature by its tensor names
  (serving/bundle.py), loaded and warmed up by serving/warmup.py; Predict (serving/predict.py) and Classify /
  Regress / MultiInference (serving/classify_regress.py) run as TF Serving runs them;
* here, ModelServer: the PredictionService and ModelService methods — each resolves its version, holds it for
  the request, and answers with TF Serving's status codes and messages (quoted from its sources).

Pure core: ModelServer. Thin shells: serving/server.py (gRPC), serving/rest.py (HTTP).
"""

from __future__ import annotations

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
    status_pb2,
)

from serving.classify_regress import run_classify, run_multi_inference, run_regress
from serving.predict import run_predict
from serving.server_core import ServerCore
from serving.status import ServingError, invalid


class ModelServer(ServerCore):
    """Serves the models of a ModelServerConfig (ServerCore) through TF Serving's request methods; thread-safe."""

    # --- PredictionService ------------------------------------------------------------------------------
    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        with self._handle(request) as servable:
            return run_predict(servable, request, self.policy)

    def classify(self, request) -> classification_pb2.ClassificationResponse:
        with self._handle(request) as servable:
            return run_classify(servable, request, self.policy)

    def regress(self, request) -> regression_pb2.RegressionResponse:
        with self._handle(request) as servable:
            return run_regress(servable, request, self.policy)

    def multi_inference(self, request) -> inference_pb2.MultiInferenceResponse:
        """RunMultiInferenceWithServerCore: the first task's ModelSpec picks the version for every task (no task:
        an empty ModelSpec, which names no model)."""
        spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        with self._handle(request, spec) as servable:
            return run_multi_inference(servable, request, self.policy)

    def get_model_metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for metadata_field in request.metadata_field:
            if metadata_field != "signature_def":
                raise invalid(f"Metadata field {metadata_field} is not supported")
        servable = self._resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in servable.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        response.metadata["signature_def"].Pack(signature_map)
        return response

    # --- ModelService -----------------------------------------------------------------------------------
    def get_model_status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatusImpl: one version's state, or every version's; a version label is not looked at."""
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        spec = request.model_spec
        states = self.version_states(spec.name)
        if spec.HasField("version"):
            if spec.version.value not in states:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND, f"Could not find version {spec.version.value} of model {spec.name}"
                )
            states = {spec.version.value: states[spec.version.value]}
        elif not states:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in sorted(states, reverse=True):
            state, code, message = states[version]
            entry = response.model_version_status.add(version=version, state=state)
            entry.status.CopyFrom(status_pb2.StatusProto(error_code=code, error_message=message))
        return response

    def handle_reload_config_request(self, request) -> model_management_pb2.ReloadConfigResponse:
        self.reload_config(request.config)
        return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto(error_code=0))
