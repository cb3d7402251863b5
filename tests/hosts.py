"""Several hosts on this machine, for tests of what runs "beyond one machine": each host is a network namespace
with its own address, its own host name and a hosts file (bind-mounted over /etc/hosts in the host's processes)
naming every host, joined to the others and to this
test process by a bridge. Processes on the hosts share this machine's file system (as an NFS work dir would be).

    with hosts(2) as network:
        job_host, worker_host = network
        server = job_host.popen([sys.executable, "-m", "some.server", "--port=8099"], stdout=log)
        # reachable from the other host at f"{job_host.address}:8099" or f"{job_host.name}:8099",
        # and this test process is reachable from the hosts at network.gateway (the bridge's address).

Needs root and iproute2 (`ip`) and util-linux (`unshare`); otherwise the test is skipped, saying why. Traffic stays
on the bridge: the namespaces have no route off it. Teardown always kills every process started on a host (and
anything else left in its namespace), deletes the namespaces, links and bridge, and removes the hosts file — also
when the test fails or is interrupted. Nothing under /etc is touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

SUBNETS = ipaddress.ip_network("10.213.0.0/16")  # one free /24 of it per network


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@dataclass
class Host:
    name: str  # its host name, its network namespace's name and its name in every host's hosts file
    address: str
    gateway: str  # the address of the test process (the bridge), as seen from this host
    hosts_file: str  # every host's name and address, and localhost
    processes: list[subprocess.Popen] = field(default_factory=list, repr=False)

    def command(self, argv: list[str]) -> list[str]:
        """argv, run in this host's namespace under this host's name, with the network's hosts file."""
        in_host = ["ip", "netns", "exec", self.name, "unshare", "--uts", "--mount", "--"]
        as_host = 'hostname "$0" && mount --bind "$1" /etc/hosts && shift && exec "$@"'
        return in_host + ["sh", "-c", as_host, self.name, self.hosts_file, *argv]

    def popen(self, argv: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        """Start argv on this host (in its namespace, with its host name), in a process group of its own."""
        process = subprocess.Popen(self.command(argv), env=env, start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def run(self, argv: list[str], timeout: float = 60.0, **kwargs) -> subprocess.CompletedProcess:
        """Run argv on this host to its end (a hang fails after `timeout` s)."""
        return subprocess.run(self.command(argv), timeout=timeout, **kwargs)

    def pids(self) -> set[int]:
        """Every process in this host's namespace."""
        try:
            return {int(pid) for pid in _ip("netns", "pids", self.name).split()}
        except subprocess.CalledProcessError:
            return set()


class Network(list):
    """The hosts (a list of Host), and the address of the test process on their bridge."""

    gateway: str
    bridge: str


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "tests/hosts.py makes network namespaces: needs root"
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            return f"tests/hosts.py needs `{tool}` (apt-get install {package})"
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    used = [ipaddress.ip_interface(word).network for word in _ip("-o", "-4", "addr").split() if "/" in word]
    free = [s for s in SUBNETS.subnets(new_prefix=24) if not any(s.overlaps(u) for u in used)]
    if not free:
        raise RuntimeError(f"no free /24 in {SUBNETS} for test hosts")
    return free[secrets.randbelow(len(free))]  # random: parallel runs rarely pick the same one at once


def _kill(host: Host, timeout: float = 10.0) -> None:
    """SIGKILL the process groups started on the host and every process left in its namespace; reap them."""
    for process in host.processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while (left := host.pids()) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)  # polling the namespace for stragglers, not ordering anything
    for process in host.processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))


@contextlib.contextmanager
def hosts(count: int) -> Iterator[Network]:
    """`count` hosts on one bridge; see the module docstring."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    run_id = secrets.token_hex(3)  # interface names must fit in 15 characters
    prefix = f"pp{run_id}"
    network = Network()
    network.bridge = f"{prefix}br"
    namespaces: list[str] = []
    links: list[str] = []
    config_dir = tempfile.mkdtemp(prefix=f"petpipe-hosts-{run_id}-")
    hosts_path = os.path.join(config_dir, "hosts")
    try:
        try:
            _ip("link", "add", network.bridge, "type", "bridge")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"tests/hosts.py: cannot make a bridge here: {exc.stderr.strip()}")
        links.append(network.bridge)
        subnet = _free_subnet()
        addresses = list(subnet.hosts())
        network.gateway = str(addresses[0])
        _ip("addr", "add", f"{network.gateway}/{subnet.prefixlen}", "dev", network.bridge)
        _ip("link", "set", network.bridge, "up")
        names = [f"petpipe-{run_id}-h{i}" for i in range(count)]
        lines = "".join(
            ["127.0.0.1 localhost\n", f"{network.gateway} petpipe-{run_id}-gateway\n"]
            + [f"{addresses[i + 1]} {name}\n" for i, name in enumerate(names)]
        )
        with open(hosts_path, "w") as f:
            f.write(lines)
        for i, name in enumerate(names):
            _ip("netns", "add", name)
            namespaces.append(name)
            outside, inside = f"{prefix}h{i}", f"{prefix}h{i}p"
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            links.append(outside)
            _ip("link", "set", inside, "netns", name)
            _ip("link", "set", outside, "master", network.bridge)
            _ip("link", "set", outside, "up")
            _ip("-n", name, "link", "set", inside, "name", "eth0")
            _ip("-n", name, "addr", "add", f"{addresses[i + 1]}/{subnet.prefixlen}", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
            network.append(Host(name, str(addresses[i + 1]), network.gateway, hosts_path))
        yield network
    finally:
        for host in network:
            _kill(host)
        for name in namespaces:  # takes the veth pair inside with it
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "delete", name)
        existing = set(_ip("-o", "link").split())
        for link in links:
            if f"{link}:" in existing or any(word.startswith(f"{link}@") for word in existing):
                with contextlib.suppress(subprocess.CalledProcessError):
                    _ip("link", "delete", link)
        shutil.rmtree(config_dir, ignore_errors=True)


def leftovers(network: Network) -> list[str]:
    """Namespaces, links and the hosts file of `network` that still exist (after its context: should be none)."""
    prefix = network.bridge[: -len("br")]
    run_id = prefix[len("pp") :]
    namespaces = [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]
    links = [word.rstrip(":").split("@")[0] for word in _ip("-o", "link").split() if word.startswith(prefix)]
    files = [name for name in os.listdir(tempfile.gettempdir()) if name.startswith(f"petpipe-hosts-{run_id}-")]
    return [name for name in namespaces if run_id in name] + links + files
