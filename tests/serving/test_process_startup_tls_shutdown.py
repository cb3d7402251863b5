"""`petpipe serve` as a subprocess, through the official tensorflow_serving.apis stubs only: a bad config file at
start-up, TLS and mutual TLS, and a SIGTERM that drains. What it answers: test_process_models.py."""

from __future__ import annotations

import datetime
import json
import shutil
import signal
import socket
import time

import grpc
import pytest
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.serving.grpc_calls import AVAILABLE, _code, _states
from tests.serving.server_process import serving_process, wait_until
from tests.serving.toy_model import example, export_toy_model

pytestmark = pytest.mark.slow  # trains, runs Beam jobs or subprocess servers: left out of make test-fast


def test_bad_config_file_exits_2_naming_file_and_line(tmp_path):
    config = tmp_path / "models.config"
    config.write_text('model_config_list {\n  config { name: "pets" base_pth: "/x" }\n}\n')
    with serving_process(["--model_config_file", str(config)], str(tmp_path), wait_for=None, rest=False) as server:
        assert server.process.wait(60) == 2
        assert f"{config}:2:" in server.log() and 'no field named "base_pth"' in server.log()


# --- TLS ----------------------------------------------------------------------------------------------------
def _certificates():
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM bytes (made with `cryptography`,
    which apache-beam already brings)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def make(name, issuer_name=None, issuer_key=None, ca=False, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert, key, cert.public_bytes(serialization.Encoding.PEM), key_pem

    import ipaddress

    ca_cert, ca_key, ca_pem, _ = make("petpipe test CA", ca=True)
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    _, _, server_pem, server_key = make("127.0.0.1", ca_cert.subject, ca_key, san=san)
    _, _, client_pem, client_key = make("client", ca_cert.subject, ca_key)
    return ca_pem, server_pem, server_key, client_pem, client_key


def test_mutual_tls(exported_model, tmp_path):
    ca, server_cert, server_key, client_cert, client_key = _certificates()
    ssl_config = tmp_path / "ssl.config"
    ssl_config.write_text(
        f"server_key: {json.dumps(server_key.decode())}\nserver_cert: {json.dumps(server_cert.decode())}\n"
        f"custom_ca: {json.dumps(ca.decode())}\nclient_verify: true\n"
    )
    base = tmp_path / "pets"
    shutil.copytree(exported_model[2], base / "1")
    args = ["--model_base_path", str(base), "--ssl_config_file", str(ssl_config)]
    with serving_process(args, str(tmp_path), wait_for=None, rest=False) as server:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "pets"
        trusted = grpc.ssl_channel_credentials(ca, client_key, client_cert)
        deadline = time.monotonic() + 60
        while True:  # the process needs a few seconds to start
            with grpc.secure_channel(server.target, trusted) as channel:
                try:
                    states = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=5)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline or server.process.poll() is not None:
                        raise
                    time.sleep(0.3)
        assert states.model_version_status[0].state == AVAILABLE

        with socket.create_connection(("127.0.0.1", server.port)) as raw:  # a broken handshake
            raw.sendall(b"\x16\x03\x01\x02\x00garbage that is not a ClientHello" * 10)
        for credentials in (grpc.ssl_channel_credentials(ca), None):  # no client certificate; no TLS at all
            channel = grpc.secure_channel(server.target, credentials) if credentials else server.channel()
            with channel:
                stub = model_service_pb2_grpc.ModelServiceStub(channel)
                code, _ = _code(lambda stub=stub: stub.GetModelStatus(request, timeout=5))
                assert code == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(server.target, trusted) as channel:  # still serving
            assert model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)

        files = {"ca": ca, "cert": client_cert, "key": client_key}
        for name, pem in files.items():
            (tmp_path / f"{name}.pem").write_bytes(pem)
        from pipeline.cli import main

        tls = ["--ca-cert", str(tmp_path / "ca.pem"), "--client-cert", str(tmp_path / "cert.pem")]
        tls += ["--client-key", str(tmp_path / "key.pem")]
        assert main(["status", "--server", server.target, *tls]) == 0  # petpipe's own client over mutual TLS
        assert main(["status", "--server", server.target, "--timeout", "2", *tls[:2]]) == 2  # no client cert


# --- graceful shutdown --------------------------------------------------------------------------------------
def test_sigterm_drains_in_flight_requests_then_exits_0(tmp_path):
    base = tmp_path / "toy"
    export_toy_model(str(base), 1)
    batching = tmp_path / "batching.txt"
    # A 3 s batch timeout keeps a request in flight long enough to send SIGTERM while it waits.
    batching.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 3000000 }\n")
    args = ["--model_base_path", str(base), "--model_name", "toy", "--enable_batching"]
    args += ["--batching_parameters_file", str(batching)]
    with serving_process(args, str(tmp_path), wait_for="toy", rest=False) as server:
        channel = server.channel()
        assert _states(channel, "toy") == {1: AVAILABLE}  # the channel is connected
        request = regression_pb2.RegressionRequest()
        request.model_spec.name = "toy"
        request.model_spec.signature_name = "regress_x"
        request.input.example_list.examples.append(example(4.0))
        in_flight = prediction_service_pb2_grpc.PredictionServiceStub(channel).Regress.future(request, timeout=60)
        # A call sent after it on the same connection is answered: the server has taken the request in (one HTTP/2
        # connection delivers in order), and the request now waits out its batch timeout.
        _states(channel, "toy")
        assert not in_flight.done(), "answered before the signal: nothing left to drain"
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "SIGTERM: draining in-flight requests" in server.log(), "the server to take the signal")
        wait_until(lambda: _refuses_new_calls(server), "the server to refuse new calls")
        late = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
        refused = regression_pb2.RegressionRequest()
        refused.model_spec.name = "toy"
        refused.model_spec.signature_name = "regress_x"
        refused.input.example_list.examples.append(example(1.0))
        code, _ = _code(lambda: late.Regress(refused, timeout=5))
        assert in_flight.result().result.regressions[0].value == 4.0  # 0.5·4 + 2: answered after the signal
        assert code == grpc.StatusCode.UNAVAILABLE  # new requests are refused while draining
        assert server.process.wait(30) == 0
        assert "draining in-flight requests" in server.log()
        channel.close()


def _refuses_new_calls(server) -> bool:
    with server.channel() as channel:
        try:
            _states(channel, "toy")
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAVAILABLE
    return False
