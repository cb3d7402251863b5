"""A stand-in for `tensorflow_model_server`: TF Serving's gRPC API over TF Serving's directory layout.

The real server cannot be installed on our machines, so this is what tests, demos and laptops talk to; production
runs the real one on the same directory. It follows TF Serving's documented behaviour:

* `<model_base_path>/<version>/saved_model.pb` — only integer-named directories are versions, the rest
  (e.g. an exporter's staging directory) is ignored; the highest version is served (policy "latest 1") and the
  base path is polled for new versions (every second by default, like --file_system_poll_wait_seconds);
* PredictionService.Predict: `model_spec.name` must match (else NOT_FOUND "Servable not found for request"),
  `model_spec.version` selects a loaded version, `signature_name` defaults to serving_default (unknown →
  FAILED_PRECONDITION), inputs must match the signature (INVALID_ARGUMENT), `output_filter` selects outputs;
* PredictionService.GetModelMetadata with metadata_field "signature_def" → a SignatureDefMap;
* ModelService.GetModelStatus → per version state and status.

Pure core: ModelServer (load, select, predict, metadata, status on protos). Thin shell: the gRPC servicers.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

from components.export import WARMUP_FILE, existing_versions
from components.preprocess import tf_error_reason

log = logging.getLogger("petpipe.serve")
DEFAULT_SIGNATURE = "serving_default"
ModelVersionStatus = get_model_status_pb2.ModelVersionStatus


class ServingError(Exception):
    """An error answered to the client with a gRPC status code, as TF Serving would."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class LoadedVersion:
    version: int
    path: str
    signature_defs: dict  # name → meta_graph_pb2.SignatureDef, as stored in saved_model.pb
    functions: dict  # name → concrete function
    model: object = field(repr=False)  # keeps the loaded SavedModel (and its resources) alive


def load_version(path: str, version: int) -> LoadedVersion:
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    signature_defs = dict(saved_model.meta_graphs[0].signature_def)
    model = tf.saved_model.load(path)
    functions = {name: model.signatures[name] for name in signature_defs if name in model.signatures}
    loaded = LoadedVersion(version, path, signature_defs, functions, model)
    replayed = warm_up(loaded)
    if replayed:
        log.info("version %d: replayed %d warmup requests", version, replayed)
    return loaded


MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


def warm_up(loaded: LoadedVersion) -> int:
    """Replay `assets.extra/tf_serving_warmup_requests` (PredictionLog records) before the version takes
    traffic, as TF Serving does; a request that fails fails the load. Returns how many were replayed."""
    path = os.path.join(loaded.path, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if not entry.HasField("predict_log"):
            continue  # classify/regress/multi-inference logs: no such signatures in our models
        request = entry.predict_log.request
        function = loaded.functions[request.model_spec.signature_name or DEFAULT_SIGNATURE]
        function(**{name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()})
        count += 1
    return count


class ModelServer:
    """Serves the latest version under `model_base_path` as `model_name`; thread-safe."""

    def __init__(self, model_name: str, model_base_path: str):
        self.model_name = model_name
        self.model_base_path = model_base_path
        self._lock = threading.Lock()
        self._current: LoadedVersion | None = None
        self._states: dict[int, tuple[int, str]] = {}  # version → (ModelVersionStatus.State, error message)

    # --- version management -------------------------------------------------------------------------------
    def poll(self) -> bool:
        """Load the highest version if it is newer than the served one; True if the served version changed."""
        versions = existing_versions(self.model_base_path)
        if not versions:
            return False
        newest = versions[-1]
        with self._lock:
            current = self._current.version if self._current else None
            failed = self._states.get(newest, (None, ""))[0] == ModelVersionStatus.END and newest != current
        if newest == current or failed:
            return False
        path = os.path.join(self.model_base_path, str(newest))
        self._set_state(newest, ModelVersionStatus.LOADING)
        try:
            loaded = load_version(path, newest)
        except Exception as exc:  # a broken version must not take the server down; keep serving the old one
            log.error("failed to load %s: %s", path, exc)
            self._set_state(newest, ModelVersionStatus.END, f"Failed to load servable version {newest}: {exc}")
            return False
        with self._lock:
            previous, self._current = self._current, loaded
            self._states[newest] = (ModelVersionStatus.AVAILABLE, "")
            if previous is not None:
                self._states[previous.version] = (ModelVersionStatus.END, "")
        log.info("serving %s version %d from %s", self.model_name, newest, path)
        return True

    def _set_state(self, version: int, state: int, message: str = "") -> None:
        with self._lock:
            self._states[version] = (state, message)

    @property
    def current_version(self) -> int | None:
        with self._lock:
            return self._current.version if self._current else None

    def servable_for(self, name: str, version: int | None = None, label: str | None = None) -> LoadedVersion:
        return self._servable(model_spec(name, version, label))

    def _servable(self, model_spec) -> LoadedVersion:
        """The loaded version a request's ModelSpec names (NOT_FOUND otherwise)."""
        if not model_spec.name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        requested = model_spec.version.value if model_spec.HasField("version") else None
        if model_spec.version_label:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {model_spec.version_label}"
            )
        with self._lock:
            current = self._current
        request_text = f"Specific({model_spec.name}, {requested})" if requested else f"Latest({model_spec.name})"
        if model_spec.name != self.model_name or current is None or requested not in (None, current.version):
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request_text}")
        return current

    # --- PredictionService ------------------------------------------------------------------------------
    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        servable = self._servable(request.model_spec)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signature_defs.get(signature_name)
        if signature is None or signature_name not in servable.functions:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.'
            )
        sent, expected = set(request.inputs), set(signature.inputs)
        if sent != expected:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sorted(sent))}}})"
                f" != len({{{','.join(sorted(expected))}}}). Sent extra: {{{','.join(sorted(sent - expected))}}}."
                f" Missing but required: {{{','.join(sorted(expected - sent))}}}.",
            )
        outputs = list(request.output_filter) or sorted(signature.outputs)
        for alias in outputs:
            if alias not in signature.outputs:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                    f"{{{','.join(sorted(signature.outputs))}}}.",
                )
        if len(set(outputs)) != len(outputs):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "duplicate output tensor alias")
        feeds = {name: _input_tensor(name, request.inputs[name], signature.inputs[name]) for name in expected}
        try:
            results = servable.functions[signature_name](**feeds)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, tf_error_reason(getattr(exc, "message", str(exc)))
            ) from None
        response = predict_pb2.PredictResponse()
        _fill_model_spec(response.model_spec, self.model_name, servable.version, signature_name)
        for alias in outputs:
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(results[alias].numpy()))
        return response

    def get_model_metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        servable = self._servable(request.model_spec)
        if not request.metadata_field:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for metadata_field in request.metadata_field:
            if metadata_field != "signature_def":
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {metadata_field} is not supported"
                )
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_model_spec(response.model_spec, self.model_name, servable.version, "")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in servable.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        response.metadata["signature_def"].Pack(signature_map)
        return response

    # --- ModelService -----------------------------------------------------------------------------------
    def get_model_status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        if not spec.name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        with self._lock:
            states = dict(self._states)
        if spec.name != self.model_name or not states:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        if spec.HasField("version"):
            if spec.version.value not in states:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND, f"Could not find version {spec.version.value} of model {spec.name}"
                )
            states = {spec.version.value: states[spec.version.value]}
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in sorted(states, reverse=True):
            state, message = states[version]
            entry = response.model_version_status.add(version=version, state=state)
            entry.status.CopyFrom(
                status_pb2.StatusProto(error_code=2 if message else 0, error_message=message)  # 2 = UNKNOWN
            )
        return response


def model_spec(name: str, version: int | None = None, label: str | None = None) -> model_pb2.ModelSpec:
    """A request's ModelSpec: the latest version, a specific one, or a labelled one."""
    spec = model_pb2.ModelSpec(name=name)
    if version is not None:
        spec.version.value = version
    if label:
        spec.version_label = label
    return spec


def _fill_model_spec(spec: model_pb2.ModelSpec, name: str, version: int, signature_name: str) -> None:
    spec.name = name
    spec.version.value = version
    if signature_name:
        spec.signature_name = signature_name


def _input_tensor(name: str, proto, tensor_info) -> tf.Tensor:
    """TensorProto → tensor of the signature's dtype; INVALID_ARGUMENT naming the input otherwise."""
    try:
        array = tf.make_ndarray(proto)
    except Exception as exc:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input '{name}': malformed TensorProto: {exc}") from None
    if proto.dtype != tensor_info.dtype:
        # TF's DataTypeString spelling, as in TF Serving's message: "float", "string", "int64".
        expected, got = (types_pb2.DataType.Name(t)[3:].lower() for t in (tensor_info.dtype, proto.dtype))
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, f"Expects arg '{name}' to be {expected} but {got} is provided"
        )
    if not tensor_info.tensor_shape.unknown_rank:
        dims = [d.size for d in tensor_info.tensor_shape.dim]
        if array.ndim != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, array.shape, strict=True)):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input '{name}': shape {list(array.shape)} does not match the signature's {dims} (-1 = any)",
            )
    return tf.constant(array)


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, server: ModelServer):
        self.server = server

    def Predict(self, request, context):
        return _answer(context, self.server.predict, request)

    def GetModelMetadata(self, request, context):
        return _answer(context, self.server.get_model_metadata, request)


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, server: ModelServer):
        self.server = server

    def GetModelStatus(self, request, context):
        return _answer(context, self.server.get_model_status, request)


def _answer(context, method, request):
    try:
        return method(request)
    except ServingError as exc:
        context.abort(exc.code, exc.message)
    except Exception as exc:  # never crash the server on one request
        log.exception("internal error")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


class RunningServer:
    """A started gRPC server plus its version poller; `stop()` ends both."""

    def __init__(self, grpc_server, model_server: ModelServer, port: int, poll_seconds: float, rest=None):
        self.grpc_server = grpc_server
        self.model_server = model_server
        self.port = port
        self.rest = rest  # serving.rest.RestServer or None
        self.rest_port = rest.port if rest else None
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, args=(poll_seconds,), daemon=True, name="poller")
        self._poller.start()

    def _poll_loop(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.model_server.poll()
            except Exception:  # e.g. the base path vanished for a moment; try again next time
                log.exception("polling %s failed", self.model_server.model_base_path)

    def stop(self, grace: float = 5.0) -> None:
        self._stop.set()
        if self.rest:
            self.rest.stop()
        self.grpc_server.stop(grace).wait()

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def start_server(
    model_base_path: str,
    model_name: str = "pets",
    host: str = "127.0.0.1",
    port: int = 8500,
    poll_seconds: float = 1.0,
    max_workers: int = 8,
    rest_api_port: int | None = None,
) -> RunningServer:
    """Load the latest version, then serve gRPC on host:port (port 0 picks a free one) and, with rest_api_port
    (0 picks a free one), TF Serving's REST API beside it."""
    model_server = ModelServer(model_name, model_base_path)
    model_server.poll()
    if model_server.current_version is None:
        log.warning("no servable version under %s yet; waiting for one", model_base_path)
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(model_server), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(model_server), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port} (in use, or not an address of this machine)")
    server.start()
    rest = None
    if rest_api_port is not None:
        from serving.rest import RestServer

        rest = RestServer(model_server, host, rest_api_port)
    return RunningServer(server, model_server, bound, poll_seconds, rest)
