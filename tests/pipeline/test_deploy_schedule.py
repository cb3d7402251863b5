"""deploy/schedule/ (cron, systemd), deploy/kubernetes/ and deploy/airflow/ run `petpipe run` unattended and serve
its output with TF Serving; none of them can run here. So their files are parsed and checked against each other
and against the CLI: the `petpipe run` command lines use flags `petpipe run` has, the serving flags are flags
`petpipe serve` (which follows TF Serving's) accepts, the job and the server see the serving directory at the same
absolute path, and every scheduler treats petpipe's exit codes the same way. Airflow is not installed: the DAG file
is only parsed (ast)."""

from __future__ import annotations

import argparse
import ast
import configparser
import os
import re
import shlex

import pytest
import yaml

from common import errors
from common.errors import EXIT_NOT_BLESSED
from pipeline.cli import build_parser
from pipeline.config import load_config
from pipeline.lock import LockedError
from serving.protos import BatchingParameters, MonitoringConfig, parse_text_proto, read_text_proto

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "deploy")
SCHEDULE = os.path.join(DEPLOY, "schedule")
KUBERNETES = os.path.join(DEPLOY, "kubernetes")
DAG_FILE = os.path.join(DEPLOY, "airflow", "petpipe_dag.py")

# The Beam flags the command lines pass through `petpipe run` (not petpipe's own flags).
BEAM_FLAGS = {"--direct_running_mode=multi_processing", "--direct_num_workers=2"}
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


# ---------------------------------------------------------------------------------------------------------- cron


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


# ----------------------------------------------------------------------------------------------------- Kubernetes


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


def _serving_pod() -> dict:
    return _manifests()["Deployment", "petpipe-serving"]["spec"]["template"]


def _serving_container() -> dict:
    (container,) = _serving_pod()["spec"]["containers"]
    return container


def _flags(args: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in args)


def _mounts(pod_spec: dict, container: dict) -> dict[str, tuple[dict, dict]]:
    """{mountPath: (volumeMount, volume)} of a container."""
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    return {mount["mountPath"]: (mount, volumes[mount["name"]]) for mount in container["volumeMounts"]}


def _mount_of(path: str, mounts: dict) -> tuple[dict, dict]:
    """The mount a path lies on (the longest mountPath that contains it)."""
    containing = [mount for mount in mounts if os.path.commonpath([path, mount]) == mount]
    assert containing, f"{path} is on no volume"
    return mounts[max(containing, key=len)]


def _kubernetes_run_command() -> list[str]:
    container = _job_container()
    return [*container["command"], *container["args"]]


def test_kustomization_lists_every_manifest_in_the_directory():
    with open(os.path.join(KUBERNETES, "kustomization.yaml")) as f:
        listed = yaml.safe_load(f)["resources"]
    present = {name for name in os.listdir(KUBERNETES) if name.endswith(".yaml") and name != "kustomization.yaml"}
    assert sorted(listed) == sorted(present)
    kinds = {kind for kind, _ in _manifests()}
    assert kinds == {"CronJob", "Deployment", "Service", "PersistentVolumeClaim", "ConfigMap"}


def test_cronjob_never_overlaps_and_retries_only_what_a_retry_can_fix():
    cronjob = _cronjob()["spec"]
    assert cronjob["schedule"].split() == _crontab()[1]  # the crontab's time
    assert cronjob["concurrencyPolicy"] == "Forbid"
    assert isinstance(cronjob["startingDeadlineSeconds"], int) and cronjob["startingDeadlineSeconds"] > 0
    job = cronjob["jobTemplate"]["spec"]
    assert isinstance(job["backoffLimit"], int) and job["activeDeadlineSeconds"] > 0
    # podFailurePolicy is only allowed with restartPolicy Never; onExitCodes In may not list 0.
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    rules = job["podFailurePolicy"]["rules"]
    assert all(rule["action"] in ("FailJob", "Ignore", "Count") for rule in rules)
    disruption = [rule for rule in rules if "onPodConditions" in rule]
    assert [(r["action"], [c["type"] for c in r["onPodConditions"]]) for r in disruption] == [
        ("Ignore", ["DisruptionTarget"])
    ]
    (fail_job,) = [rule for rule in rules if rule["action"] == "FailJob"]
    exit_codes = fail_job["onExitCodes"]
    assert exit_codes["containerName"] == _job_container()["name"] and exit_codes["operator"] == "In"
    # Kubernetes cannot succeed on a non-zero exit: 5 and 6 stop the Job like 2/3/4, never retrain.
    assert set(exit_codes["values"]) == NEEDS_A_PERSON | NOT_FAILURES - {0}


def test_job_and_tf_serving_see_the_serving_dir_at_the_same_absolute_path():
    job_pod = _cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    job_mounts = _mounts(job_pod, _job_container())
    namespace, _ = build_parser().parse_known_args(_kubernetes_run_command()[1:])
    for path in (namespace.work_dir, namespace.serving_dir):
        mount, volume = _mount_of(path, job_mounts)
        assert not mount.get("readOnly") and "persistentVolumeClaim" in volume, path  # written, and kept
    data_mount, data_volume = _mount_of(namespace.data_dir, job_mounts)
    assert data_mount.get("readOnly") and "persistentVolumeClaim" in data_volume
    job_serving_mount, job_serving_volume = _mount_of(namespace.serving_dir, job_mounts)

    config_file = _flags(_serving_container()["args"])["--model_config_file"]
    assert config_file == os.path.join(namespace.serving_dir, "models.config")  # where the exporter writes it
    serving_mounts = _mounts(_serving_pod()["spec"], _serving_container())
    mount, volume = _mount_of(config_file, serving_mounts)
    assert mount["mountPath"] == job_serving_mount["mountPath"]  # models.config holds absolute base paths
    assert mount.get("readOnly") is True and volume["persistentVolumeClaim"].get("readOnly") is True
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert claim == job_serving_volume["persistentVolumeClaim"]["claimName"]
    # The init container waits for the same file on the same volume.
    (init,) = _serving_pod()["spec"]["initContainers"]
    assert config_file in init["command"][-1]
    assert _mount_of(config_file, _mounts(_serving_pod()["spec"], init))[1] == volume

    # Every claim used is defined; replicas on several nodes need a ReadWriteMany serving volume.
    manifests = _manifests()
    used = {v["persistentVolumeClaim"]["claimName"] for _, v in [*job_mounts.values(), *serving_mounts.values()]
            if "persistentVolumeClaim" in v}  # fmt: skip
    assert {("PersistentVolumeClaim", name) for name in used} <= set(manifests)
    if manifests["Deployment", "petpipe-serving"]["spec"]["replicas"] > 1:
        assert "ReadWriteMany" in manifests["PersistentVolumeClaim", claim]["spec"]["accessModes"]


def test_tf_serving_flags_are_the_compose_flags_and_petpipe_serve_accepts_them():
    container = _serving_container()
    assert container["image"] == "tensorflow/serving:2.21.0"
    args = container["args"]
    namespace, unknown = build_parser().parse_known_args(["serve", *args])
    assert unknown == []
    assert namespace.enable_batching is True and namespace.model_config_file_poll_wait_seconds == 60
    assert (namespace.port, namespace.rest_api_port) == (8500, 8501)
    with open(os.path.join(DEPLOY, "serving", "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)["services"]["tf-serving"]["command"]
    assert set(_flags(args)) == set(_flags(compose))  # the same server set-up as deploy/serving/


@pytest.mark.parametrize(
    "flag, configmap_name, repo_file, message",
    [
        (
            "--batching_parameters_file",
            "petpipe-serving-batching",
            "serving/batching_parameters.txt",
            BatchingParameters,
        ),
        (
            "--monitoring_config_file",
            "petpipe-serving-monitoring",
            "prometheus/monitoring_config.txt",
            MonitoringConfig,
        ),
    ],  # fmt: skip
)
def test_configmaps_hold_the_deploy_config_files_where_the_flags_point(flag, configmap_name, repo_file, message):
    configmap = _manifests()["ConfigMap", configmap_name]
    path = _flags(_serving_container()["args"])[flag]
    text = configmap["data"][os.path.basename(path)]
    parsed = parse_text_proto(text, message(), f"{configmap_name}.yaml")
    assert parsed == read_text_proto(os.path.join(DEPLOY, repo_file), message)
    assert parsed.ByteSize() > 0  # not an empty file
    mount, volume = _mount_of(path, _mounts(_serving_pod()["spec"], _serving_container()))
    assert mount["mountPath"] == os.path.dirname(path) and volume["configMap"]["name"] == configmap_name


def test_pods_are_annotated_for_prometheus_at_the_monitoring_config_path():
    annotations = _serving_pod()["metadata"]["annotations"]
    ports = {port["name"]: port["containerPort"] for port in _serving_container()["ports"]}
    monitoring = read_text_proto(os.path.join(DEPLOY, "prometheus", "monitoring_config.txt"), MonitoringConfig)
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["http"])
    assert annotations["prometheus.io/path"] == monitoring.prometheus_config.path


def test_probes_ask_the_rest_api_for_the_model_and_the_service_exposes_both_ports():
    container = _serving_container()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    rest_port = int(_flags(container["args"])["--rest_api_port"])
    model = load_config(None, []).export.model_name
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == f"/v1/models/{model}"
        assert ports.get(http["port"], http["port"]) == rest_port
    service = _manifests()["Service", "petpipe-serving"]["spec"]
    assert service["type"] == "ClusterIP"
    assert service["selector"].items() <= _serving_pod()["metadata"]["labels"].items()
    exposed = {port["port"]: ports.get(port["targetPort"], port["targetPort"]) for port in service["ports"]}
    assert exposed == {8500: int(_flags(container["args"])["--port"]), 8501: rest_port}


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
