"""tests/hosts.py itself: hosts reach each other and the test process over TCP, by address and by name, and
nothing it made outlives its context."""

import socket
import subprocess
import sys

import pytest

from tests.hosts import hosts, leftovers
from tests.serving.server_process import wait_until

# Accepts one connection, answers with its host name and the peer's address, and exits.
ECHO_SERVER = """
import socket, sys
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
connection, (peer, _) = server.accept()
connection.sendall(f"{socket.gethostname()} {peer}".encode())
connection.close()
"""
CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as connection:
    print(connection.recv(200).decode())
"""


def _running(pid: int) -> bool:
    """Whether the process exists and is no zombie (one that init has not reaped yet has ended all the same)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_two_hosts_reach_each_other_and_the_gateway_over_tcp():
    with hosts(2) as network:
        server_host, client_host = network
        assert server_host.address != client_host.address != network.gateway
        server = server_host.popen([sys.executable, "-c", ECHO_SERVER, "7000"], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline() == "listening\n"
        # By name: every host's hosts file names every host.
        answer = client_host.run([sys.executable, "-c", CLIENT, server_host.name, "7000"], capture_output=True,
                                 text=True, check=True)  # fmt: skip
        assert answer.stdout.split() == [server_host.name, client_host.address]
        assert server.wait(timeout=10) == 0

        # The test process, listening on the bridge, is reachable from a host at the gateway address.
        with socket.create_server((network.gateway, 0)) as gateway_server:
            port = gateway_server.getsockname()[1]
            client = client_host.popen([sys.executable, "-c", CLIENT, network.gateway, str(port)],
                                       stdout=subprocess.PIPE, text=True)  # fmt: skip
            gateway_server.settimeout(30)
            connection, (peer, _) = gateway_server.accept()
            with connection:
                connection.sendall(b"gateway")
            assert peer == client_host.address
            assert client.stdout.read().strip() == "gateway"
            assert client.wait(timeout=10) == 0


def test_a_host_has_no_route_off_the_bridge():
    with hosts(1) as (host,):
        routes = subprocess.run(["ip", "netns", "exec", host.name, "ip", "-4", "route"], capture_output=True,
                                text=True, check=True).stdout  # fmt: skip
        assert "default" not in routes
        assert [line.split()[0] for line in routes.splitlines()] == [f"{host.gateway.rsplit('.', 1)[0]}.0/24"]


def test_nothing_outlives_the_context_even_when_the_test_fails():
    with pytest.raises(RuntimeError, match="the test failed"), hosts(2) as network:
        escaped = network[0].popen(["setsid", "sleep", "600"])  # left its process group: found in the namespace
        grouped = network[1].popen(["sh", "-c", "sleep 600 & exec sleep 600"])
        wait_until(lambda: len(network[1].pids()) == 2 and network[0].pids(), "the sleeps to start", timeout=30)
        in_namespaces = network[0].pids() | network[1].pids()
        assert leftovers(network)  # the namespaces, links and hosts files exist meanwhile
        raise RuntimeError("the test failed")
    assert leftovers(network) == []
    assert escaped.poll() is not None and grouped.poll() is not None
    assert [pid for pid in in_namespaces if _running(pid)] == []
    assert network.bridge not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
