"""The requests tests/serving/test_fuzz.py sends over gRPC: images and image-like bytes, good and bad (Corpus),
well-formed requests of every method with random, often wrong, values, byte-level mutations of them, and reload
requests that may not change what is served. All drawn from a seeded random.Random: a seed replays the same requests."""

from __future__ import annotations

import base64
import random

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
    regression_pb2,
)

from schemas import IMAGE_ENCODED
from tests.image_factory import DAMAGED_JPEG, encode, jpeg_bytes, png_header_only, quadrants

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
