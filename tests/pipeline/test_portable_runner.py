"""`petpipe run --runner=PortableRunner` beyond one machine: Beam's Python job service on one host, an external
worker pool on another (tests/hosts.py: network namespaces on this machine, sharing its file system as an NFS work
dir would be). The span's outputs must equal those of the in-process run.

Beam's `local_job_service_main` listens on localhost only (LocalJobServicer.get_bind_address) and hands the client
a localhost artifact-staging address, so `petpipe run` is launched on the job service's host; the job service runs
the job and has the worker pool on the other host start the SDK worker, which connects back to the job service's
host by its name (socket.getfqdn() there, resolved through the hosts' hosts files).
"""

import ipaddress
import json
import os
import socket
import subprocess
import sys
from dataclasses import fields

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.spans import SpanResult, load_spans
from pipeline.stages.data import ingest_spans
from tests.conftest import TINY_TRAINING, set_flags
from tests.dirty_data import make_dirty_dataset
from tests.hosts import hosts
from tests.pipeline.test_beam_runner import _flat, _outputs
from tests.serving.server_process import REPO, wait_until

pytestmark = pytest.mark.slow  # Beam jobs, a training and subprocess servers on namespaced hosts

JOB_PORT, WORKER_POOL_PORT = 8099, 50000  # every host has its own ports
# max_bad_fraction: the dirty data set quarantines 10 of its 152 records, on purpose.
OVERRIDES = (*TINY_TRAINING, "data.eval_fraction=0.3", "preprocess.num_shards=2", "data.max_bad_fraction=0.2")


def _settings(data_root, work) -> list[str]:
    return [*OVERRIDES, f"data.data_dir={data_root}", f"work_dir={work}"]


def _run_args(data_root, work, *beam_args: str) -> list[str]:
    """`petpipe run`'s arguments (after "petpipe") for the dirty data set."""
    return ["run", *set_flags(_settings(data_root, work)), *beam_args]


def _span_outputs(work) -> dict:
    """_outputs of the span petpipe recorded in work/spans.json, and its validation.json flattened."""
    recorded = load_spans(str(work))[0]
    result = SpanResult(**{f.name: recorded[f.name] for f in fields(SpanResult)})
    with open(os.path.join(result.tfrecord_dir, "validation.json")) as f:
        validation = _flat(json.load(f))
    return {**_outputs(result), "validation": validation}


def _approx_floats(flat: dict) -> dict:
    """Sums of floats depend on the order the workers added them in."""
    return {key: pytest.approx(value, rel=1e-9) if isinstance(value, float) else value for key, value in flat.items()}


@pytest.fixture(scope="module")
def dirty_data(tmp_path_factory):
    return make_dirty_dataset(tmp_path_factory.mktemp("portable") / "data")


@pytest.fixture(scope="module")
def in_process_outputs(dirty_data, hierarchy, schema, tmp_path_factory):
    work = tmp_path_factory.mktemp("in-process")
    ingest_spans(load_config(None, _settings(dirty_data.root, work)), str(dirty_data.root), hierarchy, schema, [])
    return _span_outputs(work)


def _reachable(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except OSError:
        return False


def test_petpipe_run_on_a_job_service_and_a_worker_pool_on_two_hosts_equals_the_in_process_run(
    dirty_data, in_process_outputs, tmp_path
):
    beam_env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    job_log, pool_log = tmp_path / "job-service.log", tmp_path / "worker-pool.log"
    with hosts(2) as (job_host, worker_host), open(job_log, "w") as job_out, open(pool_log, "w") as pool_out:
        job_host.popen(
            [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", f"--port={JOB_PORT}"],
            stdout=job_out,
            stderr=subprocess.STDOUT,
        )
        # The pool starts each SDK worker as `python -c ...`: the PATH must find this environment's python.
        worker_host.popen(
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={WORKER_POOL_PORT}"],
            env=beam_env,
            stdout=pool_out,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: _reachable(worker_host.address, WORKER_POOL_PORT), "the worker pool to listen")
        wait_until(lambda: f"Listening for beam jobs on port {JOB_PORT}" in job_log.read_text(), "the job service")

        work = tmp_path / "work"
        beam_args = [
            "--runner=PortableRunner",
            f"--job_endpoint=localhost:{JOB_PORT}",
            "--environment_type=EXTERNAL",
            f"--environment_config={worker_host.name}:{WORKER_POOL_PORT}",
        ]
        launcher = [sys.executable, "-m", "pipeline.cli", *_run_args(dirty_data.root, work, *beam_args)]
        run = job_host.run(launcher, timeout=600, cwd=REPO, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]

    assert "span 0 from" in run.stderr and "(Beam PortableRunner)" in run.stderr
    job_service = job_log.read_text()
    assert f"Requesting worker at {worker_host.name}:{WORKER_POOL_PORT}" in job_service
    assert f"self.control_address: {job_host.name}:" in job_service  # where the worker connected back to
    assert "with state DONE" in job_service
    assert f'SdkHarness("{job_host.name}:' in pool_log.read_text()  # the SDK worker ran on the worker host

    outputs, expected = _span_outputs(work), in_process_outputs
    assert sum(outputs["counts"]["quarantined"].values()) == len(dirty_data.quarantined)  # there was dirt to find
    assert outputs["counts"] == expected["counts"]
    assert outputs["examples"] == expected["examples"]
    assert outputs["quarantine"] == expected["quarantine"]
    assert outputs["statistics"].keys() == expected["statistics"].keys()
    assert outputs["statistics"] == _approx_floats(expected["statistics"])
    assert outputs["validation"].keys() == expected["validation"].keys()
    assert outputs["validation"] == _approx_floats(expected["validation"])


@pytest.mark.parametrize("listener", ["a host with nothing listening", "no such host"])
def test_an_unreachable_job_endpoint_is_a_one_line_error_naming_it(listener, dirty_data, tmp_path, capsys):
    with hosts(1) as network:  # seen from the test process, at the gateway
        (host,) = network
        address = host.address if listener.startswith("a host") else str(ipaddress.ip_address(network.gateway) + 249)
        endpoint = f"{address}:{JOB_PORT}"
        beam_args = ["--runner=PortableRunner", f"--job_endpoint={endpoint}", "--job_server_timeout=5"]
        code = main(_run_args(dirty_data.root, tmp_path / "work", *beam_args))

    stderr = capsys.readouterr().err
    assert stderr.splitlines()[-1:] == [
        f"petpipe: error: --job_endpoint={endpoint}: no Beam job service answered there within 5 s "
        "(--job_server_timeout)"
    ], stderr[-3000:]
    assert "Traceback" not in stderr
    assert code == 2


def test_a_worker_pool_that_does_not_answer_is_a_one_line_error_naming_it(dirty_data, tmp_path):
    job_log = tmp_path / "job-service.log"
    with hosts(2) as (job_host, worker_host), open(job_log, "w") as job_out:  # nothing listens on worker_host
        job_host.popen(
            [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", f"--port={JOB_PORT}"],
            stdout=job_out,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: f"Listening for beam jobs on port {JOB_PORT}" in job_log.read_text(), "the job service")
        beam_args = [
            "--runner=PortableRunner",
            f"--job_endpoint=localhost:{JOB_PORT}",
            "--environment_type=EXTERNAL",
            f"--environment_config={worker_host.name}:{WORKER_POOL_PORT}",
        ]
        launcher = [sys.executable, "-m", "pipeline.cli", *_run_args(dirty_data.root, tmp_path / "work", *beam_args)]
        run = job_host.run(launcher, timeout=300, cwd=REPO, capture_output=True, text=True)

    assert run.stderr.splitlines()[-1:] == [
        f"petpipe: error: --environment_config: no Beam worker pool answered at {worker_host.address}:"
        f"{WORKER_POOL_PORT}; the job service could not start an SDK worker there"
    ], run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert run.returncode == 2
    assert not os.path.exists(tmp_path / "work" / "tfrecords" / "span-0")  # no partial span
