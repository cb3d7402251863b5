"""`petpipe run --set train.distribute=multiworker` on two hosts (tests/hosts.py) sharing one work dir: the chief
(worker 0) runs the whole pipeline, the other worker only trains with it (pipeline/workers.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.stages.train import build_model
from pipeline.store import RunStore
from tests.conftest import TINY_TRAINING, set_flags
from tests.hosts import hosts

pytestmark = pytest.mark.slow  # two TensorFlow processes and a Beam job

ROOT = Path(__file__).resolve().parents[2]
PORT = 2222  # each host has its own network namespace, so the same port on both
TIMEOUT = 240  # seconds; a run takes well under a minute, the bound only keeps a stuck collective from hanging
SETTINGS = (*TINY_TRAINING, "train.distribute=multiworker", "train.batch_size=16", "data.eval_fraction=0")


def _start_both(
    network, tiny_data: str, work: Path, logs: Path, attempt: str, *more: str, only: int | None = None, timeout=120
) -> list[tuple]:
    """Start `petpipe run` on every host (or only on host `only`) at once; (process, output file) of each, in host
    order."""
    cluster = {"worker": [f"{host.address}:{PORT}" for host in network]}
    started = []
    for index, host in enumerate(network):
        if only is not None and index != only:
            continue
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        env.update(
            PYTHONPATH=str(ROOT),
            TF_CPP_MIN_LOG_LEVEL="2",
            CUDA_VISIBLE_DEVICES="",
            PETPIPE_MULTIWORKER_TIMEOUT=str(timeout),
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        output = logs / f"{attempt}-worker-{index}.log"
        argv = [sys.executable, "-m", "pipeline.cli", "run", "--data-dir", tiny_data, "--work-dir", str(work)]
        with open(output, "w") as log:
            argv += set_flags(SETTINGS, *more)
            started.append((host.popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), output))
    return started


def _run_both(network, tiny_data: str, work: Path, logs: Path, attempt: str, *more: str) -> list[tuple[int, str]]:
    """(exit code, output) of `petpipe run` on every host, started at once."""
    started = _start_both(network, tiny_data, work, logs, attempt, *more)
    return [(process.wait(timeout=TIMEOUT), output.read_text()) for process, output in started]


def _trainable(weights: Path) -> list[np.ndarray]:
    model = build_model(load_config(None, SETTINGS), _hierarchy())
    model.load_weights(str(weights))
    return [w.numpy() for w in model.trainable_weights]


def _hierarchy():
    from schemas import load_hierarchy

    return load_hierarchy()


def test_two_workers_run_the_pipeline_once_and_train_together(tiny_data, tmp_path):
    work = tmp_path / "work"
    with hosts(2) as network:
        (chief_code, chief_out), (worker_code, worker_out) = _run_both(network, tiny_data, work, tmp_path, "first")
        assert chief_code == 0, chief_out[-4000:]
        assert worker_code == 0, worker_out[-4000:]
        assert f"exported: version 1 at {work}/serving/pets/1" in chief_out
        scratch = work / "train" / "multihead" / "workers" / "worker-1"
        assert f"worker-1 trained on 1 span(s); final weights in {scratch}/final.weights.h5" in worker_out
        assert "exported" not in worker_out

        # Exactly one version, pushed by the chief; the run store holds the chief's run alone.
        assert sorted(os.listdir(work / "serving" / "pets")) == ["1"]
        store = RunStore(str(work / "metadata.sqlite"))
        try:
            runs = store.runs()
            assert [(run["outcome"], run["exit_code"]) for run in runs] == [("pushed", 0)]
            components = [e["component"] for e in store.executions_of(runs[0]["id"])]
            assert components.count("train") == 1 and components.count("export") == 1
        finally:
            store.close()

        # Synchronous training: the chief's trained model and the worker's copy have the same trainable weights.
        (chief_weights,) = (work / "train" / "multihead" / "trained").glob("*.weights.h5")
        chief, worker = _trainable(chief_weights), _trainable(scratch / "final.weights.h5")
        assert len(chief) == len(worker) > 0
        assert all(np.array_equal(a, b) for a, b in zip(chief, worker, strict=True))
        # The worker wrote only in its scratch dir (checkpoints, TensorBoard logs, final weights).
        assert {"final.weights.h5", "tensorboard"} <= {p.name for p in scratch.iterdir()} <= {
            "final.weights.h5", "tensorboard", "checkpoints"}  # fmt: skip

        # Again, with nothing new: the chief decides "nothing to do" and tells the worker; both exit 0.
        (chief_code, chief_out), (worker_code, worker_out) = _run_both(network, tiny_data, work, tmp_path, "second")
        assert (chief_code, worker_code) == (0, 0), chief_out[-2000:] + worker_out[-2000:]
        assert "petpipe run: nothing to do: no new data or settings since run 1; version 1 is serving" in chief_out
        assert "nothing to do (decided by the chief): no new data or settings since run 1" in worker_out
        assert sorted(os.listdir(work / "serving" / "pets")) == ["1"]


def _poll_file(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{path}: no {text!r} within {timeout} s:\n{path.read_text()[-3000:]}"
        time.sleep(0.2)  # polling a log file under a deadline


def test_a_worker_killed_mid_training_fails_the_chief_and_a_rerun_resumes(tiny_data, tmp_path):
    work, epochs = tmp_path / "work", "train.epochs=8"
    with hosts(2) as network:
        (chief, chief_log), (worker, worker_log) = _start_both(network, tiny_data, work, tmp_path, "killed", epochs)
        _poll_file(worker_log, "epoch 2/8", TIMEOUT)
        os.killpg(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        code = chief.wait(timeout=TIMEOUT)
        detected = time.monotonic() - killed
        out = chief_log.read_text()
        assert code == 2, out[-4000:]
        assert detected < 120, detected  # TensorFlow's collective health check, not a hang
        last = out.strip().splitlines()[-1]
        assert last.startswith("petpipe: error: multiworker: training failed on worker-0: worker-1 stopped"), out[
            -4000:
        ]
        assert last.endswith("nothing pushed, a re-run resumes from the last checkpoint")
        assert not (work / "serving" / "pets").exists() or os.listdir(work / "serving" / "pets") == []
        assert not (work / "blessed").exists()
        store = RunStore(str(work / "metadata.sqlite"))
        try:
            assert [(run["outcome"], run["exit_code"]) for run in store.runs()][-1][1] == 2
        finally:
            store.close()

        (chief_code, chief_out), (worker_code, worker_out) = _run_both(
            network, tiny_data, work, tmp_path, "resumed", epochs
        )
        assert (chief_code, worker_code) == (0, 0), chief_out[-3000:] + worker_out[-3000:]
        for out in (chief_out, worker_out):
            assert "resuming from checkpoint" in out
            assert "epoch 1/8" not in out  # the epochs done before the kill are not trained again
        assert sorted(os.listdir(work / "serving" / "pets")) == ["1"]


def test_a_chief_failing_before_training_tells_the_worker_which_exits_2(tiny_data, tmp_path):
    work = tmp_path / "work"
    with hosts(2) as network:
        # With an eval split the tiny data set leaves a breed out of train: a severe anomaly, exit 4, nothing trained.
        (chief_code, chief_out), (worker_code, worker_out) = _run_both(
            network, tiny_data, work, tmp_path, "anomaly", "data.eval_fraction=0.1"
        )
    assert chief_code == 4, chief_out[-3000:]
    assert worker_code == 2, worker_out[-3000:]
    last = worker_out.strip().splitlines()[-1]
    assert last.startswith("petpipe: error: multiworker: the chief failed: span 0: "), worker_out[-3000:]
    assert "severe anomalies, not training on it" in last
    assert not (work / "train").exists() or not any((work / "train").rglob("*.weights.h5"))


@pytest.mark.parametrize("started", [0, 1], ids=["only-the-chief", "only-the-worker"])
def test_a_task_that_never_joins_is_a_one_line_error_after_the_timeout(tiny_data, tmp_path, started):
    work = tmp_path / "work"
    with hosts(2) as network:
        [(process, output)] = _start_both(network, tiny_data, work, tmp_path, "alone", only=started, timeout=10)
        code, out = process.wait(timeout=TIMEOUT), output.read_text()
        chief_address = f"{network[0].address}:{PORT}"
    assert code == 2, out[-3000:]
    missing = (
        "worker-1 did not start or cannot reach worker-0"
        if started == 0
        else f"worker-0 at {chief_address} did not answer worker-1"
    )
    # TensorFlow logs its own shutdown after it (C++ logging at exit); petpipe's last word is this line.
    assert [line for line in out.splitlines() if line.startswith("petpipe")][-1] == (
        f"petpipe: error: multiworker: the cluster did not gather within 10 s (PETPIPE_MULTIWORKER_TIMEOUT): "
        f"{missing}; nothing run"
    )
    assert not work.exists()  # nothing ran: the strategy is made before the pipeline starts
