"""TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest) over the same ModelServer core as gRPC.

  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]             → model status
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata    → signature defs
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict     → {"instances": [...]} / {"inputs": ...}
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:classify    → {"examples": [...], "context": {...}}
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:regress
  GET  /monitoring/prometheus/metrics (--monitoring_config_file) → the Prometheus page (serving/metrics.py)

Ported from TF Serving's http_rest_api_handler.cc, http_rest_api_util.cc and http_server.cc: every path under
/v1/ (any case) goes to the handler, which answers a path it cannot parse with 400 "Malformed request: <METHOD>
<path>"; any other path is the HTTP server's 404 page. Errors answer {"error": "..."} with the HTTP code of the
status (ToHTTPStatusCode); the JSON codec is serving/json_tensor.py (TF Serving's json_tensor.cc). Pure core:
RestHandler.process. Thin shell: a ThreadingHTTPServer.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote_to_bytes

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    regression_pb2,
)

from serving import json_tensor
from serving.core import ModelServer
from serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from serving.server_core import log, model_spec
from serving.status import ServingError

_HANDLED_PATH = re.compile(r"/v1/.*", re.IGNORECASE)  # kHTTPRestApiHandlerPathRegex
_PREDICTION_PATH = re.compile(  # kPredictionApiGegex
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS_PATH = re.compile(  # kModelStatusApiRegex
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:\/(metadata))?", re.IGNORECASE
)
_CORS_ORIGIN = re.compile(r"https?://")
# http_server.cc ToHTTPStatusCode
_HTTP_CODES = {
    grpc.StatusCode.OK: HTTPStatus.OK,
    grpc.StatusCode.CANCELLED: 499,  # CLIENT_CLOSED_REQUEST
    grpc.StatusCode.UNKNOWN: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: HTTPStatus.CONFLICT,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.ABORTED: HTTPStatus.CONFLICT,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    grpc.StatusCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
}
# libevent's evhttp_send_error page, which TF Serving's HTTP server sends for a path no handler takes.
NOT_FOUND_PAGE = b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"


def http_code(code: grpc.StatusCode) -> int:
    return int(_HTTP_CODES.get(code, HTTPStatus.INTERNAL_SERVER_ERROR))


@dataclass(frozen=True)
class RestAnswer:
    """What ProcessRequest gives the HTTP server: the status, the body, and the labels its metrics use."""

    status: grpc.StatusCode
    body: str
    model_name: str = ""
    method: str = ""  # "predict", "classify", "regress", or "" (status and metadata)


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _decode_arg(text: str) -> str:
    """curl_easy_unescape: %XX escapes decoded ('+' stays '+')."""
    return unquote_to_bytes(text).decode("utf-8", "replace")


class RestHandler:
    """HttpRestApiHandler: one REST request in, one answer out; no sockets."""

    def __init__(self, server: ModelServer):
        self.server = server

    def process(self, http_method: str, path: str, body: bytes) -> RestAnswer:
        model_name, method = "", ""
        try:
            model_name, version, label, method, subresource, parsed = self._parse(http_method, path)
            if http_method == "POST" and parsed and method in ("predict", "classify", "regress"):
                output = getattr(self, f"_{method}")(model_name, version, label, body)
            elif http_method == "GET" and parsed:
                if not model_name:
                    raise _invalid("Missing model name in request.")
                if subresource == "metadata":
                    output = self._metadata(model_name, version, label)
                else:
                    output = self._status(model_name, version, label)
            else:
                raise _invalid(f"Malformed request: {http_method} {path}")
        except (json_tensor.JsonError, ServingError) as exc:  # MakeJsonFromStatus
            error = json_tensor.make_json_from_status(exc.code.name, exc.message)
            return RestAnswer(exc.code, error, model_name, method)
        return RestAnswer(grpc.StatusCode.OK, output, model_name, method)

    @staticmethod
    def _parse(http_method: str, path: str):
        """ParseModelInfo: (model name, version, label, method, subresource, whether the path parsed)."""
        match = None
        if http_method == "POST":
            match = _PREDICTION_PATH.fullmatch(path)
            groups = match.groups() if match else (None,) * 4
            name, version, label, method = groups
            subresource = ""
        elif http_method == "GET":
            match = _STATUS_PATH.fullmatch(path)
            name, version, label, subresource = match.groups() if match else (None,) * 4
            method = ""
        else:
            name = version = label = method = subresource = None
        name = _decode_arg(name) if name else ""
        number = None
        if version:
            number = int(version)
            if number >= 2**63:
                raise _invalid(f"Failed to convert version: {version} to numeric.")
        label = _decode_arg(label) if label else None
        return name, number, label, method or "", subresource or "", match is not None

    def _predict(self, name: str, version: int | None, label: str | None, body: bytes) -> str:
        request = predict_pb2.PredictRequest()
        request.model_spec.CopyFrom(model_spec(name, version, label))  # FillModelSpecWithNameVersionAndLabel
        fmt = json_tensor.fill_predict_request_from_json(
            body, lambda signature_name: self._input_infos(request.model_spec, signature_name), request
        )
        response = self.server.predict(request)
        return json_tensor.make_json_from_tensors(response.outputs, fmt)

    def _input_infos(self, spec, signature_name: str):
        """GetInfoMap: the signature's inputs, which say how to read the JSON values."""
        servable = self.server.servable_for(
            spec.name,
            spec.version.value if spec.HasField("version") else None,
            spec.version_label or None,
        )
        key = signature_name or "serving_default"
        signature = servable.signature_defs.get(key)
        if signature is None:
            raise _invalid(f'Serving signature name: "{key}" not found in signature def')
        return signature.inputs

    def _classify(self, name: str, version: int | None, label: str | None, body: bytes) -> str:
        request = classification_pb2.ClassificationRequest()
        request.model_spec.CopyFrom(model_spec(name, version, label))
        json_tensor.fill_classification_request_from_json(body, request)
        return json_tensor.make_json_from_classification_result(self.server.classify(request).result)

    def _regress(self, name: str, version: int | None, label: str | None, body: bytes) -> str:
        request = regression_pb2.RegressionRequest()
        request.model_spec.CopyFrom(model_spec(name, version, label))
        json_tensor.fill_regression_request_from_json(body, request)
        return json_tensor.make_json_from_regression_result(self.server.regress(request).result)

    def _status(self, name: str, version: int | None, label: str | None) -> str:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.CopyFrom(model_spec(name, version, label))
        return _message_json(self.server.get_model_status(request), preserve_names=False)

    def _metadata(self, name: str, version: int | None, label: str | None) -> str:
        """ToJsonString(GetModelMetadataResponse): the model spec and the unpacked SignatureDefMap, put together
        as TF Serving's handler writes them."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.CopyFrom(model_spec(name, version, label))
        response = self.server.get_model_metadata(request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return (
            f'{{\n"model_spec":{_message_json(response.model_spec)},\n'
            f'"metadata": {{"signature_def": {_message_json(signatures)}}}\n}}\n'
        )


def _message_json(message, preserve_names: bool = True) -> str:
    """MessageToJsonString with add_whitespace and always_print_fields_with_no_presence, as TF Serving's."""
    return json_format.MessageToJson(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=preserve_names,
        indent=1,
    )


class _InFlight:
    """Counts requests being answered, so a stop can wait for them (and refuse new ones meanwhile)."""

    def __init__(self):
        self.count = 0
        self.draining = False
        self.cond = threading.Condition()

    def enter(self) -> bool:
        with self.cond:
            if self.draining:
                return False
            self.count += 1
            return True

    def leave(self) -> None:
        with self.cond:
            self.count -= 1
            self.cond.notify_all()

    def drain(self, timeout: float) -> None:
        with self.cond:
            self.draining = True
            self.cond.wait_for(lambda: self.count == 0, timeout)


def _http_handler(handler: RestHandler, max_body_bytes: int, in_flight: _InFlight, metrics_path: str | None):
    metrics = handler.server.metrics

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 60  # an idle or stalled connection is closed instead of holding a thread forever

        def log_message(self, *args):  # requests are not logged line by line
            pass

        def setup(self):
            super().setup()
            # Headers and body leave in two writes; with Nagle's algorithm the second waits for the client's
            # delayed ACK (~40 ms per request on Linux).
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            if not self.body_read and self.headers.get("Content-Length", "0") not in ("", "0"):
                # An unread body must not be taken for the next request: answer, then close (this header also
                # sets close_connection).
                self.send_header("Connection", "close")
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _read_body(self) -> bytes | None:
            """The request body, or None after answering a body we will not read."""
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > max_body_bytes:
                message = f"request body over {max_body_bytes} bytes" if length > 0 else "bad Content-Length"
                body = json_tensor.make_json_from_status("INVALID_ARGUMENT", message).encode()
                self._send(HTTPStatus.BAD_REQUEST, body)
                return None
            data = self.rfile.read(length)
            self.body_read = True
            return data

        def _serve(self, method: str) -> None:
            self.body_read = False
            if not in_flight.enter():
                self.close_connection = True
                body = json_tensor.make_json_from_status("UNAVAILABLE", "Server is shutting down").encode()
                return self._send(HTTPStatus.SERVICE_UNAVAILABLE, body)
            try:
                self._route(method)
            except Exception as exc:  # never drop the connection without an answer
                log.exception("REST %s %s", method, self.path)
                body = json_tensor.make_json_from_status("INTERNAL", f"{type(exc).__name__}: {exc}").encode()
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, body)
            finally:
                in_flight.leave()

        def _route(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            if metrics_path is not None and path == metrics_path:  # a registered URI handler: any method
                return self._send(HTTPStatus.OK, metrics.render().encode(), METRICS_CONTENT_TYPE)
            if not _HANDLED_PATH.fullmatch(path):
                if self._read_body() is not None:  # None: already answered (a body we will not read)
                    self._send(HTTPStatus.NOT_FOUND, NOT_FOUND_PAGE, "text/html")
                return
            started = time.perf_counter()
            body = self._read_body()
            if body is None:
                return
            if method == "OPTIONS":  # CORS preflight: an empty answer, 400 without an http(s) Origin
                ok = bool(_CORS_ORIGIN.search(self.headers.get("Origin", "")))
                answer = RestAnswer(grpc.StatusCode.OK if ok else grpc.StatusCode.FAILED_PRECONDITION, "")
            else:
                answer = handler.process(method, path, body)
            self._send(http_code(answer.status), answer.body.encode())
            latency = int((time.perf_counter() - started) * 1e6)
            metrics.record_request(answer.model_name, answer.method, "REST", answer.status.name, latency)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._serve("GET")

        def do_POST(self):  # noqa: N802
            self._serve("POST")

        def do_PUT(self):  # noqa: N802
            self._serve("PUT")

        def do_DELETE(self):  # noqa: N802
            self._serve("DELETE")

        def do_PATCH(self):  # noqa: N802
            self._serve("PATCH")

        def do_OPTIONS(self):  # noqa: N802
            self._serve("OPTIONS")

    return Handler


class RestServer:
    """TF Serving's REST API on host:port (port 0 picks a free one), in a background thread; with metrics_path,
    the Prometheus page too."""

    def __init__(
        self,
        model_server: ModelServer,
        host: str = "127.0.0.1",
        port: int = 8501,
        max_body_bytes=64 << 20,
        metrics_path: str | None = None,
    ):
        self._in_flight = _InFlight()
        handler = _http_handler(RestHandler(model_server), max_body_bytes, self._in_flight, metrics_path)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        # stop() waits for requests being answered (a graceful drain), not for idle keep-alive connections.
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="rest")
        self._thread.start()

    def stop(self, grace: float = 30.0) -> None:
        self._in_flight.drain(grace)
        self.httpd.shutdown()
        self.httpd.server_close()
