"""The serving benchmark's load generator: gRPC and REST clients in a spawned process (or a thread of the driver),
driven over a multiprocessing pipe, so client-side Python does not hold the server's GIL.

Each command is a dict (op "latency" or "load") carrying everything it needs — target, port, path, payload — and
answers a dict of samples and the client's own CPU seconds; see Clients.
"""

from __future__ import annotations

import json
import os
import threading
import time


def _grpc_stub(target: str):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from serving.grpc_options import message_size_options

    channel = grpc.insecure_channel(target, options=message_size_options())
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _grpc_caller(target: str, payload: bytes, batch: int):
    """(call, close): one persistent channel; the first answer is checked to hold `batch` breeds."""
    from tensorflow_serving.apis import predict_pb2

    channel, stub = _grpc_stub(target)
    request = predict_pb2.PredictRequest.FromString(payload)
    answer = stub.Predict(request, timeout=60)
    if len(answer.outputs["breed"].string_val) != batch:
        raise RuntimeError(f"gRPC answer has {len(answer.outputs['breed'].string_val)} breeds, expected {batch}")
    return (lambda: stub.Predict(request, timeout=60)), channel.close


def _rest_caller(port: int, path: str, payload: bytes, batch: int):
    """(call, close): one keep-alive HTTP/1.1 connection POSTing to `path`; the first answer is checked to hold
    `batch` rows."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}

    def call() -> bytes:
        connection.request("POST", path, body=payload, headers=headers)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"REST answered {response.status}: {body[:200]!r}")
        return body

    predictions = json.loads(call())["predictions"]
    if len(predictions) != batch:
        raise RuntimeError(f"REST answer has {len(predictions)} rows, expected {batch}")
    return call, connection.close


def _latency(command: dict) -> dict:
    """Sequential requests on one connection: seconds per request after warm-up, and this process's CPU seconds
    for the whole command."""
    cpu = time.process_time()
    if command["protocol"] == "grpc":
        call, close = _grpc_caller(command["target"], command["payload"], command["batch"])
    else:
        call, close = _rest_caller(command["port"], command["path"], command["payload"], command["batch"])
    try:
        for _ in range(command["warmup"]):
            call()
        samples = []
        for _ in range(command["requests"]):
            start = time.perf_counter()
            call()
            samples.append(time.perf_counter() - start)
    finally:
        close()
    return {"samples": samples, "client_cpu": time.process_time() - cpu}


def _load(command: dict, conn) -> dict:
    """`threads` clients, each on its own channel, send batch-1 Predicts back to back for `duration` seconds.
    Sends {"started": True} when the window opens, so the server side can read its CPU clock."""
    import grpc

    threads = command["threads"]
    callers = [_grpc_caller(command["target"], command["payload"], 1) for _ in range(threads)]  # connected
    barrier = threading.Barrier(threads + 1)
    window = {}
    results = [None] * threads

    def client(index: int) -> None:
        call = callers[index][0]
        latencies, errors, first_error, finished = [], 0, "", 0.0
        barrier.wait()
        deadline = window["deadline"]
        while (start := time.perf_counter()) < deadline:
            try:
                call()
            except grpc.RpcError as exc:
                errors += 1
                first_error = first_error or f"{exc.code().name}: {exc.details()}"
            finished = time.perf_counter()
            latencies.append(finished - start)
        results[index] = (latencies, errors, first_error, finished)

    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    cpu_start = time.process_time()
    window["start"] = time.perf_counter()
    window["deadline"] = window["start"] + command["duration"]
    barrier.wait()
    conn.send({"started": True})
    for worker in workers:
        worker.join()
    cpu = time.process_time() - cpu_start
    for _, close in callers:
        close()
    latencies = sorted(s for r in results for s in r[0])
    errors = sum(r[1] for r in results)
    elapsed = max(r[3] for r in results) - window["start"]
    return {
        "requests": len(latencies) - errors,
        "errors": errors,
        "first_error": next((r[2] for r in results if r[2]), ""),
        "seconds": elapsed,
        "client_cpu": cpu,
        "latencies": latencies,
    }


def _client_main(conn) -> None:
    """The load generator's loop: a command dict in, a result dict out (or {"error": ...}); None ends it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow_serving.apis.predict_pb2  # noqa: F401 (imports TF once, before any timing)

    conn.send({"ready": True})
    while (command := conn.recv()) is not None:
        try:
            result = _latency(command) if command["op"] == "latency" else _load(command, conn)
        except Exception as exc:  # report to the driver instead of dying silently
            result = {"error": f"{type(exc).__name__}: {exc}"}
        conn.send(result)


class Clients:
    """The driver's handle on the load generator: a spawned process (default; a child process, so the driver's
    benchmarks.common.CpuMeter counts its CPU) or a thread of this process."""

    def __init__(self, mode: str):
        import multiprocessing

        self.mode = mode
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        if mode == "process":
            self.worker = context.Process(target=_client_main, args=(child,), daemon=True, name="load-clients")
        else:
            self.worker = threading.Thread(target=_client_main, args=(child,), daemon=True, name="load-clients")
        self.worker.start()
        self._receive()

    def _receive(self) -> dict:
        if not self.conn.poll(600):
            raise SystemExit("the load generator did not answer within 10 minutes")
        result = self.conn.recv()
        if "error" in result:
            raise SystemExit(f"load generator failed: {result['error']}")
        return result

    def latency(self, **command) -> dict:
        """One repetition: {"samples": seconds per request, "client_cpu": seconds}."""
        self.conn.send({"op": "latency", **command})
        return self._receive()

    def load(self, on_start, **command) -> dict:
        """Run a load window; `on_start()` is called as soon as the window opens."""
        self.conn.send({"op": "load", **command})
        self._receive()  # {"started": True}
        on_start()
        return self._receive()

    def close(self) -> None:
        self.conn.send(None)
        self.worker.join(timeout=30)
