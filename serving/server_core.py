"""Models and their versions, as TF Serving's ServerCore (and its AspiredVersionsManager) keeps them.

Models come from a ModelServerConfig (`--model_config_file`, or one `--model_name`/`--model_base_path`); polling
loads the versions their policy aspires to (serving/versions.py), warmup replayed first (serving/warmup.py), and
unloads the others once an aspired version is available — so a version that fails to load leaves the previous one
serving. `version_labels` map names to versions; a label may only point at an available version. A config reload
(HandleReloadConfigRequest) may only point models under the allowed roots (serving/model_paths.py).

A request holds a reference to the version it resolved (a ServableHandle), so it finishes on that version even if
the version is unloaded meanwhile. The request handlers on top of this are serving/core.py's ModelServer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_pb2

from serving.batching import BatchingOptions
from serving.bundle import RunObserver
from serving.inference import LoadedVersion, RequestPolicy, ServingLimits
from serving.metrics import ServingMetrics
from serving.model_paths import absolute_base_path, check_base_path, is_inside, parent
from serving.protos import ConfigFileError, ModelServerConfig, validate_model_server_config
from serving.status import ServingError, invalid
from serving.versions import LoadRetry, aspired_versions, versions_on_disk
from serving.warmup import load_version

log = logging.getLogger("petpipe.serve")
ModelVersionStatus = get_model_status_pb2.ModelVersionStatus


@dataclass
class _Model:
    """One configured model: its config entry, loaded versions and per-version state."""

    entry: object  # model_server_config_pb2.ModelConfig
    loaded: dict[int, LoadedVersion] = field(default_factory=dict)
    # version → (state, health: error code and message), as TF Serving's ServableStateMonitor keeps them
    states: dict[int, tuple[int, int, str]] = field(default_factory=dict)
    failed: dict[int, tuple[int, float]] = field(default_factory=dict)  # version → (failed loads, when last)


class ServerCore:
    """The models of a ModelServerConfig and their loaded versions; thread-safe. `poll()` loads and unloads
    versions.

    Measurement hooks: `metrics` (serving/metrics.py's ServingMetrics; `ServingMetrics(recording=False)` records
    nothing) and `run_observer`, called with (batch size, seconds) after every Session::Run of every version
    (serving/bundle.py's RunObserver).
    """

    def __init__(
        self,
        config: ModelServerConfig,
        batching: BatchingOptions | None = None,
        limits: ServingLimits | None = None,
        allowed_roots: tuple[str, ...] | None = None,
        load_retry: LoadRetry | None = None,
        method_name_check: bool = False,
        metrics: ServingMetrics | None = None,
        run_observer: RunObserver | None = None,
    ):
        validate_model_server_config(config)
        self.batching = batching
        self.limits = limits or ServingLimits()
        self.load_retry = load_retry or LoadRetry()
        self.metrics = metrics if metrics is not None else ServingMetrics()
        self.policy = RequestPolicy(self.limits, method_name_check, self.metrics, run_observer)
        # Where HandleReloadConfigRequest may point models: by default the directories the server started with,
        # so a client on the port cannot make the server load (and run) a SavedModel from anywhere on the disk.
        entries = config.model_config_list.config
        self.allowed_roots = tuple(allowed_roots or {parent(e.base_path) for e in entries})
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()  # one poll (or reload) at a time
        self._models: dict[str, _Model] = {e.name: _Model(_copy(e)) for e in entries}
        self._check_base_paths(config)

    @classmethod
    def single(cls, model_name: str, model_base_path: str, **options) -> ServerCore:
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
        dirs = versions_on_disk(base)
        aspired = aspired_versions(model.entry, list(dirs))
        for version in sorted(aspired, reverse=True):  # newest first: it is the one "latest" requests get
            if version in model.loaded or not self.load_retry.allows(*model.failed.get(version, (0, 0.0))):
                continue
            path = os.path.join(base, dirs[version])  # as named: "00000123" is version 123
            self._set_state(model, version, ModelVersionStatus.LOADING)
            try:
                if not is_inside(path, base):
                    raise ValueError(f"{path} resolves outside the model's base path {base}")
                loaded = self._load(path, version)
            except Exception as exc:  # a broken version must not take the server down; keep serving the old one
                log.error("model %s: failed to load %s: %s", name, path, exc)
                attempts = model.failed.get(version, (0, 0.0))[0] + 1
                model.failed[version] = (attempts, self.load_retry.clock())
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
            check_base_path(entry.name, entry.base_path, self.allowed_roots)

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

    def version_states(self, name: str) -> dict[int, tuple[int, int, str]]:
        """version → (state, error code, error message) of every version of a model seen so far."""
        with self._lock:
            model = self._models.get(name)
            return dict(model.states) if model else {}

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


def _error_code(exc: Exception) -> int:
    """A failed load's health code: TensorFlow's and our own statuses keep theirs, anything else is UNKNOWN."""
    if isinstance(exc, ServingError):
        return exc.code.value[0]
    if isinstance(exc, tf.errors.OpError):
        return exc.error_code
    return grpc.StatusCode.UNKNOWN.value[0]


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
    entry.base_path = absolute_base_path(model_base_path)
    return config


def _copy(entry):
    copied = type(entry)()
    copied.CopyFrom(entry)
    return copied
