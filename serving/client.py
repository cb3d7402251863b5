"""A TF Serving gRPC client for the pets model, built on the official tensorflow-serving-api stubs.

Works against `petpipe serve` and the real `tensorflow_model_server` alike: open a channel, build a
PredictRequest, tf.make_tensor_proto, call with a deadline, read the named outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pipeline.errors import PetpipeError
from schemas import load_hierarchy

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class PetAnswer:
    species: str
    species_probs: dict[str, float]
    breed: str
    breed_prob: float
    top_k: list[tuple[str, float]]
    version: int


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
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise PetpipeError(f"{target}: Predict failed: {exc.code().name}: {exc.details()}") from None
    return parse_response(response, species_names)


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
            )
        )
    return answers


def format_answer(label: str, answer: PetAnswer) -> str:
    species = ", ".join(f"{name} {p:.3f}" for name, p in answer.species_probs.items())
    top = ", ".join(f"{name} {p:.3f}" for name, p in answer.top_k)
    breed = f"breed {answer.breed} {answer.breed_prob:.3f}"
    return f"{label}: {answer.species} ({species}); {breed}; top-{len(answer.top_k)}: {top}"
