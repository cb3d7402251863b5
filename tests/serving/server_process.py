"""`petpipe serve` as a separate process, as clients meet it: tests talk to it only through the official
tensorflow_serving.apis stubs and plain HTTP."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shared_and_own_fixtures(setup):
    """Two fixtures of one server set-up, `setup(exported_model, directory)` (a generator yielding what the tests
    use): module-scoped for the tests that only send requests, and function-scoped for a test that changes the
    server (adds or breaks versions, reloads its config) — so no test depends on another's changes or on order.
    Assign them to the fixture names: `server, own_server = shared_and_own_fixtures(_serving)`."""

    @pytest.fixture(scope="module")
    def shared(exported_model, tmp_path_factory):
        yield from setup(exported_model, tmp_path_factory.mktemp("shared-server"))

    @pytest.fixture
    def own(exported_model, tmp_path):
        yield from setup(exported_model, tmp_path)

    return shared, own


def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    """Poll `condition()` until it holds; the timeout only turns a hang into a failure naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    rest_port: int
    log_path: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def channel(self, **kwargs) -> grpc.Channel:
        return grpc.insecure_channel(self.target, **kwargs)

    def wait_available(self, model: str, version: int | None = None, timeout: float = 60.0) -> None:
        """Until GetModelStatus shows `version` (or any version) of `model` AVAILABLE."""
        deadline = time.monotonic() + timeout
        with self.channel() as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = model
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
                try:
                    states = stub.GetModelStatus(request, timeout=5).model_version_status
                    if any(
                        s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
                        and (version is None or s.version == version)
                        for s in states
                    ):
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"{model} v{version} not AVAILABLE after {timeout} s:\n{self.log()}")

    def version_states(self, model: str) -> dict[int, tuple[str, str]]:
        """GetModelStatus of `model` → {version: (state name, error message)}."""
        with self.channel() as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = model
            response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return {s.version: (state_name(s.state), s.status.error_message) for s in response.model_version_status}

    def wait_state(self, model: str, version: int, state: str, timeout: float = 60.0) -> str:
        """Until GetModelStatus shows `version` of `model` in `state` (a name: "AVAILABLE", "END"); returns that
        version's error message."""
        deadline = time.monotonic() + timeout
        states = {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            states = self.version_states(model)
            if states.get(version, ("",))[0] == state:
                return states[version][1]
            time.sleep(0.1)
        raise TimeoutError(f"{model} v{version} not {state} after {timeout} s (states: {states}):\n{self.log()}")

    def terminate(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def publish_version(base_path: str, version: int, source: str | None = None) -> str:
    """Make `<base_path>/<version>` appear at once, as components/export.py does: build it under a staging name the
    server ignores (not an integer), then rename it into place. `source`: a version directory to copy; None makes a
    broken version (a saved_model.pb that is not one). Returns the version's path."""
    staging = os.path.join(base_path, f"_staging-{version}")
    if source is None:
        os.makedirs(staging)
        with open(os.path.join(staging, "saved_model.pb"), "wb") as f:
            f.write(b"this is not a SavedModel")
    else:
        shutil.copytree(source, staging)
    path = os.path.join(base_path, str(version))
    os.rename(staging, path)
    return path


@contextlib.contextmanager
def serving_process(args: list[str], log_dir: str, wait_for: str | None = "pets", rest: bool = True):
    """Start `python -m pipeline.cli serve ARGS --port P [--rest_api_port R]`; wait until `wait_for` has an
    AVAILABLE version; SIGTERM it at the end."""
    port, rest_port = free_port(), free_port() if rest else 0
    log_path = os.path.join(log_dir, f"serve-{port}.log")
    command = [sys.executable, "-m", "pipeline.cli", "serve", *args, "--port", str(port)]
    if rest:
        command += ["--rest_api_port", str(rest_port)]
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )
    server = ServerProcess(process, port, rest_port, log_path)
    try:
        if wait_for:
            server.wait_available(wait_for)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
