"""`petpipe serve`: TF Serving's gRPC API (and, with a REST port, its HTTP API) over serving/core.py's ModelServer.

Thin shell: servicers that turn a ServingError into the gRPC status TF Serving would answer, TLS / mutual TLS
from TF Serving's --ssl_config_file, the version poller (--file_system_poll_wait_seconds) and the model config
file poller (--model_config_file_poll_wait_seconds), and a graceful stop that drains in-flight requests.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.batching import BatchingOptions
from serving.bundle import RunObserver
from serving.core import ModelServer
from serving.grpc_options import MAX_MESSAGE_BYTES, message_size_options
from serving.inference import ServingLimits
from serving.metrics import ServingMetrics, read_monitoring_config
from serving.protos import BatchingParameters, ConfigFileError, ModelServerConfig, SSLConfig, read_text_proto
from serving.server_core import log, single_model_config
from serving.status import ServingError
from serving.versions import LoadRetry


def _answer(context, method, request, api: str | None = None, metrics: ServingMetrics | None = None):
    """Call the core; a ServingError becomes its gRPC status. Predict/Classify/Regress (`api`) are counted as
    prediction_service_impl.cc counts them: request_count by status, request_latency when OK."""
    started, status = time.perf_counter(), "OK"
    try:
        return method(request)
    except ServingError as exc:
        status = exc.code.name
        context.abort(exc.code, exc.message)
    except Exception as exc:  # never crash the server on one request
        status = "INTERNAL"
        log.exception("internal error")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
    finally:
        if api is not None:
            latency = int((time.perf_counter() - started) * 1e6)
            metrics.record_request(request.model_spec.name, api, "GRPC", status, latency)


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, server: ModelServer):
        self.server = server

    def Predict(self, request, context):  # noqa: N802 (gRPC's naming)
        return _answer(context, self.server.predict, request, "Predict", self.server.metrics)

    def Classify(self, request, context):  # noqa: N802
        return _answer(context, self.server.classify, request, "Classify", self.server.metrics)

    def Regress(self, request, context):  # noqa: N802
        return _answer(context, self.server.regress, request, "Regress", self.server.metrics)

    def MultiInference(self, request, context):  # noqa: N802
        return _answer(context, self.server.multi_inference, request)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _answer(context, self.server.get_model_metadata, request)


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, server: ModelServer):
        self.server = server

    def GetModelStatus(self, request, context):  # noqa: N802
        return _answer(context, self.server.get_model_status, request)

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        return _answer(context, self.server.handle_reload_config_request, request)


@dataclass(frozen=True)
class ServeOptions:
    """Everything `petpipe serve` takes, in TF Serving's terms where TF Serving has a flag for it."""

    model_name: str = "pets"
    model_base_path: str | None = None
    model_config_file: str | None = None
    model_config_file_poll_wait_seconds: float = 0.0  # 0: read the config file once, as TF Serving
    file_system_poll_wait_seconds: float = 1.0
    host: str = "127.0.0.1"  # loopback unless asked otherwise (TF Serving binds every interface)
    port: int = 8500
    rest_api_port: int | None = None
    enable_batching: bool = False
    batching_parameters_file: str | None = None
    ssl_config_file: str | None = None
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_request_batch: int = ServingLimits.max_request_batch
    max_string_bytes: int = ServingLimits.max_string_bytes
    allowed_base_path_roots: tuple[str, ...] = ()
    grpc_max_threads: int = 16
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    drain_seconds: float = 30.0
    enable_signature_method_name_check: bool = False
    monitoring_config_file: str | None = None


def model_server_config(options: ServeOptions) -> ModelServerConfig:
    if bool(options.model_config_file) == bool(options.model_base_path):
        raise ConfigFileError("give exactly one of --model_config_file or --model_base_path")
    if options.model_config_file:
        return read_text_proto(options.model_config_file, ModelServerConfig)
    return single_model_config(options.model_name, options.model_base_path)


def batching_options(options: ServeOptions) -> BatchingOptions | None:
    if options.batching_parameters_file and not options.enable_batching:
        raise ConfigFileError("--batching_parameters_file needs --enable_batching (as in TF Serving)")
    if not options.enable_batching:
        return None
    if not options.batching_parameters_file:
        return BatchingOptions()
    path = options.batching_parameters_file
    return BatchingOptions.from_proto(read_text_proto(path, BatchingParameters), path)


def monitoring_path(options: ServeOptions) -> str | None:
    """Where the REST port serves the Prometheus page, or None. As TF Serving's main: the monitoring config is read
    only when there is a REST port; a file that does not parse stops the start."""
    if not options.monitoring_config_file or options.rest_api_port is None:
        return None
    enabled, path = read_monitoring_config(options.monitoring_config_file)
    return path if enabled else None


def server_credentials(path: str) -> grpc.ServerCredentials:
    """TF Serving's SSLConfig: PEM strings inline (server_key, server_cert, custom_ca) and client_verify for
    mutual TLS."""
    ssl = read_text_proto(path, SSLConfig)
    if not ssl.server_key or not ssl.server_cert:
        raise ConfigFileError(f"{path}: server_key and server_cert are required (PEM text)")
    if ssl.client_verify and not ssl.custom_ca:
        raise ConfigFileError(f"{path}: client_verify needs custom_ca (the CA that signs client certificates)")
    return grpc.ssl_server_credentials(
        [(ssl.server_key.encode(), ssl.server_cert.encode())],
        root_certificates=ssl.custom_ca.encode() or None,
        require_client_auth=ssl.client_verify,
    )


class RunningServer:
    """A started gRPC server (+ REST) plus its pollers; `stop()` drains in-flight requests, then ends all."""

    def __init__(self, grpc_server, model_server: ModelServer, port: int, options: ServeOptions, rest=None):
        self.grpc_server = grpc_server
        self.model_server = model_server
        self.port = port
        self.rest = rest  # serving.rest.RestServer or None
        self.rest_port = rest.port if rest else None
        self.options = options
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._poll_versions, daemon=True, name="version-poller")]
        if options.model_config_file and options.model_config_file_poll_wait_seconds > 0:
            self._threads.append(threading.Thread(target=self._poll_config, daemon=True, name="config-poller"))
        for thread in self._threads:
            thread.start()

    def _poll_versions(self) -> None:
        while not self._stop.wait(self.options.file_system_poll_wait_seconds):
            try:
                self.model_server.poll()
            except Exception:  # e.g. a base path vanished for a moment; try again next time
                log.exception("polling model base paths failed")

    def _poll_config(self) -> None:
        path = self.options.model_config_file
        last = None
        while not self._stop.wait(self.options.model_config_file_poll_wait_seconds):
            try:
                config = read_text_proto(path, ModelServerConfig)
                if last is not None and config == last:
                    continue
                if last is not None:
                    log.info("%s changed; reloading the model config", path)
                    self.model_server.reload_config(config)
                last = config
            except (ConfigFileError, ServingError) as exc:  # keep serving the last good config
                log.error("model config %s not applied: %s", path, exc)

    def stop(self, grace: float | None = None) -> None:
        """Refuse new requests, let in-flight ones finish (up to `grace` seconds), then stop. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._stop.set()
        grace = self.options.drain_seconds if grace is None else grace
        drained = self.grpc_server.stop(grace)  # refuses new RPCs at once, waits for in-flight ones
        if self.rest:
            self.rest.stop(grace)
        drained.wait()
        self.model_server.unload_all()

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def start_server(
    model_base_path: str | None = None,
    model_name: str = "pets",
    host: str = "127.0.0.1",
    port: int = 8500,
    poll_seconds: float = 1.0,
    rest_api_port: int | None = None,
    options: ServeOptions | None = None,
    metrics: ServingMetrics | None = None,
    run_observer: RunObserver | None = None,
) -> RunningServer:
    """Load the models, then serve gRPC on host:port (port 0 picks a free one) and, with rest_api_port (0 picks a
    free one), TF Serving's REST API beside it. Either the short arguments or a full ServeOptions.

    Measurement hooks (no flag of TF Serving's): `metrics`, the server's ServingMetrics (e.g. one built with
    recording=False, or one whose `recording` the caller switches); `run_observer`, called with (batch size,
    seconds) after every Session::Run (serving/bundle.py's RunObserver)."""
    if options is None:
        options = ServeOptions(
            model_name=model_name,
            model_base_path=model_base_path,
            host=host,
            port=port,
            file_system_poll_wait_seconds=poll_seconds,
            rest_api_port=rest_api_port,
        )
    metrics_path = monitoring_path(options)
    model_server = ModelServer(
        model_server_config(options),
        batching=batching_options(options),
        limits=ServingLimits(options.max_request_batch, options.max_string_bytes),
        allowed_roots=options.allowed_base_path_roots or None,
        load_retry=LoadRetry(options.max_num_load_retries, options.load_retry_interval_micros / 1e6),
        method_name_check=options.enable_signature_method_name_check,
        metrics=metrics,
        run_observer=run_observer,
    )
    credentials = server_credentials(options.ssl_config_file) if options.ssl_config_file else None
    model_server.poll()
    for name in model_server.model_names:
        if model_server.latest_version(name) is None:
            log.warning("model %s: no servable version under %s yet; waiting", name, model_server.base_path(name))
    grpc_options = message_size_options(options.max_message_bytes)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=options.grpc_max_threads), options=grpc_options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(model_server), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(model_server), server)
    address = f"{options.host}:{options.port}"
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind {address} (in use, or not an address of this machine)")
    server.start()
    rest = None
    if options.rest_api_port is not None:
        from serving.rest import RestServer

        rest = RestServer(model_server, options.host, options.rest_api_port, options.max_message_bytes, metrics_path)
    return RunningServer(server, model_server, bound, options, rest)
