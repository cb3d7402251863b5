"""Fuzz: thousands of random and mutated requests against one `petpipe serve` subprocess, over gRPC (raw bytes, so
malformed protos can be sent) and REST (plain HTTP). Every answer must be one TF Serving could give, the server must
stay up, and afterwards answer a valid request exactly as it did before. Seeded: a failure names the seed, and the
same seed replays the same requests."""

from __future__ import annotations

import base64
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
from google.protobuf.message import DecodeError
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from schemas import IMAGE_ENCODED
from serving.rest import NOT_FOUND_PAGE
from tests.image_factory import DAMAGED_JPEG, encode, jpeg_bytes, png_header_only, quadrants
from tests.serving.server_process import serving_process

pytestmark = pytest.mark.slow  # trains, runs Beam jobs or subprocess servers: left out of make test-fast

SEED = 20240607
GRPC_REQUESTS = 2000
REST_REQUESTS = 500
TIMEOUT = 20.0  # per call; no call should come near it, one that does is a hang

S = grpc.StatusCode
ANSWERS = {S.OK, S.INVALID_ARGUMENT, S.NOT_FOUND, S.FAILED_PRECONDITION, S.UNIMPLEMENTED}
REST_CODES = {200, 400, 404, 501, 503}
PREDICTION, MODEL = "/tensorflow.serving.PredictionService/", "/tensorflow.serving.ModelService/"
METHODS = {  # name → (path, request class, response class)
    "Predict": (PREDICTION + "Predict", predict_pb2.PredictRequest, predict_pb2.PredictResponse),
    "GetModelMetadata": (
        PREDICTION + "GetModelMetadata",
        get_model_metadata_pb2.GetModelMetadataRequest,
        get_model_metadata_pb2.GetModelMetadataResponse,
    ),
    "Classify": (
        PREDICTION + "Classify",
        classification_pb2.ClassificationRequest,
        classification_pb2.ClassificationResponse,
    ),
    "Regress": (PREDICTION + "Regress", regression_pb2.RegressionRequest, regression_pb2.RegressionResponse),
    "MultiInference": (
        PREDICTION + "MultiInference",
        inference_pb2.MultiInferenceRequest,
        inference_pb2.MultiInferenceResponse,
    ),
    "GetModelStatus": (
        MODEL + "GetModelStatus",
        get_model_status_pb2.GetModelStatusRequest,
        get_model_status_pb2.GetModelStatusResponse,
    ),
    "HandleReloadConfigRequest": (
        MODEL + "HandleReloadConfigRequest",
        model_management_pb2.ReloadConfigRequest,
        model_management_pb2.ReloadConfigResponse,
    ),
}
UNKNOWN_METHODS = [PREDICTION + "Explode", "/tensorflow.serving.SessionService/SessionRun", "/x/y"]
SIGNATURES = ["", "serving_default", "serving_default", "predict_examples", "nope", "__saved_model_init_op"]
OUTPUTS = ["breed", "breed_probs", "species", "species_probs", "top_k_breeds", "image_error", "colour", ""]
ODD_SHAPES = [[], [1, 1], [-1], [-5], [0], [2, 2], [3, -1], [10**5], [10**12], [2**62], [2**40, 2**40], [2**63 - 1]]
CLASSIFY, REGRESS = "tensorflow/serving/classify", "tensorflow/serving/regress"


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


# --- what requests are made of -------------------------------------------------------------------------------
class Corpus:
    """Encoded images and image-like bytes, good and bad, that requests carry."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.jpegs = [jpeg_bytes(seed, size) for seed, size in enumerate([8, 12, 16, 24] * 2)]
        small = quadrants(16, 8)
        self.others = [encode(small, fmt) for fmt in ("PNG", "GIF", "BMP")]

    def image(self) -> bytes:
        rng = self.rng
        jpeg = rng.choice(self.jpegs)
        roll = rng.randrange(12)
        if roll < 5:
            return jpeg
        if roll == 5:
            return rng.choice(self.others)
        if roll == 6:
            return jpeg[: rng.randrange(len(jpeg))]  # truncated
        if roll == 7:  # damaged between intact start and end markers: the decoder, not the envelope, refuses it
            middle = bytearray(jpeg[3:-2])
            for _ in range(rng.randint(1, 20)):
                middle[rng.randrange(len(middle))] ^= 1 << rng.randrange(8)
            return jpeg[:3] + bytes(middle) + jpeg[-2:]
        if roll == 8:
            return rng.randbytes(rng.randint(0, 64))
        if roll == 9:
            return rng.choice([b"", DAMAGED_JPEG])
        if roll == 10:
            return png_header_only(rng.choice([1, 100000, 2**31 - 1]), rng.choice([1, 100000]))
        return _example(rng, self).SerializeToString(deterministic=True)  # what the predict_examples signature reads

    def b64(self) -> dict:
        return {"b64": base64.b64encode(self.image()).decode()}


def _example(rng: random.Random, corpus: Corpus) -> tf.train.Example:
    example = tf.train.Example()
    for _ in range(rng.randint(0, 3)):
        feature = example.features.feature[rng.choice([IMAGE_ENCODED, IMAGE_ENCODED, "x", "inputs", "ü"])]
        kind = rng.randrange(3)
        if kind == 0:
            feature.bytes_list.value.extend(corpus.jpegs[:1] if rng.random() < 0.5 else [rng.randbytes(8)])
        elif kind == 1:
            feature.float_list.value.extend(rng.choice([[1.5], [float("nan"), float("inf")], []]))
        else:
            feature.int64_list.value.extend(rng.choice([[1], [2**63 - 1, -(2**63)], []]))
    return example


def _spec(rng: random.Random, spec, signatures=SIGNATURES) -> None:
    """A ModelSpec: mostly the served model's, sometimes an unknown name, a version, a label, odd signatures."""
    spec.name = rng.choice(["pets"] * 10 + ["", "cats", "Pets", "pets ", "pëts", "p" * 300, "../pets", "pets\x00"])
    roll = rng.random()
    if roll < 0.15:
        spec.version.value = rng.choice([1, 1, 0, 2, -1, 99, 2**63 - 1, -(2**63)])
    elif roll < 0.25:
        spec.version_label = rng.choice(["stable", "canary", "", "1", "x" * 100])
    spec.signature_name = rng.choice(signatures)


def _tensor(rng: random.Random, corpus: Corpus) -> tensor_pb2.TensorProto:
    """An image_bytes-like TensorProto; now and then with an odd dtype, shape or content."""
    values = [corpus.image() for _ in range(rng.randint(0, 4))]
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=values)
    roll = rng.random()
    dims = [len(values)]
    if roll < 0.25:
        dims = rng.choice(ODD_SHAPES)
    elif roll < 0.3:
        dims = rng.choice([[], [len(values)]])
        proto.tensor_shape.unknown_rank = True
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    roll = rng.random()
    if roll < 0.08:
        proto.dtype = rng.choice([types_pb2.DT_FLOAT, types_pb2.DT_INT64, types_pb2.DT_BOOL, 0, 999, -3])
        proto.float_val.extend([1.0] * len(values))
    elif roll < 0.12:
        proto.tensor_content = rng.randbytes(rng.randint(0, 64))
    return proto


def _predict(rng: random.Random, corpus: Corpus) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    _spec(rng, request.model_spec)
    usual = ["examples"] if request.model_spec.signature_name == "predict_examples" else ["image_bytes"]
    odd = [[], ["image_bytes", "examples"], ["images"], ["image_bytes", "x"], [rng.randbytes(4).hex()]]
    for key in rng.choice([usual] * 12 + odd):
        request.inputs[key].CopyFrom(_tensor(rng, corpus))
    if rng.random() < 0.25:
        request.output_filter.extend(rng.choices(OUTPUTS, k=rng.randint(1, 3)))
    return request


def _valid_predict(rng: random.Random, corpus: Corpus) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "pets"
    if rng.random() < 0.3:
        request.model_spec.version.value = 1
    request.model_spec.signature_name = rng.choice(["", "serving_default"])
    images = rng.sample(corpus.jpegs, rng.randint(1, 2))
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    if rng.random() < 0.3:
        request.output_filter.extend(["breed", "species"])
    return request


def _examples_input(rng: random.Random, corpus: Corpus, input_proto) -> None:
    roll = rng.randrange(3)
    if roll == 0:
        input_proto.example_list.examples.extend(_example(rng, corpus) for _ in range(rng.randint(0, 3)))
    elif roll == 1:
        with_context = input_proto.example_list_with_context
        with_context.examples.extend(_example(rng, corpus) for _ in range(rng.randint(0, 3)))
        with_context.context.CopyFrom(_example(rng, corpus))


def _structured(rng: random.Random, corpus: Corpus, name: str):
    """A well-formed request of method `name` with random, often wrong, values."""
    if name == "Predict":
        return _predict(rng, corpus) if rng.random() < 0.8 else _valid_predict(rng, corpus)
    if name == "GetModelMetadata":
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        _spec(rng, request.model_spec)
        fields = rng.choice([["signature_def"]] * 3 + [[], ["junk"], ["signature_def", "signature_def"], [""]])
        request.metadata_field.extend(fields)
        return request
    if name in ("Classify", "Regress"):
        message = classification_pb2.ClassificationRequest if name == "Classify" else regression_pb2.RegressionRequest
        request = message()
        _spec(rng, request.model_spec)
        _examples_input(rng, corpus, request.input)
        return request
    if name == "MultiInference":
        request = inference_pb2.MultiInferenceRequest()
        for _ in range(rng.randint(0, 3)):
            task = request.tasks.add()
            _spec(rng, task.model_spec)
            task.method_name = rng.choice([CLASSIFY, REGRESS, "tensorflow/serving/predict", "", "x"])
        _examples_input(rng, corpus, request.input)
        return request
    request = get_model_status_pb2.GetModelStatusRequest()
    _spec(rng, request.model_spec)
    return request


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """1–3 byte-level mutations: bit flips, truncation, insertion, deletion, duplication, overwrite, appending."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        position = rng.randrange(len(data) + 1)
        operation = rng.randrange(7)
        if operation == 0 and data:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif operation == 1:
            del data[position:]
        elif operation == 2:
            data[position:position] = rng.randbytes(rng.randint(1, 16))
        elif operation == 3:
            del data[position : position + rng.randint(1, 16)]
        elif operation == 4:
            data[position:position] = data[position : position + rng.randint(1, 32)]
        elif operation == 5:
            chunk = rng.randbytes(rng.randint(1, 8))
            data[position : position + len(chunk)] = chunk
        else:
            data += rng.randbytes(rng.randint(1, 32))
    return bytes(data)


def _parse(message_class, data: bytes):
    try:
        return message_class.FromString(data)
    except (DecodeError, RecursionError):
        return None


def _negative_dim(request: predict_pb2.PredictRequest) -> bool:
    return any(d.size < 0 for proto in request.inputs.values() for d in proto.tensor_shape.dim)


# --- gRPC ----------------------------------------------------------------------------------------------------
def _reload(base_path: str, *entries, custom: bool = False) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    if custom:
        request.config.custom_model_config.type_url = "type.googleapis.com/x"
    for name, path, policy in entries:
        entry = request.config.model_config_list.config.add(name=name, base_path=path, model_platform="tensorflow")
        if policy is not None:
            entry.model_version_policy.latest.num_versions = policy
    return request


def _reload_cases(base_path: str) -> list[tuple[str, model_management_pb2.ReloadConfigRequest]]:
    """Reload requests TF Serving refuses without touching what it serves, and one (the same config) that changes
    nothing; none may leave pets unserved."""
    pets = ("pets", base_path, None)
    return [
        ("config not set", _reload(base_path)),
        ("custom_model_config", _reload(base_path, custom=True)),
        ("relative base path", _reload(base_path, ("pets", "pets", None))),
        ("base path outside the allowed roots", _reload(base_path, ("pets", "/", None))),
        ("NUL in the base path", _reload(base_path, ("pets", base_path + "\x00x", None))),
        ("model name with a slash", _reload(base_path, ("../pets", base_path, None))),
        ("a model listed twice", _reload(base_path, pets, pets)),
        ("latest 0 versions", _reload(base_path, ("pets", base_path, 0))),
        ("the same config", _reload(base_path, pets)),
    ]


def _may_change_models(data: bytes) -> bool:
    """A reload request the server may apply (legitimately replacing what it serves, which would spoil the rest of
    the run): a model_config_list that is empty or whose base paths are all absolute or remote."""
    request = _parse(model_management_pb2.ReloadConfigRequest, data)
    if request is None or request.config.WhichOneof("config") != "model_config_list":
        return False
    entries = request.config.model_config_list.config
    return not entries or all(e.base_path.startswith("/") or "://" in e.base_path for e in entries)


def _grpc_cases(rng: random.Random, corpus: Corpus, base_path: str, count: int):
    """(method name or unknown path, request bytes, what it is) × count, reload requests sprinkled in."""
    reloads = _reload_cases(base_path)
    reload_at = dict(zip(sorted(rng.sample(range(count), 30)), range(30), strict=True))
    relative = _reload(base_path, ("pets", "relative/pets", None)).SerializeToString(deterministic=True)
    names = ["Predict"] * 14 + ["GetModelMetadata", "Classify", "Regress", "MultiInference", "GetModelStatus"]
    for index in range(count):
        if index in reload_at:
            number = reload_at[index]
            if number < len(reloads):
                description, request = reloads[number]
                yield "HandleReloadConfigRequest", request.SerializeToString(deterministic=True), description
                continue
            data = _mutate(rng, relative) if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 40))
            if not _may_change_models(data):
                yield "HandleReloadConfigRequest", data, "mutated or random bytes"
                continue
        if rng.random() < 0.005:
            yield rng.choice(UNKNOWN_METHODS), rng.randbytes(rng.randint(0, 20)), "unknown method"
            continue
        name = rng.choice(names)
        roll = rng.random()
        if roll < 0.5:
            yield name, _structured(rng, corpus, name).SerializeToString(deterministic=True), "well-formed, odd values"
        elif roll < 0.9:
            seed = _valid_predict(rng, corpus) if name == "Predict" and roll < 0.8 else _structured(rng, corpus, name)
            yield name, _mutate(rng, seed.SerializeToString(deterministic=True)), "mutated bytes"
        else:
            yield name, rng.randbytes(rng.randint(0, 200)), "random bytes"


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
def _junk(rng: random.Random, depth: int = 0):
    """A random JSON value, now and then huge, deep or of the wrong type."""
    kind = rng.randrange(10 if depth < 2 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 7, 2**63, -(2**63) - 1, 2**70, 10**30])
    if kind == 3:
        return rng.choice([1.5, -0.0, 1e308, 5e-324, 3.0])
    if kind == 4:
        return rng.choice(["", "x", "pets", "serving_default", "ünï", "\x00", "b64", "breed", "A" * 500])
    if kind == 5:
        return {"b64": rng.choice(["", "%%%", "AAAA", base64.b64encode(rng.randbytes(12)).decode(), 5, None])}
    if kind == 6:
        nested = rng.choice([3, 50, 500])  # deeper ones are sent as raw text (json.dumps would refuse them)
        value = rng.choice([[], 1, "x"])
        for _ in range(nested):
            value = [value]
        return value
    if kind in (7, 8):
        return [_junk(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["b64", "image_bytes", "instances", "inputs", "x", "signature_name", ""]
    return {rng.choice(keys): _junk(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _mutate_json(rng: random.Random, value):
    """Replace a random node with junk, or drop or add a key somewhere."""
    if isinstance(value, (dict, list)) and value and rng.random() < 0.7:
        key = rng.choice(list(value)) if isinstance(value, dict) else rng.randrange(len(value))
        roll = rng.random()
        if roll < 0.5:
            value[key] = _mutate_json(rng, value[key])
        elif roll < 0.75 and isinstance(value, dict):
            del value[key]
        elif isinstance(value, dict):
            value[rng.choice(["signature_name", "output_filter", "instances", "inputs", "context", "ü"])] = _junk(rng)
        else:
            value[key] = _junk(rng)
        return value
    return _junk(rng)


def _predict_json(rng: random.Random, corpus: Corpus) -> dict:
    images = [corpus.b64() if rng.random() < 0.8 else {"b64": base64.b64encode(rng.choice(corpus.jpegs)).decode()}]
    images += [corpus.b64() for _ in range(rng.randint(0, 2))]
    form = rng.randrange(4)
    if form == 0:
        body = {"instances": images}
    elif form == 1:
        body = {"instances": [{"image_bytes": image} for image in images]}
    elif form == 2:
        body = {"inputs": {"image_bytes": images}}
    else:
        body = {"inputs": images}
    if rng.random() < 0.3:
        body["signature_name"] = rng.choice(["serving_default", "predict_examples", "", "nope"])
    if rng.random() < 0.2:
        body["output_filter"] = rng.choices(OUTPUTS, k=rng.randint(1, 2))
    return body


def _examples_json(rng: random.Random, corpus: Corpus) -> dict:
    examples = [{rng.choice(["x", IMAGE_ENCODED, "y"]): _junk(rng, 1)} for _ in range(rng.randint(0, 3))]
    body = {"examples": examples}
    if rng.random() < 0.3:
        body["context"] = {"x": _junk(rng, 1)}
    if rng.random() < 0.2:
        body["signature_name"] = rng.choice(["serving_default", "regress_x", ""])
    return body


def _rest_case(rng: random.Random, corpus: Corpus) -> tuple[str, str, bytes | None]:
    prefix, name, selector = "/v1/models/", "pets", rng.choice(["", "/versions/1"])
    if rng.random() < 0.4:  # an odd path
        prefix = rng.choice(["/v1/models/"] * 5 + ["/v1/models", "/v2/models/", "/", "/v1/models//", "/V1/MODELS/"])
        name = rng.choice(["pets"] * 4 + ["cats", "", "p%20ets", "pets.", "%C3%BC", rng.randbytes(3).hex()])
        selector = rng.choice(
            ["", "/versions/1", "/versions/0", "/versions/99999999999999999999", "/versions/-1", "/versions/x"]
            + ["/labels/stable", "/labels/", "/versions/1/labels/x"]
        )
    suffix = rng.choice([":predict"] * 6 + [":classify", ":regress", "/metadata", "/metadata", "", "", ":x", "/"])
    path = prefix + name + selector + suffix + rng.choice([""] * 6 + ["?", "?x=1"])
    posts = suffix in (":predict", ":classify", ":regress")
    method = ("POST" if posts else "GET") if rng.random() < 0.9 else ("GET" if posts else "POST")
    if method == "GET":
        return method, path, None
    roll = rng.random()
    if roll < 0.05:
        return method, path, b""
    if roll < 0.12:
        return method, path, rng.randbytes(rng.randint(1, 64))
    if roll < 0.14:  # around Python's recursion limit (1000), where parsing or walking the JSON may give up
        depth = rng.choice([980, 995, 1010, 5000])
        return method, path, b'{"instances": ' + b"[" * depth + b"]" * depth + b"}"
    body = _predict_json(rng, corpus) if suffix != ":classify" and suffix != ":regress" else None
    body = body or _examples_json(rng, corpus)
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        body = _mutate_json(rng, body)
    data = json.dumps(body).encode()
    return method, path, _mutate(rng, data) if rng.random() < 0.15 else data


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
