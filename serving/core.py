"""The model server's core: models, versions and TF Serving's request semantics, on protos, without gRPC.

The real `tensorflow_model_server` cannot be installed on our machines, so this is what tests, demos and laptops
talk to; production runs the real one on the same directory. It follows TF Serving's documented behaviour:

* models come from a ModelServerConfig (`--model_config_file`, or one `--model_name`/`--model_base_path`); under
  each base path only integer-named directories are versions (an exporter's staging directory is ignored);
* the version policy picks the aspired versions: `latest { num_versions: N }` (default N=1), `all`, or
  `specific { versions: ... }`; polling loads new aspired versions (warmup replayed first) and unloads the others
  once an aspired version is available — so a version that fails to load leaves the previous one serving;
* `version_labels` map names to versions; a label may only point at an available version;
* Predict / Classify / Regress / MultiInference / GetModelMetadata / GetModelStatus / HandleReloadConfigRequest
  with TF Serving's status codes and messages (the messages are quoted from TF Serving's sources).

A request holds a reference to the version it resolved, so it finishes on that version even if the version is
unloaded meanwhile. Pure core: ModelServer. Thin shells: serving/server.py (gRPC), serving/rest.py (HTTP).
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
    status_pb2,
)

from components.export import WARMUP_FILE, existing_versions
from components.preprocess import tf_error_reason
from serving.batching import BatchingError, BatchingOptions, BatchScheduler
from serving.protos import ConfigFileError, ModelServerConfig, validate_model_server_config

log = logging.getLogger("petpipe.serve")
DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
ModelVersionStatus = get_model_status_pb2.ModelVersionStatus
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


class ServingError(Exception):
    """An error answered to the client with a gRPC status code, as TF Serving would."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class ServingLimits:
    """Per-request limits, checked before anything runs (INVALID_ARGUMENT otherwise)."""

    max_request_batch: int = 1024  # rows (dimension 0) of any input
    max_string_bytes: int = 16 * 1024 * 1024  # one tf.string element, e.g. one encoded image
    max_elements: int = 16 * 1024 * 1024  # all elements of one input tensor


@dataclass(frozen=True)
class LoadRetry:
    """TF Serving's --max_num_load_retries and --load_retry_interval_micros (defaults 5 and one minute)."""

    max_num_load_retries: int = 5
    interval_seconds: float = 60.0


# --- loading ------------------------------------------------------------------------------------------------
@dataclass
class LoadedVersion:
    version: int
    path: str
    signature_defs: dict  # name → meta_graph_pb2.SignatureDef, as stored in saved_model.pb
    functions: dict  # name → concrete function
    model: object = field(repr=False)  # keeps the loaded SavedModel (and its resources) alive
    batching: BatchingOptions | None = None
    _batchers: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def run(self, signature_name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call a signature on numpy inputs, through the batch scheduler when batching is on."""
        if self.batching is None:
            return self._call(signature_name, feeds)
        with self._lock:
            batcher = self._batchers.get(signature_name)
            if batcher is None:
                call = lambda merged: self._call(signature_name, merged)  # noqa: E731
                batcher = BatchScheduler(call, self.batching, f"v{self.version}-{signature_name}")
                self._batchers[signature_name] = batcher
        try:
            return batcher.submit(feeds)
        except BatchingError as exc:
            raise ServingError(exc.code, exc.message) from None

    def _call(self, signature_name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.functions[signature_name](**{name: tf.constant(a) for name, a in feeds.items()})
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            raise _invalid(tf_error_reason(getattr(exc, "message", str(exc)))) from None
        return {name: tensor.numpy() for name, tensor in results.items()}

    def unload(self) -> None:
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.stop()


def load_version(path: str, version: int, batching: BatchingOptions | None = None) -> LoadedVersion:
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    signature_defs = dict(saved_model.meta_graphs[0].signature_def)
    model = tf.saved_model.load(path)
    functions = {name: model.signatures[name] for name in signature_defs if name in model.signatures}
    loaded = LoadedVersion(version, path, signature_defs, functions, model, batching)
    replayed = warm_up(loaded)
    if replayed:
        log.info("version %d: replayed %d warmup requests", version, replayed)
    return loaded


def warm_up(loaded: LoadedVersion) -> int:
    """Replay `assets.extra/tf_serving_warmup_requests` (PredictionLog records) before the version takes
    traffic, as TF Serving does; a request that fails fails the load. Returns how many were replayed."""
    path = os.path.join(loaded.path, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        kind = entry.WhichOneof("log_type")
        if kind == "predict_log":
            request = entry.predict_log.request
            feeds = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        elif kind in ("classify_log", "regress_log"):
            request = getattr(entry, kind).request
            signature = loaded.signature_defs[request.model_spec.signature_name or DEFAULT_SIGNATURE]
            feeds = {next(iter(signature.inputs)): serialized_examples(request.input)}
        else:
            continue  # multi-inference and session-run logs: nothing of ours writes them
        loaded._call(request.model_spec.signature_name or DEFAULT_SIGNATURE, feeds)
        count += 1
    return count


def aspired_versions(entry, versions: list[int]) -> list[int]:
    """The versions a model's version policy wants loaded, of those on disk (ascending)."""
    policy = entry.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return list(versions)
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in versions if v in wanted]
    count = policy.latest.num_versions if choice == "latest" else 1
    return list(versions[-count:])


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _resolved(path: str) -> str:
    """A path as the file system will reach it: local paths (and file:// URLs) with symlinks and '..' resolved;
    remote URLs (gs://, s3://, ...) as written, their '..' segments collapsed."""
    if "\x00" in path:
        raise ValueError("path contains a NUL byte")
    if path.startswith("file://"):
        path = path[len("file://") :]
    if _is_remote(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}"
    return os.path.realpath(path)


def _parent(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if _is_remote(path) else os.path.dirname(os.path.abspath(path))


def _inside(path: str, root: str) -> bool:
    path, root = _resolved(path), _resolved(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass
class _Model:
    """One configured model: its config entry, loaded versions and per-version state."""

    entry: object  # model_server_config_pb2.ModelConfig
    loaded: dict[int, LoadedVersion] = field(default_factory=dict)
    states: dict[int, tuple[int, str]] = field(default_factory=dict)  # version → (state, error message)
    failed: dict[int, tuple[int, float]] = field(default_factory=dict)  # version → (failed loads, when last)


class ModelServer:
    """Serves the models of a ModelServerConfig; thread-safe. `poll()` loads and unloads versions."""

    def __init__(
        self,
        config: ModelServerConfig,
        batching: BatchingOptions | None = None,
        limits: ServingLimits = ServingLimits(),
        allowed_roots: tuple[str, ...] | None = None,
        load_retry: LoadRetry = LoadRetry(),
    ):
        validate_model_server_config(config)
        self.batching = batching
        self.limits = limits
        self.load_retry = load_retry
        # Where HandleReloadConfigRequest may point models: by default the directories the server started with,
        # so a client on the port cannot make the server load (and run) a SavedModel from anywhere on the disk.
        entries = config.model_config_list.config
        self.allowed_roots = tuple(allowed_roots or {_parent(e.base_path) for e in entries})
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()  # one poll (or reload) at a time
        self._models: dict[str, _Model] = {e.name: _Model(_copy(e)) for e in entries}
        self._check_base_paths(config)

    @classmethod
    def single(cls, model_name: str, model_base_path: str, **options) -> ModelServer:
        """The `--model_name --model_base_path` form: one model, policy latest 1."""
        return cls(single_model_config(model_name, model_base_path), **options)

    @property
    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def base_path(self, name: str) -> str:
        with self._lock:
            return self._models[name].entry.base_path

    # --- version management -------------------------------------------------------------------------------
    def poll(self) -> None:
        """Load newly aspired versions, then unload the versions the policy no longer wants."""
        with self._poll_lock:
            with self._lock:
                models = list(self._models.items())
            for name, model in models:
                self._poll_model(name, model)

    def _poll_model(self, name: str, model: _Model) -> None:
        base = model.entry.base_path
        aspired = aspired_versions(model.entry, existing_versions(base))
        for version in sorted(aspired, reverse=True):  # newest first: it is the one "latest" requests get
            if version in model.loaded or not self._may_load(model, version):
                continue
            path = os.path.join(base, str(version))
            self._set_state(model, version, ModelVersionStatus.LOADING)
            try:
                if not _inside(path, base):
                    raise ValueError(f"{path} resolves outside the model's base path {base}")
                loaded = load_version(path, version, self.batching)
            except Exception as exc:  # a broken version must not take the server down; keep serving the old one
                log.error("model %s: failed to load %s: %s", name, path, exc)
                attempts = model.failed.get(version, (0, 0.0))[0] + 1
                model.failed[version] = (attempts, time.monotonic())
                message = f"Loading servable: {{name: {name} version: {version}}} failed: {type(exc).__name__}: {exc}"
                self._set_state(model, version, ModelVersionStatus.END, message)
                continue
            with self._lock:
                model.loaded[version] = loaded
                model.states[version] = (ModelVersionStatus.AVAILABLE, "")
            log.info("model %s: serving version %d from %s", name, version, path)
        with self._lock:
            if not any(v in model.loaded for v in aspired):
                return  # availability first: nothing aspired is up, so keep what serves now
            retired = [model.loaded.pop(v) for v in list(model.loaded) if v not in aspired]
            for loaded in retired:
                model.states[loaded.version] = (ModelVersionStatus.UNLOADING, "")
        for loaded in retired:  # in-flight requests hold their own reference and finish on it
            loaded.unload()
            self._set_state(model, loaded.version, ModelVersionStatus.END)
            log.info("model %s: unloaded version %d", name, loaded.version)

    def _may_load(self, model: _Model, version: int) -> bool:
        """A version that failed to load is retried (it may have been half-written) up to max_num_load_retries
        times, load_retry_interval apart, as TF Serving does; then it stays END until a config reload."""
        attempts, last = model.failed.get(version, (0, 0.0))
        if attempts == 0:
            return True
        retry = self.load_retry
        return attempts <= retry.max_num_load_retries and time.monotonic() - last >= retry.interval_seconds

    def _set_state(self, model: _Model, version: int, state: int, message: str = "") -> None:
        with self._lock:
            model.states[version] = (state, message)

    def latest_version(self, name: str) -> int | None:
        with self._lock:
            model = self._models.get(name)
            return max(model.loaded) if model and model.loaded else None

    def reload_config(self, config: ModelServerConfig) -> None:
        """Replace the served models (HandleReloadConfigRequest): models with an unchanged name and base path keep
        their loaded versions; removed ones are unloaded. Blocks until the new config's versions are loaded."""
        if config.WhichOneof("config") is None:  # an unset config would unload every model
            raise _invalid("ReloadConfigRequest: config must set model_config_list (the only supported kind)")
        try:
            validate_model_server_config(config, "ReloadConfigRequest")
        except ConfigFileError as exc:
            raise _invalid(str(exc)) from None
        self._check_base_paths(config)
        with self._poll_lock:
            with self._lock:
                old, self._models = self._models, {}
                for entry in config.model_config_list.config:
                    kept = old.get(entry.name)
                    if kept is not None and kept.entry.base_path == entry.base_path:
                        kept.entry = _copy(entry)
                        kept.failed.clear()  # a reload is the operator's "try again"
                        self._models[entry.name] = kept
                    else:
                        self._models[entry.name] = _Model(_copy(entry))
                dropped = [m for n, m in old.items() if self._models.get(n) is not m]
            for model in dropped:
                for loaded in model.loaded.values():
                    loaded.unload()
        self.poll()
        self._check_labels()

    def _check_base_paths(self, config: ModelServerConfig) -> None:
        for entry in config.model_config_list.config:
            if "\x00" in entry.base_path:
                raise _invalid(f"model {entry.name}: base_path contains a NUL byte")
            if not _is_remote(entry.base_path) and not os.path.isabs(entry.base_path.removeprefix("file://")):
                raise _invalid(f"model {entry.name}: base_path must be absolute, got {entry.base_path!r}")
            if not any(_inside(entry.base_path, root) for root in self.allowed_roots):
                raise _invalid(
                    f"model {entry.name}: base_path {entry.base_path} is outside the allowed roots "
                    f"{list(self.allowed_roots)} (--allowed_base_path_roots)"
                )

    def _check_labels(self) -> None:
        with self._lock:
            for name, model in self._models.items():
                for label, version in model.entry.version_labels.items():
                    if version not in model.loaded:
                        raise ServingError(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"Request to assign label to version {version} of model {name}, which is not "
                            f"currently available for inference (label {label})",
                        )

    def unload_all(self) -> None:
        with self._lock:
            loaded = [v for m in self._models.values() for v in m.loaded.values()]
        for version in loaded:
            version.unload()

    # --- resolving a ModelSpec ----------------------------------------------------------------------------
    def servable_for(self, name: str, version: int | None = None, label: str | None = None) -> LoadedVersion:
        return self._servable(model_spec(name, version, label))

    def _servable(self, spec) -> LoadedVersion:
        """The loaded version a request's ModelSpec names."""
        if not spec.name:
            raise _invalid("Missing ModelSpec")
        with self._lock:
            model = self._models.get(spec.name)
            if spec.version_label:
                labels = model.entry.version_labels if model else {}
                if spec.version_label not in labels:
                    raise _invalid(f"Unrecognized servable version label: {spec.version_label}")
                requested = labels[spec.version_label]
            else:
                requested = spec.version.value if spec.HasField("version") else None
            loaded = model.loaded if model else {}
            version = requested if requested is not None else max(loaded, default=None)
            servable = loaded.get(version)
        if servable is None:
            request = f"Specific({spec.name}, {requested})" if requested is not None else f"Latest({spec.name})"
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")
        return servable

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
            raise _invalid(
                f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sorted(sent))}}})"
                f" != len({{{','.join(sorted(expected))}}}). Sent extra: {{{','.join(sorted(sent - expected))}}}."
                f" Missing but required: {{{','.join(sorted(expected - sent))}}}."
            )
        outputs = list(request.output_filter) or sorted(signature.outputs)
        for alias in outputs:
            if alias not in signature.outputs:
                raise _invalid(
                    f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                    f"{{{','.join(sorted(signature.outputs))}}}."
                )
        if len(set(outputs)) != len(outputs):
            raise _invalid("duplicate output tensor alias")
        feeds = {name: self._input_array(name, request.inputs[name], signature.inputs[name]) for name in expected}
        results = servable.run(signature_name, feeds)
        response = predict_pb2.PredictResponse()
        _fill_model_spec(response.model_spec, request.model_spec.name, servable.version, signature_name)
        for alias in outputs:
            response.outputs[alias].CopyFrom(tensor_proto(results[alias]))
        return response

    def classify(self, request) -> classification_pb2.ClassificationResponse:
        return self._examples_call(request, CLASSIFY_METHOD, classification_pb2.ClassificationResponse())

    def regress(self, request) -> regression_pb2.RegressionResponse:
        return self._examples_call(request, REGRESS_METHOD, regression_pb2.RegressionResponse())

    def _examples_call(self, request, method: str, response):
        """Classify or Regress: one signature of `method` over the request's examples."""
        servable = self._servable(request.model_spec)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        outputs = self._run_examples(servable, signature_name, method, request.input)
        _fill_model_spec(response.model_spec, request.model_spec.name, servable.version, signature_name)
        response.result.CopyFrom(_RESULTS[method](outputs))
        return response

    def multi_inference(self, request) -> inference_pb2.MultiInferenceResponse:
        if not request.tasks:
            raise _invalid("MultiInferenceRequest must contain at least one task")
        names, signatures = set(), set()
        for task in request.tasks:
            if not task.model_spec.name:
                raise _invalid("Found ModelSpec with an empty model name.")
            names.add(task.model_spec.name)
            if len(names) > 1:
                raise _invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if signature_name in signatures:
                raise _invalid(f"Duplicate evaluation of signature: {signature_name}")
            signatures.add(signature_name)
            if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise ServingError(
                    grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}"
                )
        servable = self._servable(request.tasks[0].model_spec)  # one version for every task
        response = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
            outputs = self._run_examples(servable, signature_name, task.method_name, request.input)
            result = response.results.add()
            _fill_model_spec(result.model_spec, task.model_spec.name, servable.version, signature_name)
            field = "classification_result" if task.method_name == CLASSIFY_METHOD else "regression_result"
            getattr(result, field).CopyFrom(_RESULTS[task.method_name](outputs))
        return response

    def _run_examples(self, servable: LoadedVersion, signature_name: str, method: str, input_proto) -> dict:
        """Classify/Regress: check the signature is of `method` (TF Serving's PreProcessClassification /
        PreProcessRegression), feed the serialized examples, return the named outputs."""
        signature = servable.signature_defs.get(signature_name)
        if signature is None or signature_name not in servable.functions:
            raise _invalid(f"No signature was found with the name: {signature_name}")
        kind = "classification" if method == CLASSIFY_METHOD else "regression"
        if signature.method_name != method:
            raise _invalid(f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}")
        if len(signature.inputs) != 1:
            raise _invalid("Expected one input Tensor.")
        if "inputs" not in signature.inputs:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f"No {kind} inputs found in SignatureDef")
        wanted = {"classes", "scores"} if method == CLASSIFY_METHOD else {"outputs"}
        if not wanted & set(signature.outputs):
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Expected {kind} signature outputs to contain {' or '.join(sorted(wanted))}",
            )
        examples = serialized_examples(input_proto)
        if not len(examples):
            raise _invalid("Input is empty.")
        self._check_batch("inputs", examples)
        results = servable.run(signature_name, {"inputs": examples})
        return {name: results[name] for name in wanted & set(results)}

    def get_model_metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        servable = self._servable(request.model_spec)
        if not request.metadata_field:
            raise _invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for metadata_field in request.metadata_field:
            if metadata_field != "signature_def":
                raise _invalid(f"Metadata field {metadata_field} is not supported")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_model_spec(response.model_spec, request.model_spec.name, servable.version, "")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in servable.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        response.metadata["signature_def"].Pack(signature_map)
        return response

    # --- ModelService -----------------------------------------------------------------------------------
    def get_model_status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        if not spec.name:
            raise _invalid("Missing ModelSpec")
        with self._lock:
            model = self._models.get(spec.name)
            states = dict(model.states) if model else {}
            labels = dict(model.entry.version_labels) if model else {}
        if not states:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        if spec.version_label:
            if spec.version_label not in labels:
                raise _invalid(f"Unrecognized servable version label: {spec.version_label}")
            spec = model_spec(spec.name, labels[spec.version_label])
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

    def handle_reload_config_request(self, request) -> model_management_pb2.ReloadConfigResponse:
        self.reload_config(request.config)
        return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto(error_code=0))

    # --- request validation -------------------------------------------------------------------------------
    def _input_array(self, name: str, proto, tensor_info) -> np.ndarray:
        """TensorProto → numpy array of the signature's dtype and shape, within the limits; INVALID_ARGUMENT
        naming the input otherwise."""
        if proto.dtype != tensor_info.dtype:
            # TF's DataTypeString spelling, as in TF Serving's message: "float", "string", "int64".
            expected, got = (_dtype_name(t) for t in (tensor_info.dtype, proto.dtype))
            raise _invalid(f"Expects arg '{name}' to be {expected} but {got} is provided")
        self._check_declared_shape(name, [d.size for d in proto.tensor_shape.dim])
        try:
            array = tf.make_ndarray(proto)
        except Exception as exc:
            raise _invalid(f"input '{name}': malformed TensorProto: {exc}") from None
        if not tensor_info.tensor_shape.unknown_rank:
            dims = [d.size for d in tensor_info.tensor_shape.dim]
            if array.ndim != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, array.shape, strict=True)):
                raise _invalid(
                    f"input '{name}': shape {list(array.shape)} does not match the signature's {dims} (-1 = any)"
                )
        self._check_batch(name, array)
        return array

    def _check_declared_shape(self, name: str, dims: list[int]) -> None:
        """Before conversion: make_ndarray fills a declared shape by repeating the last value, so a few bytes
        could otherwise ask for gigabytes."""
        if any(d < 0 for d in dims):
            raise _invalid(f"input '{name}': negative dimension in shape {dims}")
        if dims and dims[0] > self.limits.max_request_batch:
            raise _invalid(
                f"input '{name}': batch of {dims[0]} exceeds this server's limit of "
                f"{self.limits.max_request_batch} (--max_request_batch)"
            )
        if math.prod(dims) > self.limits.max_elements:
            raise _invalid(
                f"input '{name}': shape {dims} declares {math.prod(dims)} elements, over this server's limit of "
                f"{self.limits.max_elements}"
            )

    def _check_batch(self, name: str, array: np.ndarray) -> None:
        limits = self.limits
        if array.ndim and array.shape[0] > limits.max_request_batch:
            raise _invalid(
                f"input '{name}': batch of {array.shape[0]} exceeds this server's limit of "
                f"{limits.max_request_batch} (--max_request_batch)"
            )
        if array.dtype == object:
            for index, value in enumerate(array.flat):
                if len(value) > limits.max_string_bytes:
                    raise _invalid(
                        f"input '{name}': element {index} is {len(value)} bytes, over this server's limit of "
                        f"{limits.max_string_bytes} (--max_string_bytes)"
                    )


_DATATYPES: dict = {}


def tensor_proto(array: np.ndarray):
    """numpy → TensorProto, the same message tf.make_tensor_proto builds (tensor_content for numbers, string_val
    for strings) at a fifth of its cost, which counts on every response."""
    array = np.asarray(array)
    proto = tensor_pb2.TensorProto()
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape)
    if array.dtype == object or array.dtype.kind in "SU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.flat)
        return proto
    datatype = _DATATYPES.get(array.dtype)
    if datatype is None:
        datatype = _DATATYPES[array.dtype] = tf.dtypes.as_dtype(array.dtype).as_datatype_enum
    proto.dtype = datatype
    proto.tensor_content = np.ascontiguousarray(array).tobytes()
    return proto


def _dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype)[3:].lower() if dtype in types_pb2.DataType.values() else str(dtype)


def serialized_examples(input_proto) -> np.ndarray:
    """An Input proto → serialized tf.Example strings. With a context, each example is the context's bytes followed
    by the example's — proto merge semantics, so the example's own features win, as in TF Serving."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        serialized = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context.SerializeToString()
        serialized = [context + e.SerializeToString() for e in input_proto.example_list_with_context.examples]
    else:
        serialized = []
    return np.array(serialized, dtype=object)


def _classification_result(outputs: dict[str, np.ndarray]) -> classification_pb2.ClassificationResult:
    classes, scores = outputs.get("classes"), outputs.get("scores")
    for name, array in (("classes", classes), ("scores", scores)):
        if array is not None and array.ndim != 2:
            raise _invalid(f"Expected Tensor shape: [batch_size num_classes] but got {list(array.shape)} ({name})")
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise _invalid(f"Tensors class and score should match in dim_size(1). Got {classes.shape} vs. {scores.shape}")
    result = classification_pb2.ClassificationResult()
    reference = classes if classes is not None else scores
    for row in range(reference.shape[0]):
        classifications = result.classifications.add()
        for column in range(reference.shape[1]):
            entry = classifications.classes.add()
            if classes is not None:
                entry.label = classes[row, column].decode("utf-8", "replace")
            if scores is not None:
                entry.score = float(scores[row, column])
    return result


def _regression_result(outputs: dict[str, np.ndarray]) -> regression_pb2.RegressionResult:
    values = outputs["outputs"]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise _invalid(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {list(values.shape)}"
        )
    result = regression_pb2.RegressionResult()
    for value in values.reshape(-1):
        result.regressions.add(value=float(value))
    return result


_RESULTS = {CLASSIFY_METHOD: _classification_result, REGRESS_METHOD: _regression_result}


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


def single_model_config(model_name: str, model_base_path: str) -> ModelServerConfig:
    config = ModelServerConfig()
    entry = config.model_config_list.config.add(name=model_name, model_platform="tensorflow")
    entry.base_path = model_base_path if _is_remote(model_base_path) else os.path.abspath(model_base_path)
    return config


def _copy(entry):
    copied = type(entry)()
    copied.CopyFrom(entry)
    return copied
