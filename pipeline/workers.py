"""`petpipe run` with train.distribute=multiworker: every task of the TF_CONFIG cluster runs `petpipe run` on the
same shared work dir, and trains together under MultiWorkerMirroredStrategy; only the chief does anything else.

Roles (the TensorFlow convention): the chief is task chief-0, or worker-0 when the cluster has no chief job. The
chief takes the pipeline lock, runs the data stage, decides (train, or nothing to do), trains, evaluates, blesses,
exports and records the run. Every other worker trains, and writes only in its scratch dir,
<work_dir>/train/<architecture>/workers/<task>-<index>/ (its checkpoints, TensorBoard logs, request and final weights).

The handshake (files in the shared work dir; no sleeps, each wait polls under a timeout):
  1. a worker writes request.json {"nonce": <random>} in its scratch dir, then polls <work_dir>/multiworker/ready.json
     until it answers its nonce (so a marker left by an earlier run is never taken for this one's);
  2. the chief, once it has decided, waits for every worker's request, writes ready.json (atomically) with the
     nonces it answers and the decision — {"action": "train", "spans": [...], "settings": <fingerprint>,
     "warm_start": ..., "checkpoints": <the chief's, which the worker copies to resume from the same epoch>},
     {"action": "stop", "reason": ...} (nothing to do: the workers exit 0 too) or
     {"action": "fail", "message": ...} (the chief failed before training: the workers exit 2) — and deletes
     the requests it answered.
Both waits give up after PETPIPE_MULTIWORKER_TIMEOUT seconds (default 1800). Once training runs, a task that
dies stops sending heartbeats to TensorFlow's coordination service, which aborts the collectives of the others
(10-50 s in the tests): the chief exits 2 with one line naming the task (one_line_training_errors) and pushes
nothing; a re-run resumes every worker from the chief's last epoch checkpoint (resume_from).

Creating the MultiWorkerMirroredStrategy, at program start, waits for every task of the cluster to register with
the coordination service on the chief; TensorFlow waits forever by default, here it gives up after the same timeout
(components.distribute.bound_cluster_registration) and the task exits 2 with one line (joining_the_cluster).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from common.errors import ConfigError, PetpipeError

log = logging.getLogger("petpipe")

TRAINING_JOBS = ("chief", "worker")  # TF_CONFIG jobs that train (a "ps" or "evaluator" job does not)
READY_FILE = os.path.join("multiworker", "ready.json")
REQUEST_FILE = "request.json"
POLL_SECONDS = 0.2
FAILURE_WAIT_SECONDS = 30.0  # how long a failed chief waits for workers' requests to tell them


def timeout_seconds() -> float:
    return float(os.environ.get("PETPIPE_MULTIWORKER_TIMEOUT", "1800"))


@dataclass(frozen=True)
class Role:
    task_type: str  # chief | worker
    index: int
    cluster: dict[str, list[str]]  # the training jobs' addresses

    @property
    def name(self) -> str:
        return f"{self.task_type}-{self.index}"

    @property
    def is_chief(self) -> bool:
        return self.name == self.chief_name

    @property
    def chief_name(self) -> str:
        return f"{self._chief_job}-0"

    @property
    def chief_address(self) -> str:
        return self.cluster[self._chief_job][0]

    @property
    def _chief_job(self) -> str:
        return "chief" if self.cluster.get("chief") else "worker"

    @property
    def others(self) -> list[str]:
        """The names of the training tasks other than the chief."""
        names = [f"{job}-{i}" for job in TRAINING_JOBS for i in range(len(self.cluster.get(job, [])))]
        return [name for name in names if name != self.chief_name]


def role_from_tf_config(text: str) -> Role:
    """This task's role from TF_CONFIG's text; ConfigError ("TF_CONFIG: <field>: ...") when it cannot say."""
    if not text.strip():
        raise ConfigError("TF_CONFIG: not set; train.distribute=multiworker needs the cluster and this task")
    from components.distribute import parse_tf_config  # imports TensorFlow: only when a role is needed

    try:
        parsed = parse_tf_config(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    cluster = parsed.get("cluster")
    if not isinstance(cluster, dict) or not any(cluster.get(job) for job in TRAINING_JOBS):
        raise ConfigError('TF_CONFIG: cluster: missing, or without a "chief" or "worker" job')
    seen: dict[str, str] = {}
    for job, addresses in cluster.items():
        if not isinstance(addresses, list):
            raise ConfigError(f"TF_CONFIG: cluster.{job}: expected a list of host:port, got {addresses!r}")
        for i, address in enumerate(addresses):
            field = f"cluster.{job}[{i}]"
            if not isinstance(address, str) or not address.rpartition(":")[2].isdigit():
                raise ConfigError(f"TF_CONFIG: {field}: expected host:port, got {address!r}")
            if address in seen:
                raise ConfigError(f"TF_CONFIG: {field}: {address} is also {seen[address]}; each task needs its own")
            seen[address] = field
    if len(cluster.get("chief") or []) > 1:
        raise ConfigError(f"TF_CONFIG: cluster.chief: one chief at most, got {len(cluster['chief'])}")
    task = parsed.get("task")
    if not isinstance(task, dict):
        raise ConfigError('TF_CONFIG: task: missing; expected {"type": "worker", "index": N}')
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in TRAINING_JOBS:
        raise ConfigError(f"TF_CONFIG: task.type: expected chief or worker, got {task_type!r}")
    count = len(cluster.get(task_type) or [])
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise ConfigError(f"TF_CONFIG: task.index: {index!r} is not a task of cluster.{task_type} ({count} listed)")
    return Role(task_type, index, {job: list(cluster.get(job) or []) for job in TRAINING_JOBS})


def scratch_dir(work_dir: str, architecture: str, task_name: str) -> str:
    """A worker's own directory (components/distribute.worker_dir under the train stage's run dir)."""
    return os.path.join(work_dir, "train", architecture, "workers", task_name)


def settings_fingerprint(config) -> str:
    """What every worker must agree on to train together: the train section and the image size."""
    from pipeline import fingerprint
    from pipeline.config import to_dict

    return fingerprint.of_value([to_dict(config.train), config.preprocess.image_size])


def _write_json(path: str, value: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    staging = f"{path}.{secrets.token_hex(4)}.partial"
    with open(staging, "w") as f:
        json.dump(value, f)
    os.replace(staging, path)  # readers never see half a file


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _poll(what: str, ready: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while (value := ready()) is None:
        if time.monotonic() > deadline:
            raise PetpipeError(f"multiworker: {what} within {timeout:.0f} s (PETPIPE_MULTIWORKER_TIMEOUT)")
        time.sleep(POLL_SECONDS)  # polling a shared file under a deadline
    return value


class Coordinator:
    """The chief's side of the handshake; run_pipeline calls stop() or train() once it has decided."""

    def __init__(self, config, role: Role):
        self.config, self.role = config, role
        self.told = False

    def _tell(self, decision: dict, timeout: float) -> None:
        work_dir, arch = self.config.work_dir, self.config.train.architecture
        requests = {name: os.path.join(scratch_dir(work_dir, arch, name), REQUEST_FILE) for name in self.role.others}
        answers = {}
        for name, path in requests.items():
            request = _poll(f"no request from {name}", lambda path=path: _read_json(path), timeout)
            answers[name] = request["nonce"]
        _write_json(os.path.join(work_dir, READY_FILE), {"answers": answers, **decision})
        for path in requests.values():
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        self.told = True
        log.info("multiworker: told %s: %s", ", ".join(answers) or "no worker", decision["action"])

    def stop(self, reason: str) -> None:
        self._tell({"action": "stop", "reason": reason}, timeout_seconds())

    def train(self, spans: list[str], warm_start: str | None) -> None:
        checkpoints = os.path.join(self.config.work_dir, "train", self.config.train.architecture, "checkpoints")
        decision = {"spans": spans, "settings": settings_fingerprint(self.config), "warm_start": warm_start}
        decision["checkpoints"] = checkpoints if os.path.isdir(checkpoints) else None
        self._tell({"action": "train", **decision}, timeout_seconds())

    @contextlib.contextmanager
    def telling_failures(self) -> Iterator[None]:
        """A chief that fails before telling the workers tells them it failed (they exit 2, not at a timeout)."""
        try:
            yield
        except BaseException as exc:
            if not self.told:
                with contextlib.suppress(PetpipeError):
                    self._tell({"action": "fail", "message": f"{exc}"[:500]}, FAILURE_WAIT_SECONDS)
            raise


@contextlib.contextmanager
def joining_the_cluster(role: Role, timeout: float) -> Iterator[None]:
    """TensorFlow's error when the cluster did not gather within `timeout` (make_strategy's registration barrier),
    as one PetpipeError line naming the tasks that did not join, or the chief this task could not reach."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.DeadlineExceededError as exc:
        raise PetpipeError(
            f"multiworker: the cluster did not gather within {timeout:.0f} s (PETPIPE_MULTIWORKER_TIMEOUT): "
            f"{describe_missing_tasks(str(exc.message), role)}; nothing run"
        ) from None


def describe_missing_tasks(message: str, role: Role) -> str:
    """Which tasks did not join, from the chief's barrier error ("... Some timed out task names:
    /job:worker/replica:0/task:1 ..."); a worker only learns that the chief did not answer."""
    import re

    if "timed out task names" in message:
        listed = message.split("timed out task names", 1)[1].split("Additional GRPC error", 1)[0]
        tasks = sorted({f"{job}-{index}" for job, index in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", listed)})
        if tasks:
            return f"{', '.join(tasks)} did not start or cannot reach {role.chief_name}"
    if role.is_chief:
        return f"not every task registered ({message.splitlines()[0][:200] if message else 'no detail'})"
    return f"{role.chief_name} at {role.chief_address} did not answer {role.name}"


@contextlib.contextmanager
def one_line_training_errors(role: Role) -> Iterator[None]:
    """TensorFlow's error when a task of the cluster is gone (a collective op or the health check fails), as one
    PetpipeError line instead of a traceback."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.OpError as exc:
        raise PetpipeError(
            f"multiworker: training failed on {role.name}: {describe_cluster_error(str(exc.message))} "
            f"({type(exc).__name__}); nothing pushed, a re-run resumes from the last checkpoint"
        ) from None


def describe_cluster_error(message: str) -> str:
    """One line out of TensorFlow's multi-line collective error: which tasks stopped, when it says so."""
    import re

    if "unhealthy" in message:  # "The following tasks are unhealthy (...):\n/job:worker/replica:0/task:1\nThe tasks..."
        listed = message.split("unhealthy", 1)[1].split("The tasks have crashed", 1)[0]
        tasks = sorted({f"{job}-{index}" for job, index in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", listed)})
        if tasks:
            return f"{', '.join(tasks)} stopped (no heartbeat)"
    # "Collective ops is aborted by: recvmsg:Connection reset by peer\nAdditional GRPC error information from
    # remote target /job:worker/replica:0/task:1 while calling ...": the connection to that task broke.
    remote = sorted(
        {f"{job}-{index}" for job, index in re.findall(r"remote target /job:(\w+)/replica:\d+/task:(\d+)", message)}
    )
    lines = [line.strip() for line in message.splitlines() if line.strip() and "Graph execution error" not in line]
    if remote:
        cause = next((line for line in lines if "aborted by:" in line), lines[0] if lines else "")
        return f"{', '.join(remote)} stopped or unreachable ({cause.split('aborted by:', 1)[-1].strip()[:200]})"
    return f"a task of the cluster stopped or is unreachable: {lines[0][:300] if lines else message[:300]}"


def wait_for_chief(config, role: Role) -> dict:
    """A worker's side of the handshake: the chief's decision for this run."""
    scratch = scratch_dir(config.work_dir, config.train.architecture, role.name)
    request = os.path.join(scratch, REQUEST_FILE)
    nonce = secrets.token_hex(8)
    _write_json(request, {"nonce": nonce})
    ready = os.path.join(config.work_dir, READY_FILE)

    def answered() -> dict | None:
        marker = _read_json(ready)
        return marker if marker and marker.get("answers", {}).get(role.name) == nonce else None

    try:
        return _poll("no decision from the chief", answered, timeout_seconds())
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(request)


def resume_from(chief_checkpoints: str | None, own_checkpoints: str) -> None:
    """Every worker resumes from the same epoch as the chief, or all start afresh: the worker's checkpoints are
    replaced by a copy of the chief's (its own may be older, or half-written when it was killed). The chief's
    are not written before this worker trains its first epoch with it."""
    import shutil

    shutil.rmtree(own_checkpoints, ignore_errors=True)
    if chief_checkpoints:
        shutil.copytree(chief_checkpoints, own_checkpoints)


def run_worker(config, role: Role) -> int:
    """A non-chief task of `petpipe run`: wait for the chief's decision, then train with it (or exit as told)."""
    from pipeline.stages import train
    from schemas import load_hierarchy, schema_for

    log.info("multiworker: %s waiting for the chief's decision", role.name)
    decision = wait_for_chief(config, role)
    if decision["action"] == "stop":
        print(f"petpipe run: nothing to do (decided by the chief): {decision['reason']}")
        return 0
    if decision["action"] == "fail":
        raise PetpipeError(f"multiworker: the chief failed: {decision['message']}")
    if decision["settings"] != settings_fingerprint(config):
        raise ConfigError(f"multiworker: {role.name}'s train settings or image size differ from the chief's")
    if train.warm_start_weights(config) != decision["warm_start"]:
        raise PetpipeError(f"multiworker: {role.name} sees other warm-start weights than the chief")
    scratch = scratch_dir(config.work_dir, config.train.architecture, role.name)
    resume_from(decision["checkpoints"], os.path.join(scratch, "checkpoints"))
    hierarchy = load_hierarchy(config.data.hierarchy) if config.data.hierarchy else load_hierarchy()
    model, _ = train.train(config, decision["spans"], schema_for(hierarchy), hierarchy)
    weights = os.path.join(scratch, "final.weights.h5")
    model.save_weights(weights)
    print(f"petpipe run: {role.name} trained on {len(decision['spans'])} span(s); final weights in {weights}")
    return 0
