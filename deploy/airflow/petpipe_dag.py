"""Airflow DAG `petpipe_retrain`: the nightly `petpipe run`, with petpipe's exit codes mapped onto task states.

Install: copy this file into the DAGs folder, with petpipe installed on the workers that run it (PETPIPE_RUN below
names its entry point) and the data, work and serving directories reachable from them. Works with Airflow 2.4+
and 3.x. (On Kubernetes, deploy/kubernetes/cronjob.yaml does the same without Airflow.)

Exit codes of `petpipe run` and what this task makes of them (the same decision as deploy/schedule/ and
deploy/kubernetes/):

  0          done, or nothing to do (no new span, model current)   -> success
  5          candidate not blessed: nothing pushed, the served      -> success, with a WARNING in the task log and
             model stays (see the run's report)                        outcome "not_blessed" in the XCom: the gate
                                                                       did its job. (Airflow has no "success with
                                                                       warning" state.)
  6          locked: another run holds the work dir                 -> skipped: that run does the work
  2, 3, 4    bad input, configuration or I/O; too many records      -> failed at once, never retried: rerunning
             quarantined; severe data anomalies                        gives the same answer, a person must look
  other      a crash (1), an OOM kill (137), interrupted (130), ... -> failed, and retried twice, 15 minutes apart

Exit 2 is not retried although a few of its causes can be passing (an I/O error on a network mount): most are
configuration or input mistakes, or a full disk, that a retry 15 minutes later does not fix and only delays
reporting. Tomorrow's run retries anyway, reusing the steps this one completed (petpipe's run store).

Why a Python task and not BashOperator: BashOperator can skip on an exit code (`skip_on_exit_code=6`) but fails and
retries every other non-zero exit alike; it cannot succeed on 5 or fail 2/3/4 without retries (short of wrapping
the command in shell code that loses the distinction between them).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from datetime import timedelta

import pendulum

try:  # Airflow 3
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2.4+
    from airflow.decorators import dag, task
from airflow.exceptions import AirflowFailException, AirflowSkipException

log = logging.getLogger(__name__)

# The command: `petpipe run` with the same flags as deploy/schedule/ and deploy/kubernetes/.
PETPIPE_RUN = [
    "/opt/petpipe/.venv/bin/petpipe",  # PLACEHOLDER: the petpipe entry point on the worker
    # One JSON object per log line, copied into the task log as they come (accepted before or after `run`).
    "--log-format",
    "json",
    "run",
    "--data-dir",
    "/data/pets",  # PLACEHOLDER: where new span-<N>/ directories arrive
    "--spans",
    "latest",
    "--work-dir",
    "/var/lib/petpipe/work",  # PLACEHOLDER: TFRecords, checkpoints, reports, run store, lock
    "--serving-dir",
    "/var/lib/petpipe/serving",  # PLACEHOLDER: what TF Serving reads (pets/<version>/, models.config)
    # Beam: local, 2 worker processes. For Dataflow: --runner=DataflowRunner --project=... --region=...
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=2",
]

EXIT_NOT_BLESSED = 5
EXIT_LOCKED = 6
EXIT_NEEDS_A_PERSON = {
    2: "bad input, configuration or I/O (the log's last error line names the file, line or key)",
    3: "too many records quarantined (see span-<N>/quarantine/*.jsonl in the work dir)",
    4: "severe data anomalies (see the span's validation.json in the work dir)",
}


def run_command(command: list[str], stop_grace_seconds: float = 60.0) -> int:
    """Runs `command`, copying its output into the task log line by line; returns its exit code. If the task is
    stopped meanwhile (timeout, marked failed, worker shutdown), interrupts petpipe as Ctrl-C does (it releases
    its lock and exits 130), and kills it if it is still there after `stop_grace_seconds`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in process.stdout:
            log.info("%s", line.rstrip("\n"))
        return process.wait()
    except BaseException:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=stop_grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise


@dag(
    dag_id="petpipe_retrain",
    description="Nightly petpipe run: ingest the newest span, train, evaluate, push to TF Serving if blessed",
    # 03:17 UTC every day: at night, off the full hour when many other jobs start.
    schedule="17 3 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    # Missed nights are not replayed: one run trains on the newest span (and the last train.span_window spans),
    # so a backlog of runs would only repeat the same work.
    catchup=False,
    # Never two at once (petpipe's lock would make the second exit 6 anyway).
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=8),
    tags=["petpipe", "training"],
    doc_md=__doc__,
)
def petpipe_retrain():
    @task(
        retries=2,
        retry_delay=timedelta(minutes=15),
        # PLACEHOLDER: a hung run is stopped after 6 hours (the embedded data set takes ~3 minutes on 2 cores).
        execution_timeout=timedelta(hours=6),
    )
    def petpipe_run() -> dict:
        code = run_command(PETPIPE_RUN)
        if code == 0:
            return {"exit_code": code, "outcome": "done"}
        if code == EXIT_NOT_BLESSED:
            log.warning(
                "petpipe run: candidate NOT blessed (exit 5): nothing pushed, the served model stays; "
                "the blessing checks are in the run's report"
            )
            return {"exit_code": code, "outcome": "not_blessed"}
        if code == EXIT_LOCKED:
            raise AirflowSkipException("petpipe run: another run holds the work dir (exit 6); that run does the work")
        if code in EXIT_NEEDS_A_PERSON:
            raise AirflowFailException(f"petpipe run exited {code}: {EXIT_NEEDS_A_PERSON[code]}; not retried")
        raise RuntimeError(f"petpipe run exited {code} (a crash, an OOM kill or an interruption); retrying")

    petpipe_run()


petpipe_retrain()
