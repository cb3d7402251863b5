"""The client side (`petpipe predict` / `petpipe status`, serving/client.py) loads no server, model-building,
pipeline or Beam code: checked in a fresh interpreter, by what ends up in sys.modules.

Importing the serving API protos imports the tensorflow package, which (TF 2.21 with Keras 3) loads Keras' model
and layer modules itself; so Keras is judged against what a plain `import tensorflow` loads in the same process,
and the project's own model code by name (components.*)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.image_factory import jpeg_bytes
from tests.serving.server_process import REPO

KERAS_MODEL_BUILDING = ("keras.src.models", "keras.src.layers")
# serving/ modules the client path may load; the server side (server, core, bundle, json_tensor, ...) is not here.
CLIENT_SERVING_MODULES = {"serving", "serving.client", "serving.grpc_options"}

# Prints {"tensorflow": modules after a plain `import tensorflow`, "<step>": modules after each step}.
_PROBE = """
import json, sys
snapshots = {{}}
{steps}
print(json.dumps({{name: sorted(modules) for name, modules in snapshots.items()}}))
"""


def _modules_after(steps: str) -> dict[str, set[str]]:
    code = _PROBE.format(steps=steps)
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: set(modules) for name, modules in json.loads(done.stdout.splitlines()[-1]).items()}


def _under(modules: set[str], *packages: str) -> set[str]:
    return {m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)}


def _assert_client_side_only(modules: set[str], tensorflow_alone: set[str]) -> None:
    assert _under(modules, "apache_beam", "components") == set()
    assert _under(modules, "serving") <= CLIENT_SERVING_MODULES, _under(modules, "serving") - CLIENT_SERVING_MODULES
    # What TF itself does not load of Keras' model building, the client must not load either.
    assert _under(modules, *KERAS_MODEL_BUILDING) - tensorflow_alone == set()


def test_importing_the_client_loads_no_server_model_pipeline_or_beam_code():
    snapshots = _modules_after(
        "import tensorflow\n"
        "snapshots['tensorflow'] = set(sys.modules)\n"
        "import serving.client\n"
        "snapshots['client'] = set(sys.modules)\n"
    )
    client = snapshots["client"]
    assert "serving.client" in client and "tensorflow_serving.apis.predict_pb2" in client  # the probe ran
    _assert_client_side_only(client, snapshots["tensorflow"])
    assert _under(client, "pipeline") == set()


def test_petpipe_predict_loads_only_the_cli_and_the_client(tmp_path):
    image = tmp_path / "pet.jpg"
    image.write_bytes(jpeg_bytes(0))
    # `predict --help` first (it should not even import TensorFlow), then a real predict to a port nothing listens
    # on, which fails at once (connection refused) after importing everything a predict needs.
    snapshots = _modules_after(
        "from pipeline.cli import main\n"
        "try:\n"
        "    main(['predict', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "snapshots['help'] = set(sys.modules)\n"
        f"code = main(['predict', '--server', '127.0.0.1:9', '--timeout', '0.1', {str(image)!r}])\n"
        "assert code == 2, code\n"
        "snapshots['predict'] = set(sys.modules)\n"
    )
    assert _under(snapshots["help"], "tensorflow", "serving", "keras") == set()
    predict = snapshots["predict"]
    assert "serving.client" in predict  # the predict path really ran
    # The command keeps TensorFlow's __init__ from importing Keras (and matplotlib) eagerly: none of it is loaded.
    _assert_client_side_only(predict, set())
    assert _under(predict, "keras", "matplotlib") == set()
    # Predicting loads no pipeline module beyond the command line's own.
    assert _under(predict, "pipeline") == _under(snapshots["help"], "pipeline")
