"""The multi-worker role from TF_CONFIG (pipeline/workers.py) and `petpipe run`'s one-line errors for a bad one;
no TensorFlow runs here."""

from __future__ import annotations

import json

import pytest

from common.errors import ConfigError
from pipeline import cli
from pipeline.workers import Role, describe_cluster_error, describe_missing_tasks, role_from_tf_config

WORKERS = ["10.0.0.1:2222", "10.0.0.2:2222"]


def _tf_config(cluster: dict, task_type: str = "worker", index: int = 0) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_worker_0_is_the_chief_without_a_chief_job():
    first = role_from_tf_config(_tf_config({"worker": WORKERS}, "worker", 0))
    second = role_from_tf_config(_tf_config({"worker": WORKERS}, "worker", 1))
    assert (first.name, first.is_chief, first.others) == ("worker-0", True, ["worker-1"])
    assert (second.name, second.is_chief, second.others) == ("worker-1", False, ["worker-1"])


def test_an_explicit_chief_is_the_chief():
    cluster = {"chief": ["10.0.0.9:2222"], "worker": WORKERS, "ps": ["10.0.0.8:2222"]}
    chief = role_from_tf_config(_tf_config(cluster, "chief", 0))
    worker = role_from_tf_config(_tf_config(cluster, "worker", 0))
    assert (chief.is_chief, worker.is_chief) == (True, False)
    assert chief.others == ["worker-0", "worker-1"]
    assert chief.cluster == {"chief": ["10.0.0.9:2222"], "worker": WORKERS}  # the ps job does not train


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "TF_CONFIG: not set"),
        ("{not json", "TF_CONFIG: not valid JSON (Expecting property name enclosed in double quotes: line 1"),
        ('["a list"]', "TF_CONFIG: expected a JSON object, got list"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "TF_CONFIG: cluster: missing"),
        (json.dumps({"cluster": {"worker": WORKERS}}), "TF_CONFIG: task: missing"),
        (_tf_config({"worker": WORKERS}, "ps", 0), "TF_CONFIG: task.type: expected chief or worker, got 'ps'"),
        (_tf_config({"worker": WORKERS}, "worker", 2), "TF_CONFIG: task.index: 2 is not a task of cluster.worker"),
        (_tf_config({"worker": WORKERS}, "chief", 0), "TF_CONFIG: task.index: 0 is not a task of cluster.chief"),
        (
            _tf_config({"worker": [WORKERS[0], WORKERS[0]]}),
            "TF_CONFIG: cluster.worker[1]: 10.0.0.1:2222 is also cluster.worker[0]",
        ),  # fmt: skip
        (
            _tf_config({"chief": [WORKERS[1]], "worker": WORKERS}),
            "TF_CONFIG: cluster.worker[1]: 10.0.0.2:2222 is also cluster.chief[0]",
        ),  # fmt: skip
        (_tf_config({"worker": ["10.0.0.1"]}), "TF_CONFIG: cluster.worker[0]: expected host:port, got '10.0.0.1'"),
        (_tf_config({"worker": "10.0.0.1:1"}), "TF_CONFIG: cluster.worker: expected a list of host:port"),
    ],
)
def test_bad_tf_config_names_the_field(text, message):
    with pytest.raises(ConfigError) as error:
        role_from_tf_config(text)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_multiworker_role_only_for_multiworker_or_an_auto_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cli.multiworker_role("none") is None and cli.multiworker_role("auto") is None
    monkeypatch.setenv("TF_CONFIG", _tf_config({"worker": WORKERS[:1]}))
    assert cli.multiworker_role("auto") is None  # a one-task cluster trains alone
    assert cli.multiworker_role("multiworker") == Role("worker", 0, {"chief": [], "worker": WORKERS[:1]})
    monkeypatch.setenv("TF_CONFIG", _tf_config({"worker": WORKERS}, "worker", 1))
    assert cli.multiworker_role("auto").name == "worker-1"
    assert cli.multiworker_role("mirrored") is None


@pytest.mark.parametrize("distribute", ["multiworker", "auto"])
def test_petpipe_run_with_a_bad_tf_config_is_one_line_exit_2(monkeypatch, tmp_path, capsys, distribute):
    monkeypatch.setenv("TF_CONFIG", _tf_config({"worker": WORKERS}, "worker", 5))
    code = cli.main(["run", "--work-dir", str(tmp_path), "--set", f"train.distribute={distribute}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "petpipe: error: TF_CONFIG: task.index: 5 is not a task of cluster.worker (2 listed)\n"
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_a_collective_error_becomes_one_line_naming_the_stopped_task():
    message = (
        "Graph execution error:\n\nDetected at node ...\nCollective ops is aborted by: Error reported from "
        "/job:worker/task:1: The following tasks are unhealthy (stopped sending heartbeats):\n"
        "/job:worker/replica:0/task:1\nThe tasks have crashed. Check the task logs\n"
        "\t [[{{node CollectiveReduceV2}}]] on /job:worker/replica:0/task:0/device:CPU:0"
    )
    assert describe_cluster_error(message) == "worker-1 stopped (no heartbeat)"
    # A peer that is killed can instead break a collective's connection first (seen in CI).
    reset = (
        "{{function_node __wrapped__CollectiveReduceV2_Nordering_token_1_device_/job:worker/replica:0/task:0/"
        "device:CPU:0}} Collective ops is aborted by: recvmsg:Connection reset by peer\nAdditional GRPC error "
        "information from remote target /job:worker/replica:0/task:1 while calling /tensorflow.WorkerService/RecvBuf:"
        '\n:UNKNOWN:Error received from peer  {grpc_message:"recvmsg:Connection reset by peer", grpc_status:14}'
    )
    assert describe_cluster_error(reset) == "worker-1 stopped or unreachable (recvmsg:Connection reset by peer)"
    assert describe_cluster_error("Graph execution error:\n\nsocket closed\nmore") == (
        "a task of the cluster stopped or is unreachable: socket closed"
    )


def test_a_cluster_that_does_not_gather_names_who_is_missing():
    cluster = {"worker": WORKERS + ["10.0.0.3:2222"]}
    chief, worker = Role("worker", 0, cluster), Role("worker", 2, cluster)
    # The chief's registration barrier, as TensorFlow 2.21 words it (seen with a worker that never started).
    barrier = (
        "Barrier timed out. Id: [Init]Wait_for_all_tasks_to_register::0. This usually happens because a task "
        "triggered the barrier too early or too slowly.\n# of tasks that reached the barrier: 1/3.\nThe first task "
        "at the barrier: /job:worker/replica:0/task:0. Some timed out task names:\n/job:worker/replica:0/task:2\n"
        "/job:worker/replica:0/task:1\n\nAdditional GRPC error information from remote target "
        "/job:worker/replica:0/task:0 while calling /tensorflow.CoordinationService/RegisterTask:"
    )
    assert describe_missing_tasks(barrier, chief) == "worker-1, worker-2 did not start or cannot reach worker-0"
    # A worker only sees its RegisterTask call to the chief time out.
    assert describe_missing_tasks("Deadline Exceeded\n\nRPC: /tensorflow.CoordinationService/RegisterTask", worker) == (
        "worker-0 at 10.0.0.1:2222 did not answer worker-2"
    )
    assert describe_missing_tasks("Deadline Exceeded", chief) == "not every task registered (Deadline Exceeded)"
    with_chief_job = Role("worker", 0, {"chief": ["10.0.0.9:2222"], "worker": WORKERS})
    assert (with_chief_job.chief_name, with_chief_job.chief_address, with_chief_job.is_chief) == (
        "chief-0", "10.0.0.9:2222", False)  # fmt: skip
