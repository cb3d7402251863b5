"""The model server's core: models, versions and TF Serving's request semantics, on protos, without gRPC.

The real `tensorflow_model_server` cannot be installed on our machines, so this is what tests, demos and laptops
talk to; production runs the real one on the same directory. It follows TF Serving's documented behaviour:

* models come from a ModelServerConfig (`--model_config_file`, or one `--model_name`/`--model_base_path`); under
  each base path a child is a version when its name parses as an int64, "00000123" included, and is loaded from
  the directory as named (schemas/serving_layout.py); anything else, e.g. an exporter's staging directory, is
  skipped;
* the version policy picks the aspired versions: `latest { num_versions: N }` (default N=1), `all`, or
  `specific { versions: ... }`; polling loads new aspired versions (warmup replayed first) and unloads the others
  once an aspired version is available — so a version that fails to load leaves the previous one serving;
* `version_labels` map names to versions; a label may only point at an available version;
* a version is a SavedModelBundle: a graph-mode session that runs a signature by its tensor names
  (serving/bundle.py); Predict / Classify / Regress / MultiInference run as TF Serving runs them
  (serving/inference.py); GetModelMetadata / GetModelStatus / HandleReloadConfigRequest answer here, with TF
  Serving's status codes and messages (quoted from its sources).

A request holds a reference to the version it resolved, so it finishes on that version even if the version is
unloaded meanwhile. Pure core: ModelServer. Thin shells: serving/server.py (gRPC), serving/rest.py (HTTP).
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import tensorflow as tf
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

from schemas.serving_layout import version_dirs
from serving.batching import BatchingOptions
from serving.inference import (
    DEFAULT_SIGNATURE,
    LoadedVersion,
    RequestPolicy,
    ServingLimits,
    load_version,
    run_classify,
    run_multi_inference,
    run_predict,
    run_regress,
    warm_up,
)
from serving.metrics import ServingMetrics
from serving.protos import ConfigFileError, ModelServerConfig, validate_model_server_config
from serving.status import ServingError, invalid
from serving.tensors import tensor_proto

log = logging.getLogger("petpipe.serve")
ModelVersionStatus = get_model_status_pb2.ModelVersionStatus
# Re-exported for the shells and tests that import them from here.
__all__ = [
    "DEFAULT_SIGNATURE",
    "LoadRetry",
    "LoadedVersion",
    "ModelServer",
    "ServingError",
    "ServingLimits",
    "load_version",
    "model_spec",
    "single_model_config",
    "tensor_proto",
    "warm_up",
]


@dataclass(frozen=True)
class LoadRetry:
    """TF Serving's --max_num_load_retries and --load_retry_interval_micros (defaults 5 and one minute)."""

    max_num_load_retries: int = 5
    interval_seconds: float = 60.0


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
    # version → (state, health: error code and message), as TF Serving's ServableStateMonitor keeps them
    states: dict[int, tuple[int, int, str]] = field(default_factory=dict)
    failed: dict[int, tuple[int, float]] = field(default_factory=dict)  # version → (failed loads, when last)


class ModelServer:
    """Serves the models of a ModelServerConfig; thread-safe. `poll()` loads and unloads versions."""

    def __init__(
        self,
        config: ModelServerConfig,
        batching: BatchingOptions | None = None,
        limits: ServingLimits | None = None,
        allowed_roots: tuple[str, ...] | None = None,
        load_retry: LoadRetry = LoadRetry(),
        method_name_check: bool = False,
        metrics=None,
    ):
        validate_model_server_config(config)
        self.batching = batching
        self.limits = limits or ServingLimits()
        self.load_retry = load_retry
        self.metrics = metrics or ServingMetrics()
        self.policy = RequestPolicy(self.limits, method_name_check, self.metrics)
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
        dirs = _version_dirs(base)
        aspired = aspired_versions(model.entry, list(dirs))
        for version in sorted(aspired, reverse=True):  # newest first: it is the one "latest" requests get
            if version in model.loaded or not self._may_load(model, version):
                continue
            path = os.path.join(base, dirs[version])  # as named: "00000123" is version 123
            self._set_state(model, version, ModelVersionStatus.LOADING)
            try:
                if not _inside(path, base):
                    raise ValueError(f"{path} resolves outside the model's base path {base}")
                loaded = self._load(path, version)
            except Exception as exc:  # a broken version must not take the server down; keep serving the old one
                log.error("model %s: failed to load %s: %s", name, path, exc)
                attempts = model.failed.get(version, (0, 0.0))[0] + 1
                model.failed[version] = (attempts, time.monotonic())
                message = f"Loading servable: {{name: {name} version: {version}}} failed: {type(exc).__name__}: {exc}"
                self._set_state(model, version, ModelVersionStatus.END, _error_code(exc), message)
                continue
            with self._lock:
                model.loaded[version] = loaded
                model.states[version] = (ModelVersionStatus.AVAILABLE, 0, "")
            log.info("model %s: serving version %d from %s", name, version, path)
        with self._lock:
            if not any(v in model.loaded for v in aspired):
                return  # availability first: nothing aspired is up, so keep what serves now
            retired = [model.loaded.pop(v) for v in list(model.loaded) if v not in aspired]
            for loaded in retired:
                model.states[loaded.version] = (ModelVersionStatus.UNLOADING, 0, "")
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

    def _set_state(self, model: _Model, version: int, state: int, code: int = 0, message: str = "") -> None:
        with self._lock:
            model.states[version] = (state, code, message)

    def latest_version(self, name: str) -> int | None:
        with self._lock:
            model = self._models.get(name)
            return max(model.loaded) if model and model.loaded else None

    def reload_config(self, config: ModelServerConfig) -> None:
        """Replace the served models (HandleReloadConfigRequest): models with an unchanged name and base path keep
        their loaded versions; removed ones are unloaded. Blocks until the new config's versions are loaded."""
        if config.WhichOneof("config") is None:  # an unset config would unload every model
            raise invalid("ReloadConfigRequest: config must set model_config_list (the only supported kind)")
        try:
            validate_model_server_config(config, "ReloadConfigRequest")
        except ConfigFileError as exc:
            raise invalid(str(exc)) from None
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
                raise invalid(f"model {entry.name}: base_path contains a NUL byte")
            if not _is_remote(entry.base_path) and not os.path.isabs(entry.base_path.removeprefix("file://")):
                raise invalid(f"model {entry.name}: base_path must be absolute, got {entry.base_path!r}")
            if not any(_inside(entry.base_path, root) for root in self.allowed_roots):
                raise invalid(
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
        """Unload every version (at shutdown); later requests find none (NOT_FOUND)."""
        with self._lock:
            loaded = [v for m in self._models.values() for v in m.loaded.values()]
            for model in self._models.values():
                model.loaded.clear()
        for version in loaded:
            version.unload()

    def _load(self, path: str, version: int) -> LoadedVersion:
        """Load a version, recording TF's SavedModel load metrics (attempt count by status, latency) as
        LoadSavedModel does: only once there is a saved_model.pb(txt) to load."""
        started, ok = time.perf_counter(), False
        try:
            loaded = load_version(path, version, self.batching, self.policy)
            ok = True
            return loaded
        finally:
            if any(tf.io.gfile.exists(os.path.join(path, name)) for name in ("saved_model.pb", "saved_model.pbtxt")):
                self.metrics.record_load(path, ok, int((time.perf_counter() - started) * 1e6))

    # --- resolving a ModelSpec ----------------------------------------------------------------------------
    def servable_for(self, name: str, version: int | None = None, label: str | None = None) -> LoadedVersion:
        """The loaded version a name/version/label names (for reading its signatures; not held)."""
        return self._resolve(model_spec(name, version, label))

    def _resolve(self, spec) -> LoadedVersion:
        """ServerCore::ServableRequestFromModelSpec and the manager's lookup."""
        if not spec.name:
            raise invalid("ModelSpec has no name specified.")
        with self._lock:
            model = self._models.get(spec.name)
            if spec.WhichOneof("version_choice") == "version_label":
                labels = model.entry.version_labels if model else {}
                if spec.version_label not in labels:
                    raise invalid(f"Unrecognized servable version label: {spec.version_label}")
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

    @contextmanager
    def _handle(self, request, spec=None):
        """A ServableHandle: the version a request resolved, kept loaded until the request is answered."""
        if spec is None:
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            spec = request.model_spec
        while True:
            servable = self._resolve(spec)
            if servable.bundle.acquire():
                break
            # unloaded between lookup and acquire: look again (the manager has moved on to another version)
        try:
            yield servable
        finally:
            servable.bundle.release()

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
        with self._lock:
            model = self._models.get(spec.name)
            states = dict(model.states) if model else {}
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


def _error_code(exc: Exception) -> int:
    """A failed load's health code: TensorFlow's and our own statuses keep theirs, anything else is UNKNOWN."""
    if isinstance(exc, ServingError):
        return exc.code.value[0]
    if isinstance(exc, tf.errors.OpError):
        return exc.error_code
    return grpc.StatusCode.UNKNOWN.value[0]


def _version_dirs(base_path: str) -> dict[int, str]:
    """version → directory name under a base path (schemas/serving_layout.py has TF Serving's rules)."""
    if not tf.io.gfile.isdir(base_path):
        return {}
    return version_dirs(tf.io.gfile.listdir(base_path))


def model_spec(name: str, version: int | None = None, label: str | None = None) -> model_pb2.ModelSpec:
    """A request's ModelSpec: the latest version, a specific one, or a labelled one."""
    spec = model_pb2.ModelSpec(name=name)
    if version is not None:
        spec.version.value = version
    if label:
        spec.version_label = label
    return spec


def single_model_config(model_name: str, model_base_path: str) -> ModelServerConfig:
    config = ModelServerConfig()
    entry = config.model_config_list.config.add(name=model_name, model_platform="tensorflow")
    entry.base_path = model_base_path if _is_remote(model_base_path) else os.path.abspath(model_base_path)
    return config


def _copy(entry):
    copied = type(entry)()
    copied.CopyFrom(entry)
    return copied
