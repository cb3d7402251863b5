"""Load: 16 clients keep predicting through the official stubs against a `petpipe serve` subprocess while new
versions appear under the model base path, one of them broken. No request may fail, none may be answered by the
broken version, and nobody may be answered by an older version once a newer one has answered."""

from __future__ import annotations

import collections
import random
import shutil
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.image_factory import jpeg_bytes
from tests.serving.server_process import publish_version, serving_process

pytestmark = pytest.mark.slow  # trains, runs Beam jobs or subprocess servers: left out of make test-fast

CLIENTS = 16
DEADLINE = 30.0  # seconds per Predict: generous, a deadline is not what this test measures
PUSHES = [(2, True), (3, False), (4, True), (5, True)]  # (version, good?): 3 is the newest while it is broken
SETTLE = 30  # requests that start and finish in each phase before the next push, so every phase is exercised
MIN_REQUESTS = 200


@dataclass
class Answered:
    started: float
    finished: float
    version: int


@dataclass
class Traffic:
    """What the clients saw; `answered` per client, in the order each client sent its requests."""

    answered: list[list[Answered]] = field(default_factory=lambda: [[] for _ in range(CLIENTS)])
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def all(self) -> list[Answered]:
        with self.lock:
            return [a for client in self.answered for a in client]


def _problem(response: predict_pb2.PredictResponse, rows: int) -> str:
    """Why an OK answer is not a sane one ("" if it is)."""
    if response.model_spec.name != "pets" or response.model_spec.signature_name != "serving_default":
        return f"model_spec {response.model_spec}"
    probs = tf.make_ndarray(response.outputs["breed_probs"])
    if probs.shape != (rows, 37) or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        return f"breed_probs of shape {probs.shape}, row sums {probs.sum(axis=1)}"
    errors = tf.make_ndarray(response.outputs["image_error"])
    if list(errors) != [b""] * rows:
        return f"image_error {list(errors)}"
    return ""


def _client(index: int, target: str, images: list[bytes], stop: threading.Event, traffic: Traffic) -> None:
    rng = random.Random(index)
    with grpc.insecure_channel(target) as channel:  # one channel per client, as separate processes would have
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        while not stop.is_set():
            batch = rng.sample(images, rng.randint(1, 4))
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "pets"
            request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
            started = time.monotonic()
            try:
                response = stub.Predict(request, timeout=DEADLINE)
                problem = _problem(response, len(batch))
            except grpc.RpcError as exc:
                problem = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:  # a broken answer must show up as a failure, not kill the client quietly
                problem = f"{type(exc).__name__}: {exc}"
            with traffic.lock:
                if problem:
                    traffic.failures.append(f"client {index}: {problem}")
                else:
                    version = response.model_spec.version.value
                    traffic.answered[index].append(Answered(started, time.monotonic(), version))


def _wait_for_traffic(traffic: Traffic, since: float, count: int, timeout: float = 60.0) -> None:
    """Until `count` requests that started after `since` have been answered."""
    deadline = time.monotonic() + timeout
    while sum(a.started > since for a in traffic.all()) < count:
        assert not traffic.failures, traffic.failures[:5]
        assert time.monotonic() < deadline, f"fewer than {count} answers in {timeout} s after a push"
        time.sleep(0.05)


def test_versions_come_and_a_broken_one_fails_while_16_clients_never_see_an_error(exported_model, tmp_path):
    base = tmp_path / "pets"
    shutil.copytree(exported_model[2], base / "1")
    images = [jpeg_bytes(seed, size) for seed, size in enumerate([16, 24, 32, 40, 48, 64] * 2)]
    args = ["--model_base_path", str(base), "--file_system_poll_wait_seconds", "0.2"]
    with serving_process(args, str(tmp_path), rest=False) as server:
        traffic, stop = Traffic(), threading.Event()
        clients = [
            threading.Thread(target=_client, args=(i, server.target, images, stop, traffic), daemon=True)
            for i in range(CLIENTS)
        ]
        began = time.monotonic()
        for client in clients:
            client.start()
        # Phases: (when the served version became `expected`, when the next push happened, expected).
        phases, serving, effective = [], 1, time.monotonic()
        try:
            _wait_for_traffic(traffic, 0.0, SETTLE)
            for version, good in PUSHES:
                pushed = time.monotonic()
                phases.append((effective, pushed, serving))
                publish_version(str(base), version, exported_model[2] if good else None)
                if good:
                    server.wait_state("pets", version, "AVAILABLE")
                    serving, effective = version, time.monotonic()
                else:  # the previous version keeps serving; the new phase starts when the failure is known
                    assert server.wait_state("pets", version, "END")
                    effective = time.monotonic()
                _wait_for_traffic(traffic, effective, SETTLE)
        finally:
            stop.set()
            for client in clients:
                client.join(DEADLINE + 5)
        phases.append((effective, time.monotonic(), serving))
        elapsed = time.monotonic() - began
        states = server.version_states("pets")

    answered = traffic.all()
    per_version = collections.Counter(a.version for a in answered)
    counts = dict(sorted(per_version.items()))
    print(
        f"\nload: {len(answered)} requests answered by {CLIENTS} clients in {elapsed:.1f} s, "
        f"{len(traffic.failures)} failed; versions seen {sorted(per_version)}; per version {counts}"
    )
    assert not traffic.failures, traffic.failures[:10]
    assert not any(client.is_alive() for client in clients)
    assert len(answered) >= MIN_REQUESTS
    assert 3 not in per_version  # the broken version never answers
    assert {2, 4, 5} <= set(per_version)
    # Inside each phase (a request started after the phase began and answered before the next push) exactly the
    # phase's version answers: while 3 is broken, that is still 2.
    for start, end, expected in phases:
        inside = collections.Counter(a.version for a in answered if start < a.started and a.finished < end)
        assert set(inside) == {expected}, (start - began, end - began, expected, inside)
    # Each client sends one request after another, so its versions never go back.
    for index, client_answers in enumerate(traffic.answered):
        versions = [a.version for a in client_answers]
        assert versions == sorted(versions), f"client {index} went back to an older version: {versions}"
    assert states[5] == ("AVAILABLE", "")
    assert states[3][0] == "END" and "Loading servable: {name: pets version: 3} failed" in states[3][1]
    assert {v: s for v, (s, _) in states.items()} == {5: "AVAILABLE", 4: "END", 3: "END", 2: "END", 1: "END"}
    assert [states[v][1] for v in (1, 2, 4)] == ["", "", ""]  # unloaded cleanly, unlike 3
