"""deploy/kubernetes/multiworker/ cannot run here: its manifests are parsed and checked against each other, petpipe's
own command-line parser and TF_CONFIG rules (pipeline/workers.py), and the nightly CronJob's volumes."""

from __future__ import annotations

import os
import shlex

import yaml

from pipeline.cli import build_parser
from pipeline.workers import role_from_tf_config
from tests.pipeline.deploy_files import KUBERNETES, _job_container

MULTIWORKER = os.path.join(KUBERNETES, "multiworker")


def _objects() -> dict[str, dict]:
    """{kind: object} of every file multiworker/kustomization.yaml lists (one object of each kind)."""
    with open(os.path.join(MULTIWORKER, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    listed = sorted(kustomization["resources"])
    assert listed == sorted(n for n in os.listdir(MULTIWORKER) if n.endswith(".yaml") and n != "kustomization.yaml")
    objects = {}
    for name in listed:
        with open(os.path.join(MULTIWORKER, name)) as f:
            (document,) = yaml.safe_load_all(f)
        objects[document["kind"]] = document
    return objects


def _script_lines(container: dict) -> tuple[str, list[str]]:
    """(the TF_CONFIG template, the petpipe command line) of the container's `sh -c` script."""
    assert container["command"] == ["sh", "-c"]
    lines = [line for line in container["args"][0].splitlines() if line.strip()]
    export, command = lines
    assert export.startswith('export TF_CONFIG="') and command.startswith("exec petpipe ")
    tf_config = export[len('export TF_CONFIG="') : -1].replace('\\"', '"')
    return tf_config, shlex.split(command)[2:]


def test_each_pod_gets_a_valid_tf_config_naming_the_pods_of_the_indexed_job():
    objects = _objects()
    job, service = objects["Job"], objects["Service"]
    spec = job["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    template, _ = _script_lines(container)
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    roles = [role_from_tf_config(template.replace("$JOB_COMPLETION_INDEX", str(i))) for i in range(spec["completions"])]
    assert [role.is_chief for role in roles] == [True] + [False] * (spec["completions"] - 1)  # pod 0 is the chief
    workers = roles[0].cluster["worker"]  # no "chief" job: worker 0 is the chief, as TensorFlow has it
    assert len(workers) == spec["completions"]
    # Pod i is reachable as <job>-<i>.<subdomain>, through the headless Service, on the port it exposes.
    pod_spec = spec["template"]["spec"]
    assert pod_spec["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    (port,) = (p["port"] for p in service["spec"]["ports"])
    assert workers == [f"{job['metadata']['name']}-{i}.{pod_spec['subdomain']}:{port}" for i in range(len(workers))]
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()


def test_the_command_parses_with_petpipe_and_trains_multiworker_on_the_cronjobs_paths():
    objects = _objects()
    (container,) = objects["Job"]["spec"]["template"]["spec"]["containers"]
    _, argv = _script_lines(container)
    args, beam_args = build_parser().parse_known_args(argv)
    assert args.command == "run" and beam_args == []
    assert "train.distribute=multiworker" in args.set
    nightly, _ = build_parser().parse_known_args(_job_container()["args"])
    # The same data and serving dirs as the nightly CronJob, mounted at the same paths: TF Serving picks the
    # pushed version up as it does the nightly one.
    assert (args.data_dir, args.serving_dir, args.work_dir) == (nightly.data_dir, nightly.serving_dir, nightly.work_dir)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["work"] == args.work_dir and mounts["serving"] == args.serving_dir and mounts["data"] == args.data_dir
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in objects["Job"]["spec"]["template"]["spec"]
              ["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
    # Every pod reads the chief's spans and marker from the work dir: its claim must be ReadWriteMany.
    pvc = objects["PersistentVolumeClaim"]
    assert claims["work"] == pvc["metadata"]["name"] and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claims["serving"] == "petpipe-serving" and claims["data"] == "petpipe-data"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert float(env["PETPIPE_MULTIWORKER_TIMEOUT"]) > 0
