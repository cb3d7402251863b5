"""Which tf.distribute strategy trains the model: train.distribute = none | mirrored | multiworker | auto.

  none         no strategy: Keras's default (one device), exactly the behaviour without this option;
  mirrored     tf.distribute.MirroredStrategy over this machine's devices: every GPU, or, without GPUs, every
               logical CPU device (one physical CPU is one device, so this only helps with GPUs or with CPUs
               split into logical devices);
  multiworker  tf.distribute.MultiWorkerMirroredStrategy over the cluster in the TF_CONFIG environment variable
               (the TensorFlow convention: {"cluster": {"worker": ["host:port", ...]}, "task": {"type":
               "worker", "index": i}}); every worker runs the same training program;
  auto         multiworker when TF_CONFIG describes a cluster of more than one worker (chief + worker tasks),
               else none.

A MultiWorkerMirroredStrategy has to be created before TensorFlow initialises its runtime (the first op or
device query) and only once per process: call make_strategy(config.train.distribute) at program start; later
calls return the same strategy. train.batch_size stays the global batch size: each of the N replicas gets 1/N.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from components.train_config import DISTRIBUTE

_strategies: dict[str, tf.distribute.Strategy] = {}


def parse_tf_config(text: str) -> dict:
    """TF_CONFIG's text as a JSON object; ValueError ("TF_CONFIG: ...") saying what is wrong."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG: not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"TF_CONFIG: expected a JSON object, got {type(parsed).__name__}")
    return parsed


def tf_config_workers(tf_config: str | None = None) -> int:
    """Number of training tasks (chief + worker) in the cluster that TF_CONFIG (or `tf_config`) describes; 0
    without one. ValueError when it is not a JSON object."""
    text = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not text.strip():
        return 0
    cluster = parse_tf_config(text).get("cluster") or {}
    return sum(len(cluster.get(job) or []) for job in ("chief", "worker"))


def resolve(name: str, tf_config: str | None = None) -> str:
    """none | mirrored | multiworker for a train.distribute value ("auto" decided by TF_CONFIG)."""
    if name not in DISTRIBUTE:
        raise ValueError(f"unknown train.distribute {name!r}; expected one of {', '.join(DISTRIBUTE)}")
    if name == "auto":
        return "multiworker" if tf_config_workers(tf_config) > 1 else "none"
    return name


def _local_devices() -> list[str]:
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [d.name for d in devices]


def bound_cluster_registration(timeout_seconds: float) -> None:
    """Make creating the MultiWorkerMirroredStrategy raise tf.errors.DeadlineExceededError after `timeout_seconds`
    when a task of the cluster never starts, instead of waiting forever in C++ (where no Python signal handler or
    watchdog thread runs). The strategy configures TensorFlow's coordination service only when nothing has: this
    sets the configuration it would (collective_all_reduce_strategy.py), plus registration as a barrier with a
    timeout; without the barrier the timeout is not applied to the wait for the other tasks."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    cluster = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster),
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster.num_tasks(job))
            for job in ("chief", "worker")
            if job in cluster.jobs
        ],
        cluster_register_timeout_in_ms=max(1, int(timeout_seconds * 1000)),
    )
    context.context().coordination_service.cluster_register_with_barrier = True


def make_strategy(
    distribute: str | tf.distribute.Strategy | None, register_timeout_seconds: float | None = None
) -> tf.distribute.Strategy | None:
    """The strategy for a train.distribute value (None for "none"); a Strategy object is returned as it is.
    One strategy per kind per process, created on first use. With `register_timeout_seconds`, a multi-worker
    strategy whose cluster does not gather in that time raises tf.errors.DeadlineExceededError."""
    if distribute is None or isinstance(distribute, tf.distribute.Strategy):
        return distribute
    kind = resolve(distribute)
    if kind == "none":
        return None
    if kind not in _strategies:
        if kind == "mirrored":
            _strategies[kind] = tf.distribute.MirroredStrategy(_local_devices())
        else:
            if register_timeout_seconds is not None:
                bound_cluster_registration(register_timeout_seconds)
            try:
                _strategies[kind] = tf.distribute.MultiWorkerMirroredStrategy()
            except RuntimeError as exc:
                raise RuntimeError(
                    f"train.distribute={distribute}: {exc}; create the strategy with "
                    "components.distribute.make_strategy() before TensorFlow runs anything"
                ) from None
    return _strategies[kind]


def replicas(strategy: tf.distribute.Strategy | None) -> int:
    return strategy.num_replicas_in_sync if strategy is not None else 1


def is_multi_worker(strategy: tf.distribute.Strategy | None) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def worker_dir(strategy: tf.distribute.Strategy | None) -> str | None:
    """For a worker that is not the chief of a multi-worker strategy, a subdirectory name ("workers/worker-1") for
    its checkpoints and logs, so workers sharing a run directory do not write the same files; else None."""
    if strategy is None or strategy.extended.should_checkpoint:
        return None
    resolver = strategy.cluster_resolver
    return os.path.join("workers", f"{resolver.task_type}-{resolver.task_id}")
