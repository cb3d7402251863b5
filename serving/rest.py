"""TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest) over the same ModelServer core as gRPC.

  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]             → model status
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata    → signature defs
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict     → {"instances": [...]} (row) or {"inputs": ...}
                                                                   (columnar); bytes as {"b64": "..."}
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:classify    → {"examples": [{feature: value}], "context": {}}
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:regress       answered {"result": ...}

Row requests answer {"predictions": [...]} (one entry per instance; a dict when there are several outputs),
columnar ones {"outputs": ...}. Example features are read as TF Serving does: integers → int64_list, other numbers
→ float_list, strings and {"b64"} → bytes_list. Errors answer {"error": "..."} with the HTTP code of the gRPC
status, as TF Serving does. Pure core: request_from_json, response_to_json. Thin shell: a ThreadingHTTPServer.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    predict_pb2,
    regression_pb2,
)

from serving.core import ModelServer, ServingError, log, model_spec

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:predict|:classify|:regress)?$"
)
HTTP_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
}


def _decode_value(value):
    """JSON value → numpy-ready value: {"b64": ...} → bytes, strings → UTF-8 bytes, lists recursively."""
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"expected {{'b64': ...}}, got keys {sorted(value)}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "'b64' value is not valid base64") from None
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def _tensor(name: str, value, dtype) -> tf.Tensor:
    try:
        array = np.array(_decode_value(value), dtype=object if dtype == tf.string else None)
        return tf.make_tensor_proto(array, dtype=dtype)
    except ServingError:
        raise
    except (ValueError, TypeError) as exc:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input '{name}': {exc}") from None


def request_from_json(body: dict, model_name: str, version: int | None, label: str | None, signature_defs):
    """A PredictRequest from TF Serving's REST JSON (row "instances" or columnar "inputs"); returns
    (request, row_format)."""
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, 'request must have exactly one of "instances" or "inputs"')
    request = predict_pb2.PredictRequest(model_spec=model_spec(model_name, version, label))
    signature_name = _signature_name(body)
    request.model_spec.signature_name = signature_name
    signature = signature_defs.get(signature_name)
    if signature is None:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.')
    dtypes = {name: tf.dtypes.as_dtype(info.dtype) for name, info in signature.inputs.items()}
    row = "instances" in body
    data = body["instances"] if row else body["inputs"]
    if row:
        if not isinstance(data, list) or not data:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, '"instances" must be a non-empty list')
        if all(isinstance(i, dict) and "b64" not in i for i in data):  # named inputs per instance
            columns = {name: [instance.get(name) for instance in data] for name in dtypes}
        elif len(dtypes) == 1:
            columns = {next(iter(dtypes)): data}
        else:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "instances must be objects naming each input")
    else:
        columns = data if isinstance(data, dict) else {next(iter(dtypes)): data}
    for name, value in columns.items():
        if name not in dtypes:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown input '{name}'; inputs: {sorted(dtypes)}")
        request.inputs[name].CopyFrom(_tensor(name, value, dtypes[name]))
    output_filter = body.get("output_filter", [])
    if not isinstance(output_filter, list) or not all(isinstance(o, str) for o in output_filter):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "'output_filter' must be a list of strings")
    request.output_filter.extend(output_filter)
    return request, row


def _signature_name(body: dict) -> str:
    name = body.get("signature_name", "")
    if not isinstance(name, str):  # TF Serving's message
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "'signature_name' key must be a string value.")
    return name or "serving_default"


def _json_value(value):
    array = (
        value
        if isinstance(value, np.ndarray)
        else np.asarray(value, dtype=object if isinstance(value, bytes) else None)
    )
    if array.dtype == object:
        return [_json_value(v) for v in array] if array.ndim else _bytes_to_json(array.item())
    return array.tolist()


def _bytes_to_json(value: bytes):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def response_to_json(response: predict_pb2.PredictResponse, row: bool) -> dict:
    outputs = {name: tf.make_ndarray(proto) for name, proto in sorted(response.outputs.items())}
    if not row:
        return {"outputs": {name: _json_value(array) for name, array in outputs.items()}}
    if len(outputs) == 1:
        return {"predictions": _json_value(next(iter(outputs.values())))}
    count = len(next(iter(outputs.values())))
    return {"predictions": [{name: _json_value(array[i]) for name, array in outputs.items()} for i in range(count)]}


def _feature(name: str, value) -> tf.train.Feature:
    values = value if isinstance(value, list) else [value]
    if all(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[_as_bytes(name, v) for v in values]))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if any(not -(2**63) <= v < 2**63 for v in values):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"feature '{name}': integer out of int64 range")
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"feature '{name}': mixed value types {values!r}")


def _as_bytes(name: str, value) -> bytes:
    decoded = _decode_value(value)
    if not isinstance(decoded, bytes):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"feature '{name}': unsupported value {value!r}")
    return decoded


def _example(features) -> tf.train.Example:
    if not isinstance(features, dict):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"an example must be a JSON object, got {features!r}")
    return tf.train.Example(
        features=tf.train.Features(feature={name: _feature(name, value) for name, value in features.items()})
    )


def examples_request_from_json(body, kind: str, name: str, version: int | None, label: str | None):
    """A ClassificationRequest or RegressionRequest from TF Serving's REST JSON ({"examples", "context"})."""
    if not isinstance(body, dict) or not isinstance(body.get("examples"), list):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, '"examples" must be a list of objects')
    message = classification_pb2.ClassificationRequest if kind == "classify" else regression_pb2.RegressionRequest
    request = message(model_spec=model_spec(name, version, label))
    request.model_spec.signature_name = _signature_name(body)
    examples = [_example(e) for e in body["examples"]]
    if "context" in body:
        request.input.CopyFrom(
            input_pb2.Input(
                example_list_with_context=input_pb2.ExampleListWithContext(
                    examples=examples, context=_example(body["context"])
                )
            )
        )
    else:
        request.input.example_list.examples.extend(examples)
    return request


def examples_response_to_json(response, kind: str) -> dict:
    """{"result": [[[label, score], ...], ...]} for classify, {"result": [value, ...]} for regress."""
    if kind == "classify":
        return {"result": [[[c.label, c.score] for c in item.classes] for item in response.result.classifications]}
    return {"result": [r.value for r in response.result.regressions]}


def _status_json(server: ModelServer, name: str, version: int | None, label: str | None) -> dict:
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_spec(name, version, label))
    return json_format.MessageToDict(server.get_model_status(request), preserving_proto_field_name=True)


def _metadata_json(server: ModelServer, name: str, version: int | None, label: str | None) -> dict:
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=model_spec(name, version, label))
    request.metadata_field.append("signature_def")
    response = server.get_model_metadata(request)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    return {
        "model_spec": json_format.MessageToDict(response.model_spec, preserving_proto_field_name=True),
        "metadata": {"signature_def": json_format.MessageToDict(signatures, preserving_proto_field_name=True)},
    }


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


def _handler(server: ModelServer, max_body_bytes: int, in_flight: _InFlight):
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

        def _send(self, code: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            if not self.body_read and self.headers.get("Content-Length", "0") not in ("", "0"):
                # An unread body must not be taken for the next request: answer, then close (this header also
                # sets close_connection).
                self.send_header("Connection", "close")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _route(self, method: str):
            match = _PATH.match(self.path.split("?", 1)[0])
            if not match:
                return self._send(HTTPStatus.NOT_FOUND, {"error": f"Malformed request: {method} {self.path}"})
            name, suffix, label = match["name"], match["suffix"], match["label"]
            version = int(match["version"]) if match["version"] else None
            if version is not None and version >= 2**63:
                return self._send(HTTPStatus.BAD_REQUEST, {"error": f"version {version} is out of int64 range"})
            try:
                if method == "GET" and suffix is None:
                    return self._send(HTTPStatus.OK, _status_json(server, name, version, label))
                if method == "GET" and suffix == "/metadata":
                    return self._send(HTTPStatus.OK, _metadata_json(server, name, version, label))
                if method == "POST" and suffix == ":predict":
                    return self._send(HTTPStatus.OK, self._predict(name, version, label))
                if method == "POST" and suffix in (":classify", ":regress"):
                    kind = suffix[1:]
                    request = examples_request_from_json(self._body(), kind, name, version, label)
                    response = (server.classify if kind == "classify" else server.regress)(request)
                    return self._send(HTTPStatus.OK, examples_response_to_json(response, kind))
                return self._send(HTTPStatus.NOT_FOUND, {"error": f"Malformed request: {method} {self.path}"})
            except ServingError as exc:
                return self._send(HTTP_CODES.get(exc.code, HTTPStatus.INTERNAL_SERVER_ERROR), {"error": exc.message})
            except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # JSON of the wrong shape
                return self._send(HTTPStatus.BAD_REQUEST, {"error": f"malformed request: {type(exc).__name__}: {exc}"})
            except Exception as exc:  # never drop the connection without an answer
                log.exception("REST %s %s", method, self.path)
                return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

        def _body(self):
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Content-Length is not a number") from None
            if length > max_body_bytes:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"request body over {max_body_bytes} bytes")
            data = self.rfile.read(length)
            self.body_read = True
            try:
                return json.loads(data or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {exc}") from None

        def _predict(self, name: str, version: int | None, label: str | None) -> dict:
            body = self._body()
            servable = server.servable_for(name, version, label)
            request, row = request_from_json(body, name, version, label, servable.signature_defs)
            return response_to_json(server.predict(request), row)

        def _serve(self, method: str) -> None:
            self.body_read = False
            if not in_flight.enter():
                self.close_connection = True
                return self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "Server is shutting down"})
            try:
                self._route(method)
            finally:
                in_flight.leave()

        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._serve("GET")

        def do_POST(self):  # noqa: N802
            self._serve("POST")

        def do_PUT(self):  # noqa: N802 — other methods get TF Serving's JSON 404, not http.server's HTML 501
            self._serve("PUT")

        do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    return Handler


class RestServer:
    """TF Serving's REST API on host:port (port 0 picks a free one), in a background thread."""

    def __init__(self, model_server: ModelServer, host: str = "127.0.0.1", port: int = 8501, max_body_bytes=64 << 20):
        self._in_flight = _InFlight()
        self.httpd = ThreadingHTTPServer((host, port), _handler(model_server, max_body_bytes, self._in_flight))
        # stop() waits for requests being answered (a graceful drain), not for idle keep-alive connections.
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="rest")
        self._thread.start()

    def stop(self, grace: float = 30.0) -> None:
        self._in_flight.drain(grace)
        self.httpd.shutdown()
        self.httpd.server_close()
