"""`petpipe infer` on Dask distributed (Beam's DaskRunner): the job shaped in pipeline/dask_infer.py must answer
exactly what the local run answers, bad images included, against a loopback scheduler with two workers and against a
scheduler and two workers on three network-namespace hosts (tests/hosts.py)."""

import json
import os
import shutil

import pytest

from pipeline.cli import main
from tests.hosts import hosts
from tests.image_factory import DAMAGED_JPEG, jpeg_bytes
from tests.pipeline.test_infer import _rows, _same_answer, _staging_leftovers
from tests.serving.server_process import free_port

distributed = pytest.importorskip("distributed", reason="the dask extra (pip install -e '.[dask]') is not installed")

from distributed.comm import get_address_host  # noqa: E402

from tests.pipeline.test_dask_runner import _worker_transitions, loopback_cluster, start_on_hosts  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """test_dask_runner's loopback cluster (a scheduler, two one-thread workers): (address, worker processes)."""
    with loopback_cluster(tmp_path_factory.mktemp("dask-logs")) as running:
        yield running


def _images(directory) -> None:
    directory.mkdir()
    for seed in range(7):
        (directory / f"pet{seed}.jpg").write_bytes(jpeg_bytes(seed))
    (directory / "not-an-image.png").write_bytes(b"these bytes are no picture at all")
    (directory / "empty.jpg").write_bytes(b"")
    (directory / "truncated.jpg").write_bytes(jpeg_bytes(2)[:200])
    (directory / "damaged.jpg").write_bytes(DAMAGED_JPEG)  # the decoder fails its whole batch: retried alone
    os.symlink(directory.parent / "gone.jpg", directory / "dangling.jpg")  # cannot be read


def _infer_argv(exported_model, tiny_tfrecords, tmp_path) -> list[str]:
    """`petpipe infer` (without --output) over _images' files and the tiny data set's test TFRecords."""
    images = tmp_path / "images"
    _images(images)
    test_records = os.path.join(tiny_tfrecords[0], "test")
    return ["infer", "--model", exported_model[0], "--input", str(images), "--input", test_records, "--batch-size", "3"]


def _dask_flags(address: str) -> list[str]:
    return ["--runner=DaskRunner", f"--dask_client_address={address}"]


def _assert_answers_as_the_local_run(local, on_dask, exported_model, tiny_tfrecords, capsys) -> None:
    """The Dask run's output (rows, summary, shards) equals the local run's; nothing left in staging."""
    expected, answered = _rows(str(local)), _rows(str(on_dask))
    assert sorted(answered) == sorted(expected) and len(answered) == 12 + tiny_tfrecords[1]["test"]
    for name, row in answered.items():
        _same_answer(row, expected[name])
    errors = {os.path.basename(n): r["error"] for n, r in answered.items() if r["error"]}
    assert sorted(errors) == ["damaged.jpg", "dangling.jpg", "empty.jpg", "not-an-image.png", "truncated.jpg"]
    assert errors["damaged.jpg"].startswith("cannot decode image: ")
    local_summary = json.loads((local / "_SUCCESS").read_text())
    dask_summary = json.loads((on_dask / "_SUCCESS").read_text())
    assert dask_summary == local_summary and (dask_summary["rows"], dask_summary["error_rows"]) == (len(answered), 5)
    assert dask_summary["version"] == exported_model[1]
    names = sorted(os.listdir(on_dask))
    shards = [n for n in names if n.startswith("answers-")]
    assert names == ["_SUCCESS", *shards] and len(shards) > 1
    assert all(n.endswith(f"-of-{len(shards):05d}.jsonl") for n in shards)
    assert f"{len(answered)} answers (5 errors) in {on_dask}" in capsys.readouterr().out
    assert _staging_leftovers(str(on_dask)) == []


def test_infer_on_a_dask_cluster_answers_as_the_local_run(exported_model, tiny_tfrecords, tmp_path, cluster, capsys):
    address, workers = cluster
    argv = _infer_argv(exported_model, tiny_tfrecords, tmp_path)
    local, on_dask = tmp_path / "local", tmp_path / "dask"

    assert main([*argv, "--output", str(local)]) == 0
    before = _worker_transitions(address)
    assert main([*argv, "--output", str(on_dask), *_dask_flags(address)]) == 0
    after = _worker_transitions(address)
    assert after.keys() == {w.pid for w in workers} and all(after[pid] > before[pid] for pid in after)  # both worked

    _assert_answers_as_the_local_run(local, on_dask, exported_model, tiny_tfrecords, capsys)


def test_infer_on_dask_across_three_hosts_answers_as_the_local_run(exported_model, tiny_tfrecords, tmp_path, capsys):
    """The scheduler and each worker on a host of its own: the workers read the model and the images from the shared
    file system, and the answers are the in-process run's."""
    argv = _infer_argv(exported_model, tiny_tfrecords, tmp_path)
    local, on_dask = tmp_path / "local", tmp_path / "dask"
    assert main([*argv, "--output", str(local)]) == 0

    with hosts(3) as (scheduler_host, worker_a, worker_b):
        address = start_on_hosts(scheduler_host, (worker_a, worker_b), tmp_path)
        assert main([*argv, "--output", str(on_dask), *_dask_flags(address)]) == 0
        with distributed.Client(address, timeout=30) as client:
            worker_hosts = {w["host"] for w in client.scheduler_info()["workers"].values()}
            executed = client.run(lambda dask_worker: dask_worker.state.executed_count)  # fresh workers: this job's
    assert worker_hosts == {worker_a.address, worker_b.address}
    assert {get_address_host(worker) for worker in executed} == worker_hosts
    assert all(count > 0 for count in executed.values()), executed  # both hosts ran tasks of the job

    _assert_answers_as_the_local_run(local, on_dask, exported_model, tiny_tfrecords, capsys)


def test_a_job_failing_on_a_dask_worker_leaves_no_output(exported_model, tmp_path, cluster):
    address, _ = cluster
    images = tmp_path / "images"
    images.mkdir()
    (images / "pet.jpg").write_bytes(jpeg_bytes(0))
    broken = tmp_path / "broken"
    shutil.copytree(exported_model[2], broken / "1")
    os.remove(broken / "1" / "variables" / "variables.index")  # found by the launcher, fails to load on the worker
    output = tmp_path / "answers"
    argv = ["infer", "--model", str(broken), "--input", str(images), "--output", str(output)]

    try:
        failed = main([*argv, "--runner=DaskRunner", f"--dask_client_address={address}"]) != 0
    except Exception:  # noqa: BLE001 — whatever TF raised on the worker, if the CLI does not report it itself
        failed = True
    assert failed
    assert not output.exists() and _staging_leftovers(str(output)) == []


def test_an_unreachable_scheduler_is_a_one_line_error(exported_model, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "pet.jpg").write_bytes(jpeg_bytes(0))
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    output = tmp_path / "answers"
    argv = ["infer", "--model", exported_model[0], "--input", str(images), "--output", str(output)]

    assert main([*argv, "--runner=DaskRunner", f"--dask_client_address={address}", "--dask_connection_timeout=5"]) == 2

    err = capsys.readouterr().err.strip()
    assert err.startswith(f"petpipe: error: --dask_client_address={address}: cannot reach the Dask scheduler (")
    assert "\n" not in err and not output.exists() and _staging_leftovers(str(output)) == []
