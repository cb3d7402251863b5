"""Start-up: a run that finds it has nothing to do decides so before TensorFlow or Apache Beam is imported, and the
checks that need TensorFlow (the gate's metric names) still run before any work is computed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.cli import main
from tests.conftest import TINY_TRAINING, set_flags
from tests.serving.server_process import REPO

SETTINGS = (*TINY_TRAINING, "export.warmup_requests=0", "data.eval_fraction=0")  # every breed in train
HEAVY = ("tensorflow", "apache_beam", "keras", "matplotlib")

# Runs the CLI in a fresh interpreter; prints its exit code and which heavy packages it imported.
_PROBE = """
import json, sys
from pipeline.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "imported": sorted(p for p in %r if p in sys.modules)}))
"""


def _run_in_fresh_interpreter(argv: list[str]) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE % (HEAVY,), *argv],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout + done.stderr


@pytest.mark.slow  # one whole tiny run
def test_nothing_to_do_is_decided_without_importing_tensorflow_or_beam(tiny_data, tmp_path, capsys):
    argv = ["run", "--data-dir", tiny_data, "--work-dir", str(tmp_path / "work"), *set_flags(SETTINGS)]
    assert main(argv) == 0
    timed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("seconds:"))
    # The imports, made when the first work is computed, are an entry of their own, before the data stage's.
    assert [part.split()[0] for part in timed[len("seconds:") :].split(",")] == [
        "make-data", "imports", "ingest+preprocess", "train", "evaluate", "export", "smoke-query"]  # fmt: skip

    probe, out = _run_in_fresh_interpreter(argv)
    assert probe == {"code": 0, "imported": []}, out[-3000:]
    assert "petpipe run: nothing to do: no new data or settings since run 1; version 1 is serving" in out

    # A changed gate is a new decision: its metric names are checked (TensorFlow imported) before training, and a
    # name that does not exist stops the run there: no run directory, no new version.
    typo = [*argv, *set_flags("bless.lower_bounds=speceis_accuracy>=0.5")]
    probe, out = _run_in_fresh_interpreter(typo)
    assert probe["code"] == 2 and "tensorflow" in probe["imported"], out[-3000:]
    assert "unknown metric(s) 'speceis_accuracy'" in out
    assert len(os.listdir(tmp_path / "work" / "runs")) == 1
    assert os.listdir(tmp_path / "work" / "serving" / "pets") == ["1"]


def test_a_gate_naming_no_metric_fails_before_the_data_stage(tiny_data, tmp_path, capsys):
    work = tmp_path / "work"
    argv = ["run", "--data-dir", tiny_data, "--work-dir", str(work), *set_flags(SETTINGS)]
    assert main([*argv, *set_flags("bless.lower_bounds=speceis_accuracy>=0.5")]) == 2
    assert "unknown metric(s) 'speceis_accuracy'" in capsys.readouterr().err
    assert not (work / "tfrecords").exists()  # no span was computed
