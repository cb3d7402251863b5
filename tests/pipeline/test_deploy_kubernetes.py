"""deploy/kubernetes/ cannot run here, so its manifests are parsed and checked against each other, the CLI and
deploy/serving/: the CronJob never overlaps and treats petpipe's exit codes as the other schedulers do, the serving
flags are flags `petpipe serve` (which follows TF Serving's) accepts, and the job and the server see the serving
directory at the same absolute path. The command line it shares with the other schedulers:
test_deploy_schedule.py."""

from __future__ import annotations

import os

import pytest
import yaml

from pipeline.cli import build_parser
from pipeline.config import load_config
from serving.protos import BatchingParameters, MonitoringConfig, parse_text_proto, read_text_proto
from tests.pipeline.deploy_files import (
    DEPLOY,
    KUBERNETES,
    NEEDS_A_PERSON,
    NOT_FAILURES,
    _cronjob,
    _crontab,
    _job_container,
    _kubernetes_run_command,
    _manifests,
)

# ----------------------------------------------------------------------------------------------------- Kubernetes


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
