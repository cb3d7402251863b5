"""A TF Serving client for the pets model: gRPC through the official tensorflow-serving-api stubs, or REST.

Works against `petpipe serve` and the real `tensorflow_model_server` alike. A target is HOST:PORT for gRPC
(optionally TLS / mutual TLS with TlsFiles) or http(s)://HOST:PORT for the REST API. Every call has a deadline and
is retried with backoff while the server is UNAVAILABLE (starting, restarting, draining) — never on other errors,
which are answers.

Needs only grpc, the tensorflow-serving-api protos and numpy (importing the protos still imports the tensorflow
package, but nothing here uses its Python API): `petpipe predict` and `petpipe status` load no server, model or
pipeline code (tests/serving/test_client_imports.py).
"""

from __future__ import annotations

import base64
import glob
import json
import math
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from common.errors import PetpipeError

# The answer code is shared with `petpipe infer` (components/bulk_inference.py); imported here under its old home's
# names, which callers (pipeline/serving_commands.py, pipeline/stages/smoke.py) use.
from schemas.answers import IMAGE_SUFFIXES as IMAGE_SUFFIXES
from schemas.answers import PetAnswer as PetAnswer
from schemas.answers import answer_dict as answer_dict
from schemas.answers import answers_from_outputs as answers_from_outputs
from schemas.answers import format_answer as format_answer
from serving.grpc_options import message_size_options

RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)  # seconds between attempts while the server is UNAVAILABLE


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS channel: the CA that signed the server's certificate and, for mutual TLS, this
    client's certificate and key."""

    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path):
            if path is None:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise PetpipeError(f"{path}: cannot read: {exc.strerror}") from None

        if bool(self.client_cert) != bool(self.client_key):
            raise PetpipeError("mutual TLS needs both --client-cert and --client-key")
        return grpc.ssl_channel_credentials(read(self.ca_cert), read(self.client_key), read(self.client_cert))


def is_rest(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def open_channel(target: str, tls: TlsFiles | None = None) -> grpc.Channel:
    options = message_size_options()
    if tls is not None:
        return grpc.secure_channel(target, tls.credentials(), options=options)
    return grpc.insecure_channel(target, options=options)


def predict_images(
    target: str,
    images: list[bytes],
    model_name: str = "pets",
    signature_name: str = "serving_default",
    timeout: float = 30.0,
    species_names: list[str] | None = None,
    tls: TlsFiles | None = None,
) -> list[PetAnswer]:
    """One Predict call for a batch of encoded images → one PetAnswer per image, in order."""
    if is_rest(target):
        body = {"signature_name": signature_name, "inputs": {"image_bytes": [_b64(image) for image in images]}}
        url = f"{target.rstrip('/')}/v1/models/{model_name}:predict"
        outputs = rest_call(url, body, timeout, f"{url}")["outputs"]
        return answers_from_outputs({name: np.asarray(value) for name, value in outputs.items()}, None, species_names)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    tensor = request.inputs["image_bytes"]  # what tf.make_tensor_proto(images, tf.string) gives
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add(size=len(images))
    tensor.string_val.extend(images)
    with open_channel(target, tls) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = call_with_retries(stub.Predict, request, timeout, f"{target}: Predict")
    return parse_response(response, species_names)


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def _retrying(call, timeout: float, what: str, unavailable, describe, delays=RETRY_DELAYS):
    """Run call(remaining_seconds); while unavailable(exc), retry with backoff (the last delay repeats) until the
    deadline; PetpipeError naming `what` and describe(exc) otherwise."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        try:
            return call(max(0.1, deadline - time.monotonic()))
        except Exception as exc:
            description = describe(exc)  # once: an HTTP error's body can be read only once
            if description is None:
                raise
            delay = delays[min(attempt, len(delays) - 1)]
            if not unavailable(exc) or time.monotonic() + delay >= deadline:
                raise PetpipeError(f"{what} failed: {description}") from None
            time.sleep(delay)
            attempt += 1


def call_with_retries(method, request, timeout: float, what: str, delays=RETRY_DELAYS):
    """A unary gRPC call with a deadline, retried while the server is UNAVAILABLE."""
    return _retrying(
        lambda remaining: method(request, timeout=remaining),
        timeout,
        what,
        unavailable=lambda exc: exc.code() == grpc.StatusCode.UNAVAILABLE,
        describe=lambda exc: f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.RpcError) else None,
        delays=delays,
    )


def rest_call(url: str, body: dict | None, timeout: float, what: str, delays=RETRY_DELAYS) -> dict:
    """GET (body None) or POST JSON to TF Serving's REST API, retried on 503 and refused connections."""

    def call(remaining):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=remaining) as response:
            return json.loads(response.read())

    def describe(exc):
        if isinstance(exc, urllib.error.HTTPError):
            try:
                message = json.loads(exc.read()).get("error", "")
            except (ValueError, AttributeError):
                message = exc.reason
            return f"HTTP {exc.code}: {message}"
        if isinstance(exc, (urllib.error.URLError, OSError)):
            return f"UNAVAILABLE: {getattr(exc, 'reason', exc)}"
        return None

    def unavailable(exc):
        return getattr(exc, "code", None) == 503 or not isinstance(exc, urllib.error.HTTPError)

    return _retrying(call, timeout, what, unavailable, describe, delays)


def model_status(
    target: str, model_name: str = "pets", timeout: float = 10.0, tls: TlsFiles | None = None
) -> list[dict]:
    """GetModelStatus (or REST GET /v1/models/NAME) → [{"version", "state", "error"}], newest first."""
    if is_rest(target):
        url = f"{target.rstrip('/')}/v1/models/{model_name}"
        statuses = rest_call(url, None, timeout, url)["model_version_status"]
        return [
            {"version": int(s["version"]), "state": s["state"], "error": s.get("status", {}).get("error_message", "")}
            for s in statuses
        ]
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model_name
    with open_channel(target, tls) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        response = call_with_retries(stub.GetModelStatus, request, timeout, f"{target}: GetModelStatus")
    state_name = get_model_status_pb2.ModelVersionStatus.State.Name
    return [
        {"version": s.version, "state": state_name(s.state), "error": s.status.error_message}
        for s in response.model_version_status
    ]


def expand_image_paths(arguments: list[str]) -> list[str]:
    """Files, directories (their image files, sorted) and globs → image paths; PetpipeError for what matches
    nothing."""
    paths = []
    for argument in arguments:
        if os.path.isdir(argument):
            found = sorted(
                os.path.join(argument, n) for n in os.listdir(argument) if n.lower().endswith(IMAGE_SUFFIXES)
            )
        elif any(c in argument for c in "*?["):
            found = sorted(glob.glob(argument, recursive=True))
        else:
            found = [argument]
        if not found:
            raise PetpipeError(f"{argument}: no image files there")
        paths.extend(found)
    return paths


def parse_response(response: predict_pb2.PredictResponse, species_names: list[str] | None = None) -> list[PetAnswer]:
    outputs = {name: ndarray(proto) for name, proto in response.outputs.items()}
    return answers_from_outputs(outputs, response.model_spec.version.value, species_names)


# dtype → (typed field, numpy dtype) of the numeric outputs a client may read.
_NUMERIC_FIELDS = {
    types_pb2.DT_FLOAT: ("float_val", np.float32),
    types_pb2.DT_DOUBLE: ("double_val", np.float64),
    types_pb2.DT_INT32: ("int_val", np.int32),
    types_pb2.DT_INT64: ("int64_val", np.int64),
    types_pb2.DT_BOOL: ("bool_val", np.bool_),
}


def ndarray(proto) -> np.ndarray:
    """A response TensorProto as numpy, as tf.make_ndarray reads it: strings as an object array of bytes; values
    from tensor_content or the typed field (TF Serving writes the latter), a typed field shorter than the shape
    padded with its last value."""
    shape = [dim.size for dim in proto.tensor_shape.dim]
    count = math.prod(shape)
    if proto.dtype == types_pb2.DT_STRING:
        values = list(proto.string_val)
        values += [values[-1] if values else ""] * (count - len(values))  # "", not b"": as TF pads
        return np.array(values, dtype=object).reshape(shape)
    if proto.dtype not in _NUMERIC_FIELDS:
        name = types_pb2.DataType.Name(proto.dtype) if proto.dtype in types_pb2.DataType.values() else proto.dtype
        raise PetpipeError(f"the server answered a tensor of {name}, which this client does not read")
    field, dtype = _NUMERIC_FIELDS[proto.dtype]
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape).copy()
    values = np.array(getattr(proto, field), dtype=dtype)
    if values.size == 0:
        return np.zeros(shape, dtype)
    return np.pad(values, (0, count - values.size), "edge").reshape(shape)
