"""deploy/'s files as the tests of them (tests/pipeline/test_deploy_*.py) read them: where they are, the exit codes
every scheduler must treat alike, the crontab's job line, and the Kubernetes manifests with the CronJob's container;
with the `petpipe run` command line the crontab and the CronJob give."""

from __future__ import annotations

import os
import re
import shlex

import yaml

from common import errors
from common.errors import EXIT_NOT_BLESSED
from pipeline.lock import LockedError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "deploy")
SCHEDULE = os.path.join(DEPLOY, "schedule")
KUBERNETES = os.path.join(DEPLOY, "kubernetes")
DAG_FILE = os.path.join(DEPLOY, "airflow", "petpipe_dag.py")


# What every scheduler must agree on: exit codes that are normal outcomes (no alert) and those that need a person.
NOT_FAILURES = {0, EXIT_NOT_BLESSED, LockedError.exit_code}
NEEDS_A_PERSON = {errors.PetpipeError.exit_code, errors.DataThresholdError.exit_code, errors.ValidationError.exit_code}
VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _expand(text: str, env: dict[str, str]) -> str:
    """$NAME and ${NAME} as /bin/sh (cron) and systemd expand them; a name not in `env` fails the test."""
    return VAR.sub(lambda m: env[m.group(1) or m.group(2)], text)


def _crontab() -> tuple[dict[str, str], list[str], str]:
    """(variables, the five schedule fields, the command) of deploy/schedule/crontab's one job line."""
    env, jobs = {}, []
    for line in _read(os.path.join(SCHEDULE, "crontab")).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assignment = re.match(r"^([A-Za-z_]\w*)\s*=\s*(.*)$", line)
        if assignment:
            env[assignment[1]] = assignment[2]
        else:
            jobs.append(line)
    assert len(jobs) == 1, jobs
    fields = jobs[0].split(None, 5)
    return env, fields[:5], fields[5]


def _crontab_run_command() -> list[str]:
    env, _, command = _crontab()
    return shlex.split(_expand(command.split(">>")[0], env))  # up to the log redirection


def _manifests() -> dict[tuple[str, str], dict]:
    """{(kind, name): object} of every file kustomization.yaml lists."""
    with open(os.path.join(KUBERNETES, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    objects = {}
    for resource in kustomization["resources"]:
        with open(os.path.join(KUBERNETES, resource)) as f:
            for document in yaml.safe_load_all(f):
                key = (document["kind"], document["metadata"]["name"])
                assert key not in objects, key
                objects[key] = document
    return objects


def _cronjob() -> dict:
    return _manifests()["CronJob", "petpipe-retrain"]


def _job_container() -> dict:
    (container,) = _cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container


def _kubernetes_run_command() -> list[str]:
    container = _job_container()
    return [*container["command"], *container["args"]]
