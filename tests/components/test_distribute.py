"""tf.distribute training: the strategy choice (TF_CONFIG), and real runs in fresh interpreters — MirroredStrategy
over two logical CPU devices, and MultiWorkerMirroredStrategy with two local worker processes on loopback ports
(both need TensorFlow configured before it initialises, which this pytest process has already done)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from components import distribute

pytestmark = pytest.mark.slow  # trains, runs Beam jobs or subprocess servers: left out of make test-fast

SCRIPT = Path(__file__).with_name("distributed_train.py")
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240  # seconds; a run takes 10-30 s, the bound only keeps a stuck collective from hanging the suite


def _cluster(workers: int, chief: bool = False) -> dict:
    cluster = {"worker": [f"127.0.0.1:{2220 + i}" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["127.0.0.1:2219"]
    return cluster


@pytest.mark.parametrize(
    "tf_config, workers, auto",
    [
        (None, 0, "none"),
        ("", 0, "none"),
        (json.dumps({"cluster": _cluster(1), "task": {"type": "worker", "index": 0}}), 1, "none"),
        (json.dumps({"cluster": _cluster(2), "task": {"type": "worker", "index": 1}}), 2, "multiworker"),
        (json.dumps({"cluster": _cluster(1, chief=True), "task": {"type": "chief", "index": 0}}), 2, "multiworker"),
        (json.dumps({"cluster": {"ps": ["h:1", "h:2"], "worker": ["h:3"]}, "task": {}}), 1, "none"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), 0, "none"),
    ],
)
def test_auto_is_multiworker_only_for_a_cluster_of_several_workers(monkeypatch, tf_config, workers, auto):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    assert distribute.tf_config_workers() == workers
    assert distribute.resolve("auto") == auto
    for explicit in ("none", "mirrored", "multiworker"):
        assert distribute.resolve(explicit) == explicit  # an explicit choice is never overridden


def test_bad_values_are_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown train.distribute 'tpu'"):
        distribute.resolve("tpu")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG: not valid JSON"):
        distribute.resolve("auto")
    assert distribute.tf_config_workers("") == 0
    with pytest.raises(ValueError, match="TF_CONFIG: expected a JSON object"):
        distribute.tf_config_workers('["a list"]')


def test_no_strategy_is_none_and_strategies_pass_through():
    assert distribute.make_strategy("none") is None and distribute.make_strategy(None) is None
    default = tf.distribute.get_strategy()
    assert distribute.make_strategy(default) is default
    assert distribute.replicas(None) == 1 and distribute.worker_dir(None) is None
    assert distribute.worker_dir(default) is None  # one process: it is its own chief


def test_multiworker_after_tensorflow_started_says_what_to_do(monkeypatch):
    tf.config.list_logical_devices("CPU")  # TensorFlow is initialised in this process
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": _cluster(2), "task": {"type": "worker", "index": 0}}))
    with pytest.raises(RuntimeError, match="before TensorFlow runs anything"):
        distribute.make_strategy("auto")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)
    return env


def _result(process: subprocess.Popen, out: Path) -> dict:
    try:
        stdout, _ = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, f"{' '.join(map(str, process.args))} failed:\n{stdout[-4000:]}"
    return json.loads(out.read_text())


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _assert_valid_outputs(result: dict) -> None:
    assert result["finite_weights"]
    for head, sums in result["row_sums"].items():
        assert len(sums) == result["rows"] > 0
        assert all(math.isclose(s, 1.0, rel_tol=1e-5) for s in sums), head
    losses = result["history"]["loss"]
    assert all(math.isfinite(v) for v in losses + result["history"]["val_loss"])
    # Gradients are applied: the species head, which has a label on all 60 examples, learns within 12 steps. The
    # total's epoch means are noise at this size (a breed head sees 2-3 labels per batch; in one CI run the total
    # rose 6.57 → 6.72 while species fell 0.85 → 0.58), so they are not the signal.
    species = result["history"]["species_loss"]
    assert species[-1] < species[0]


def test_mirrored_strategy_on_two_logical_cpus(tiny_tfrecords, tmp_path):
    out = tmp_path / "result.json"
    result = _result(_start(["mirrored", tiny_tfrecords[0], str(out)], _env()), out)
    assert (result["strategy"], result["replicas"]) == ("MirroredStrategy", 2)
    assert result["model_strategy"] == "MirroredStrategy"  # built under the strategy's scope
    assert result["distributed_variables"]
    assert "MirroredStrategy: 2 replicas, 16 examples per global batch" in result["log"][0]
    _assert_valid_outputs(result)
    # The masked, class-weighted breed loss over replicas holding 1 and 4 valid labels adds up to the loss over
    # the whole batch (a per-replica mean, or Keras's division by the replica count, would not).
    masked = result["masked_loss"]
    assert math.isclose(sum(masked["parts"]), masked["whole"], rel_tol=1e-5)
    assert not math.isclose(masked["parts"][0], masked["parts"][1], rel_tol=1e-3)
    # The cascade trains its three sub-models through the same helpers, under the same strategy.
    cascade = result["cascade"]
    assert cascade["distributed_variables"] and cascade["finite_weights"]
    for head in ("species", "cat_breed", "dog_breed"):
        assert len(cascade["history"][f"{head}/loss"]) == 2
        assert all(math.isclose(s, 1.0, rel_tol=1e-5) for s in cascade["row_sums"][head])


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_two_workers_train_in_sync(tiny_tfrecords, tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    run_dir = tmp_path / "run"
    processes, outs = [], []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        outs.append(tmp_path / f"worker-{index}.json")
        args = ["multiworker", tiny_tfrecords[0], str(outs[-1]), str(run_dir)]
        processes.append(_start(args, _env(TF_CONFIG=tf_config)))
    try:
        chief, other = (_result(p, out) for p, out in zip(processes, outs, strict=True))
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for result in (chief, other):
        assert (result["replicas"], result["model_strategy"]) == (2, "CollectiveAllReduceStrategy")
        _assert_valid_outputs(result)
    # Synchronous training: both workers saw the same global metrics and ended with the same trainable weights
    # (batch-norm moving statistics are per worker, from its own share of each batch).
    assert chief["history"] == other["history"]
    trainable = chief["trainable"]
    assert trainable and {p: chief["weight_digests"][p] for p in trainable} == {
        p: other["weight_digests"][p] for p in trainable
    }
    # The chief writes into run_dir; the other worker into run_dir/workers/worker-1, never the same files.
    assert (run_dir / "tensorboard").is_dir()
    assert (run_dir / "workers" / "worker-1" / "tensorboard").is_dir()
    assert not (run_dir / "workers" / "worker-0").exists()
    # After training the chief alone exports (nothing collective left to wait for the other worker).
    assert chief["exported"]["version"] == 1 and "exported" not in other
    assert math.isclose(chief["exported"]["breed_probs_sum"], 1.0, rel_tol=1e-5)
    assert (run_dir / "serving" / "1" / "saved_model.pb").is_file()
