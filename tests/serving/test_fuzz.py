"""Fuzz: thousands of random and mutated requests against one `petpipe serve` subprocess, over gRPC (raw bytes, so
malformed protos can be sent) and REST (plain HTTP). Every answer must be one TF Serving could give, the server must
stay up, and afterwards answer a valid request exactly as it did before. Seeded: a failure names the seed, and the
same seed replays the same requests. The requests are made in fuzz_requests.py (gRPC) and fuzz_rest_requests.py
(REST)."""

from __future__ import annotations

import collections
import http.client
import json
import random
import re
import shutil
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.rest import NOT_FOUND_PAGE
from tests.image_factory import jpeg_bytes
from tests.serving.fuzz_requests import METHODS, Corpus, _grpc_cases, _negative_dim, _parse, _reload
from tests.serving.fuzz_rest_requests import _rest_case
from tests.serving.server_process import serving_process

pytestmark = pytest.mark.slow  # trains, runs Beam jobs or subprocess servers: left out of make test-fast

SEED = 20240607
GRPC_REQUESTS = 2000
REST_REQUESTS = 500
TIMEOUT = 20.0  # per call; no call should come near it, one that does is a hang

S = grpc.StatusCode
ANSWERS = {S.OK, S.INVALID_ARGUMENT, S.NOT_FOUND, S.FAILED_PRECONDITION, S.UNIMPLEMENTED}
REST_CODES = {200, 400, 404, 501, 503}


@dataclass
class Fuzzed:
    server: object  # tests.serving.server_process.ServerProcess
    base_path: str
    baseline: np.ndarray  # breed_probs of _known_request() before any fuzzing


@dataclass
class Findings:
    """Outcomes per code, and problems grouped by kind with a count and the first example of each."""

    outcomes: collections.Counter = field(default_factory=collections.Counter)
    problems: dict = field(default_factory=dict)

    def add(self, kind: str, example: str) -> None:
        kind = re.sub(r"-?\d{4,}", "<n>", kind)  # one kind for "out of range: 123456…" whatever the number
        count, first = self.problems.get(kind, (0, example))
        self.problems[kind] = (count + 1, first)

    def report(self, seed: int) -> str:
        lines = [f"{len(self.problems)} kinds of wrong answer (seed {seed}):"]
        lines += [f"  {count}x {kind}\n      e.g. {first}" for kind, (count, first) in self.problems.items()]
        return "\n".join(lines)


def _known_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "pets"
    images = [jpeg_bytes(seed, 32) for seed in (1, 2, 3)]
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


def _known_answer(server) -> tuple[int, np.ndarray]:
    with server.channel() as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_known_request(), timeout=30)
    return response.model_spec.version.value, tf.make_ndarray(response.outputs["breed_probs"])


@pytest.fixture(scope="module")
def fuzzed(exported_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    base = root / "pets"
    shutil.copytree(exported_model[2], base / "1")
    with serving_process(["--model_base_path", str(base)], str(root)) as server:
        version, baseline = _known_answer(server)
        assert version == 1
        yield Fuzzed(server, str(base), baseline)


# --- gRPC ----------------------------------------------------------------------------------------------------
def _pets_served(server) -> bool:
    try:
        return server.version_states("pets").get(1, ("",))[0] == "AVAILABLE"
    except grpc.RpcError:
        return False


def test_grpc_answers_malformed_and_odd_requests_with_tf_serving_status_codes(fuzzed):
    rng, corpus, findings = random.Random(SEED), Corpus(random.Random(SEED)), Findings()
    server, unparseable = fuzzed.server, 0
    restore = _reload(fuzzed.base_path, ("pets", fuzzed.base_path, None))  # the config it started with
    with server.channel() as channel:
        # No (de)serializers: the bytes go out as they are, and answers come back as bytes.
        calls = {name: channel.unary_unary(path) for name, (path, _, _) in METHODS.items()}
        for name, data, what in _grpc_cases(rng, corpus, fuzzed.base_path, GRPC_REQUESTS):
            path, request_class, response_class = METHODS.get(name, (name, None, None))
            request = _parse(request_class, data) if request_class else None
            example = f"{name} ({what}), {len(data)} bytes: {data[:300].hex()}{'…' if len(data) > 300 else ''}"
            answer, code, details = None, S.OK, ""
            try:
                answer = (calls.get(name) or channel.unary_unary(path))(data, timeout=TIMEOUT)
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
            findings.outcomes[code.name] += 1
            if request_class is None:
                allowed, kind = {S.UNIMPLEMENTED}, "an unknown method"
            elif request is None:
                unparseable += 1
                allowed, kind = {S.INTERNAL}, "an unparseable request"  # grpc's answer when it cannot deserialize
            else:
                allowed, kind = ANSWERS, "a parseable request"
            if code not in allowed:
                findings.add(f"{name}: {code.name} for {kind}: {details[:90]}", example)
            elif code == S.OK and _parse(response_class, answer) is None:
                findings.add(f"{name}: OK with an answer that is not a {response_class.__name__}", example)
            elif code == S.OK and name == "Predict" and _negative_dim(request):
                # TF Serving parses inputs with Tensor::FromProto, which refuses negative dimensions.
                findings.add("Predict: OK for an input declaring a negative dimension (TF Serving refuses it)", example)
            if server.process.poll() is not None:
                pytest.fail(f"server died after {example}\n{findings.report(SEED)}\n{server.log()[-3000:]}")
            if name == "HandleReloadConfigRequest" and not _pets_served(server):
                findings.add(f"{name} ({what}) answered {code.name} and left pets without a served version", example)
                calls[name](restore.SerializeToString(), timeout=60)  # serve it again, so the run goes on
                server.wait_state("pets", 1, "AVAILABLE")
    total = findings.outcomes.total()
    print(
        f"\ngrpc fuzz (seed {SEED}): {total} requests ({unparseable} unparseable), "
        f"outcomes {dict(findings.outcomes.most_common())}, {len(findings.problems)} problems"
    )
    assert total >= GRPC_REQUESTS * 0.95
    assert not findings.problems, findings.report(SEED)


# --- REST ----------------------------------------------------------------------------------------------------
def _rest_problem(path: str, status: int, raw: bytes) -> str:
    """What is wrong with a REST answer ("" if nothing): TF Serving answers JSON objects, {"error": ...} on errors,
    for paths under /v1/; its HTTP server answers any other path with libevent's 404 page."""
    if not path.split("?")[0].lower().startswith("/v1/"):
        return "" if (status, raw) == (404, NOT_FOUND_PAGE) else f"HTTP {status} outside /v1/: {raw[:60]!r}"
    try:
        payload = json.loads(raw)
    except ValueError:
        return f"HTTP {status} with a body that is not JSON: {raw[:60]!r}"
    if not isinstance(payload, dict):
        return f"HTTP {status} with a JSON {type(payload).__name__}, not an object"
    if status not in REST_CODES:
        return f"HTTP {status}: {str(payload.get('error'))[:70]}"
    if status != 200 and not isinstance(payload.get("error"), str):
        return f"HTTP {status} without an error message"
    if status == 200 and not {"predictions", "outputs", "results", "model_version_status", "metadata"} & set(payload):
        return f"HTTP 200 with unexpected keys {sorted(payload)[:5]}"
    return ""


def test_rest_answers_malformed_and_odd_requests_with_json_and_tf_serving_codes(fuzzed):
    rng, corpus, findings = random.Random(SEED + 1), Corpus(random.Random(SEED + 1)), Findings()
    port = fuzzed.server.rest_port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)  # kept alive across requests
    previous = "none"
    for _ in range(REST_REQUESTS):
        method, path, body = _rest_case(rng, corpus)
        shown = re.sub(rb'"[A-Za-z0-9+/=]{40,}"', b'"<base64>"', body)[:400] if body else body
        example = f"{method} {path} {shown!r}; the request before on this connection: {previous}"
        previous = f"{method} {path} {shown[:120] if shown else shown!r}"
        try:
            connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            status, raw = response.status, response.read()
        except (http.client.HTTPException, OSError) as exc:
            findings.outcomes["dropped"] += 1
            findings.add(f"connection dropped: {type(exc).__name__}: {exc}", example)
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            continue
        findings.outcomes[status] += 1
        problem = _rest_problem(path, status, raw)
        if problem:
            findings.add(problem, f"{example}; answer {raw[:150]!r}")
        if fuzzed.server.process.poll() is not None:
            pytest.fail(f"server died after {example}\n{findings.report(SEED + 1)}")
    connection.close()
    print(
        f"\nrest fuzz (seed {SEED + 1}): {findings.outcomes.total()} requests, outcomes "
        f"{dict(findings.outcomes.most_common())}, {len(findings.problems)} problems"
    )
    assert findings.outcomes.total() == REST_REQUESTS
    assert not findings.problems, findings.report(SEED + 1)


# --- afterwards ----------------------------------------------------------------------------------------------
def test_after_fuzzing_the_server_is_up_and_answers_exactly_as_before(fuzzed):
    assert fuzzed.server.process.poll() is None, fuzzed.server.log()[-3000:]
    version, breed_probs = _known_answer(fuzzed.server)
    assert version == 1
    np.testing.assert_array_equal(breed_probs, fuzzed.baseline)
