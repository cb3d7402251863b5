"""deploy/schedule/ (cron, systemd), deploy/kubernetes/ and deploy/airflow/ run `petpipe run` unattended and serve
its output with TF Serving; none of them can run here. So their files are parsed and checked against each other
and against the CLI: the `petpipe run` command lines use flags `petpipe run` has, and every scheduler treats
petpipe's exit codes the same way. Airflow is not installed: the DAG file is only parsed (ast). The Kubernetes
manifests' own checks (serving flags, volumes, probes): test_deploy_kubernetes.py; reading the files:
deploy_files.py."""

from __future__ import annotations

import argparse
import ast
import configparser
import os
import re
import shlex

import pytest

from common import errors
from common.errors import EXIT_NOT_BLESSED
from pipeline.cli import build_parser
from pipeline.lock import LockedError
from tests.pipeline.deploy_files import (
    DAG_FILE,
    NEEDS_A_PERSON,
    NOT_FAILURES,
    SCHEDULE,
    VAR,
    _crontab,
    _crontab_run_command,
    _expand,
    _kubernetes_run_command,
    _read,
)

# The Beam flags the command lines pass through `petpipe run` (not petpipe's own flags).
BEAM_FLAGS = {"--direct_running_mode=multi_processing", "--direct_num_workers=2"}


# ---------------------------------------------------------------------------------------------------------- cron


def test_crontab_has_one_daily_job_line_that_logs_to_a_file_and_reports_only_alert_codes():
    env, schedule, command = _crontab()
    assert len(schedule) == 5 and all(re.fullmatch(r"[0-9*,/-]+", field) for field in schedule), schedule
    assert schedule[2:] == ["*", "*", "*"]  # every day
    assert "%" not in command  # cron would turn it into a newline
    assert all((m.group(1) or m.group(2)) in env for m in VAR.finditer(command) if m.group(2) != "rc")
    assert '>>"$PETPIPE_LOG" 2>&1' in command  # appended, stdout and stderr
    ok_codes = re.search(r"case \$rc in ([0-9|]+)\) ;;", command)
    assert ok_codes and {int(code) for code in ok_codes[1].split("|")} == NOT_FAILURES
    assert env["MAILTO"]  # the alert channel: cron mails what the line prints
    assert os.path.isabs(env["PETPIPE"]) and os.path.isabs(env["PETPIPE_LOG"])


# -------------------------------------------------------------------------------------------------------- systemd


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(_read(os.path.join(SCHEDULE, name)))
    return parser


def _systemd_environment() -> dict[str, str]:
    """Every Environment= line (configparser keeps only the last of repeated keys)."""
    env = {}
    for line in _read(os.path.join(SCHEDULE, "petpipe-retrain.service")).splitlines():
        if line.startswith("Environment="):
            for assignment in shlex.split(line.split("=", 1)[1]):
                name, value = assignment.split("=", 1)
                env[name] = value
    return env


def _systemd_run_command() -> list[str]:
    exec_start = _unit("petpipe-retrain.service")["Service"]["ExecStart"]
    return shlex.split(_expand(exec_start.replace("\\\n", " "), _systemd_environment()))


def test_systemd_service_is_a_oneshot_for_a_dedicated_user_with_limits_and_json_logs_in_the_journal():
    service = _unit("petpipe-retrain.service")
    assert {"Unit", "Service"} <= set(service.sections())
    unit = service["Service"]
    assert unit["Type"] == "oneshot"
    assert unit["User"] not in ("", "root") and unit["Group"]
    assert os.path.isabs(unit["WorkingDirectory"])
    assert {"PETPIPE_DATA_DIR", "PETPIPE_WORK_DIR", "PETPIPE_SERVING_DIR"} <= set(_systemd_environment())
    assert {int(code) for code in unit["SuccessExitStatus"].split()} | {0} == NOT_FAILURES
    assert int(unit["Nice"]) > 0 and unit["MemoryMax"] and unit["TimeoutStartSec"]
    assert unit["StandardOutput"] == "journal" and unit["StandardError"] == "journal"
    command = _systemd_run_command()
    assert os.path.isabs(command[0])  # systemd runs no variable as the program
    # ProtectSystem=strict leaves only the state directory writable: the work and serving dirs must be inside it.
    assert unit["ProtectSystem"] == "strict"
    state = os.path.join("/var/lib", unit["StateDirectory"])
    namespace, _ = build_parser().parse_known_args(command[1:])
    for path in (namespace.work_dir, namespace.serving_dir):
        assert os.path.commonpath([path, state]) == state, path


def test_systemd_timer_starts_the_service_daily_catching_up_after_downtime():
    timer = _unit("petpipe-retrain.timer")
    assert timer["Timer"]["Unit"] == "petpipe-retrain.service"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Timer"]["RandomizedDelaySec"]
    assert timer["Install"]["WantedBy"] == "timers.target"
    minute, hour, *_ = _crontab()[1]
    assert timer["Timer"]["OnCalendar"] == f"*-*-* {int(hour):02d}:{int(minute):02d}:00"  # the crontab's time


# -------------------------------------------------------------------------------------------------------- Airflow


def _dag_module() -> ast.Module:
    return ast.parse(_read(DAG_FILE), DAG_FILE)


def _dag_constant(name: str):
    for node in _dag_module().body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{DAG_FILE} defines no {name}")


def _dag_decorator_arguments() -> dict:
    for node in ast.walk(_dag_module()):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "dag":
                    return {k.arg: k.value for k in decorator.keywords}
    raise AssertionError(f"{DAG_FILE}: no @dag(...)")


def _airflow_run_command() -> list[str]:
    return _dag_constant("PETPIPE_RUN")


def test_airflow_dag_parses_runs_daily_one_at_a_time_and_maps_exit_codes_to_task_states():
    arguments = _dag_decorator_arguments()
    literal = {name: ast.literal_eval(arguments[name]) for name in ("dag_id", "schedule", "catchup", "max_active_runs")}
    assert literal == {"dag_id": "petpipe_retrain", "schedule": " ".join(_crontab()[1]), "catchup": False,
                       "max_active_runs": 1}  # fmt: skip
    assert os.path.basename(_airflow_run_command()[0]) == "petpipe"
    assert _dag_constant("EXIT_NOT_BLESSED") == EXIT_NOT_BLESSED
    assert _dag_constant("EXIT_LOCKED") == LockedError.exit_code
    assert set(_dag_constant("EXIT_NEEDS_A_PERSON")) == NEEDS_A_PERSON
    raised = {node.exc.func.id for node in ast.walk(_dag_module()) if isinstance(node, ast.Raise) and node.exc}
    assert {"AirflowSkipException", "AirflowFailException"} <= raised  # 6 skips; 2/3/4 fail without retries


# ------------------------------------------------------------------------------------------- all the schedulers

RUN_COMMANDS = {
    "crontab": _crontab_run_command,
    "systemd": _systemd_run_command,
    "kubernetes": _kubernetes_run_command,
    "airflow": _airflow_run_command,
}


def _parse(args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    return build_parser().parse_known_args(args)


@pytest.mark.parametrize("scheduler", RUN_COMMANDS)
def test_run_command_lines_use_flags_petpipe_run_has_and_ask_for_json_logs(scheduler):
    command = RUN_COMMANDS[scheduler]()
    assert os.path.basename(command[0]) == "petpipe"
    namespace, unknown = _parse(command[1:])
    assert namespace.command == "run"
    assert set(unknown) == BEAM_FLAGS  # the rest goes to Beam: no misspelt or misplaced petpipe flag may hide there
    assert namespace.log_format == "json"
    assert namespace.spans == "latest" and not namespace.force
    assert all(os.path.isabs(path) for path in (namespace.data_dir, namespace.work_dir, namespace.serving_dir))


def test_every_scheduler_runs_the_same_command():
    commands = {scheduler: RUN_COMMANDS[scheduler]()[1:] for scheduler in RUN_COMMANDS}
    assert all(args == commands["crontab"] for args in commands.values()), commands


def test_petpipe_schedule_named_in_the_crontab_takes_the_same_run_flags():
    crontab = _read(os.path.join(SCHEDULE, "crontab"))
    offered = re.search(r"`petpipe --log-format json schedule --every (\w+)` followed by the same run flags", crontab)
    assert offered, "the crontab's comments name the foreground alternative"
    args = _crontab_run_command()[1:]
    run = args.index("run")
    namespace, unknown = _parse([*args[:run], "schedule", "--every", offered[1], *args[run + 1 :]])
    assert namespace.command == "schedule" and namespace.every == "24h" and namespace.log_format == "json"
    assert set(unknown) == BEAM_FLAGS
    as_run = _parse(args)[0]
    assert (namespace.data_dir, namespace.work_dir, namespace.serving_dir, namespace.spans) == (
        as_run.data_dir,
        as_run.work_dir,
        as_run.serving_dir,
        as_run.spans,
    )


def test_exit_codes_named_in_the_files_are_the_ones_petpipe_uses():
    """NOT_FAILURES and NEEDS_A_PERSON come from pipeline/, and each scheduler's test compares its file with them;
    this pins them to the documented numbers that the files' comments explain, so a renumbering is noticed here."""
    codes = (errors.PetpipeError, errors.DataThresholdError, errors.ValidationError, EXIT_NOT_BLESSED, LockedError)
    assert [getattr(code, "exit_code", code) for code in codes] == [2, 3, 4, 5, 6]
