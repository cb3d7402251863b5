"""A TF Serving gRPC client for the pets model, built on the official tensorflow-serving-api stubs.

Works against `petpipe serve` and the real `tensorflow_model_server` alike: open a channel, build a
PredictRequest, tf.make_tensor_proto, call with a deadline, read the named outputs.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import asdict, dataclass

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pipeline.errors import PetpipeError
from schemas import load_hierarchy
from serving.server import MAX_MESSAGE_BYTES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)  # seconds between attempts while the server is UNAVAILABLE


@dataclass(frozen=True)
class PetAnswer:
    species: str
    species_probs: dict[str, float]
    breed: str
    breed_prob: float
    top_k: list[tuple[str, float]]
    version: int
    error: str = ""  # why the server could not read this image ("" when it could); then the rest is meaningless


def predict_images(
    target: str,
    images: list[bytes],
    model_name: str = "pets",
    signature_name: str = "serving_default",
    timeout: float = 30.0,
    species_names: list[str] | None = None,
) -> list[PetAnswer]:
    """One Predict call for a batch of encoded images → one PetAnswer per image, in order."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)]))
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = call_with_retries(stub.Predict, request, timeout, f"{target}: Predict")
    return parse_response(response, species_names)


def call_with_retries(method, request, timeout: float, what: str, delays=RETRY_DELAYS):
    """Call a unary gRPC method with a deadline; retry with backoff while the server is UNAVAILABLE (starting,
    restarting), never on other errors — those are answers. PetpipeError with the status otherwise."""
    deadline = time.monotonic() + timeout
    for attempt in range(len(delays) + 1):
        try:
            return method(request, timeout=max(0.1, deadline - time.monotonic()))
        except grpc.RpcError as exc:
            retry = exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < len(delays)
            if not retry or time.monotonic() + delays[attempt] >= deadline:
                raise PetpipeError(f"{what} failed: {exc.code().name}: {exc.details()}") from None
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")


def model_status(target: str, model_name: str = "pets", timeout: float = 10.0) -> list[dict]:
    """GetModelStatus → [{"version", "state", "error"}], newest first."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model_name
    with grpc.insecure_channel(target) as channel:
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


def answer_dict(path: str, answer: PetAnswer) -> dict:
    return {"image": path, **asdict(answer), "top_k": [{"breed": b, "score": p} for b, p in answer.top_k]}


def parse_response(response: predict_pb2.PredictResponse, species_names: list[str] | None = None) -> list[PetAnswer]:
    outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
    species_probs = outputs["species_probs"]
    if species_names is None:
        # species_probs columns follow the hierarchy the model was trained with (shipped in schemas/).
        species_names = list(load_hierarchy().species)
    answers = []
    for i in range(len(species_probs)):
        top = [
            (b.decode(), float(s)) for b, s in zip(outputs["top_k_breeds"][i], outputs["top_k_scores"][i], strict=True)
        ]
        answers.append(
            PetAnswer(
                species=outputs["species"][i].decode(),
                species_probs={name: float(p) for name, p in zip(species_names, species_probs[i], strict=True)},
                breed=outputs["breed"][i].decode(),
                breed_prob=top[0][1],  # joint probability of the answered breed
                top_k=top,
                version=response.model_spec.version.value,
                error=outputs["image_error"][i].decode() if "image_error" in outputs else "",
            )
        )
    return answers


def format_answer(label: str, answer: PetAnswer) -> str:
    if answer.error:
        return f"{label}: error: {answer.error}"
    species = ", ".join(f"{name} {p:.3f}" for name, p in answer.species_probs.items())
    top = ", ".join(f"{name} {p:.3f}" for name, p in answer.top_k)
    breed = f"breed {answer.breed} {answer.breed_prob:.3f}"
    return f"{label}: {answer.species} ({species}); {breed}; top-{len(answer.top_k)}: {top}"
