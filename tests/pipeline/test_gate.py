"""The blessing gate end to end: a worse candidate is not exported, a better one is; killed training resumes."""

import json
import os
import signal
import subprocess
import sys

import pytest

from common.errors import EXIT_NOT_BLESSED
from components.export import existing_versions
from datasources.synthetic_pets import write_synthetic_pets
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.run import run_pipeline
from tests.conftest import TINY_TRAINING, set_flags

pytestmark = pytest.mark.slow  # trains, runs Beam jobs or subprocess servers: left out of make test-fast

# The shared tiny training (tests/conftest.py), with a wider backbone that learns enough for the gate to judge,
# and the gate's bars back; every use below adds its own train.epochs.
QUICK = [
    *TINY_TRAINING,
    "train.filters=16,32,64",
    "bless.max_regression=0.05",
    "bless.lower_bounds=species_accuracy>=0.3,breed_top1_accuracy>=0.05",  # tiny data: modest bars
]


@pytest.fixture(scope="module")
def gate_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    write_synthetic_pets(root / "data", per_breed=20, seed=5)
    base = [f"work_dir={root / 'work'}", f"data.data_dir={root / 'data'}", *QUICK]
    first = run_pipeline(load_config(None, [*base, "train.epochs=12"]), [])
    # One step at a negligible learning rate, no warm start: barely better than chance.
    worse_code = main(
        ["run", "--work-dir", str(root / "work"), "--data-dir", str(root / "data")]
        + set_flags(QUICK, "train.epochs=1", "train.learning_rate=1e-7", "train.warm_start=false")
    )
    # Same data and settings as the first: without force this would be "nothing to do". Warm-starts from the first.
    better = run_pipeline(load_config(None, [*base, "train.epochs=12"]), [], force=True)
    return root, first, worse_code, better


def test_first_model_is_blessed_by_absolute_bounds_and_exported(gate_runs):
    root, first, _, _ = gate_runs
    assert first.blessing["blessed"] and "first model" in first.blessing["reason"]
    assert first.version == 1 and first.baseline_metrics is None
    assert os.path.isfile(os.path.join(first.report))


def test_worse_candidate_is_not_blessed_and_not_exported(gate_runs, capsys):
    root, first, worse_code, better = gate_runs
    assert worse_code == EXIT_NOT_BLESSED
    runs = sorted((root / "work" / "runs").iterdir())
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    assert metrics["blessing"]["blessed"] is False
    failed = [c for c in metrics["blessing"]["checks"] if not c["passed"]]
    assert failed and metrics["test"]["breed_top1_accuracy"] < first.metrics["breed_top1_accuracy"] - 0.05
    assert metrics["baseline"]["breed_top1_accuracy"] == pytest.approx(first.metrics["breed_top1_accuracy"])
    assert (runs[1] / "report" / "index.html").is_file()
    # nothing was exported by the worse run: the next version number went to the better candidate
    assert better.version == 2


def test_better_candidate_is_blessed_against_the_served_model(gate_runs):
    _, first, _, better = gate_runs
    assert better.blessing["blessed"], better.blessing
    assert better.baseline_version == 1
    kinds = {c["kind"] for c in better.blessing["checks"]}
    assert kinds == {"lower_bound", "no_regression"}
    assert better.metrics["breed_top1_accuracy"] >= first.metrics["breed_top1_accuracy"] - 0.05
    assert existing_versions(os.path.dirname(better.version_path)) == [1, 2]


def test_broken_served_model_fails_closed(gate_runs, tmp_path):
    root, _, _, _ = gate_runs
    work = tmp_path / "work"
    broken = work / "serving" / "pets" / "7"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a model")
    config = load_config(None, [f"work_dir={work}", f"data.data_dir={root / 'data'}", *QUICK, "train.epochs=1"])
    summary = run_pipeline(config, [])
    assert not summary.blessing["blessed"]
    assert "the served model could not be evaluated (version 7" in summary.blessing["reason"]
    assert existing_versions(str(work / "serving" / "pets")) == [7]


RESUME_SCRIPT = """
import logging, os, signal, sys
logging.basicConfig(level=logging.INFO)


class KillAt(logging.Handler):  # a crash at a known point: SIGKILL as the log line containing KILL_AT is written
    def emit(self, record):
        if os.environ.get("KILL_AT") and os.environ["KILL_AT"] in record.getMessage():
            os.kill(os.getpid(), signal.SIGKILL)


logging.getLogger().addHandler(KillAt())
from pipeline.config import load_config
from pipeline.stages.train import train as train_stage
from pipeline.spans import span_window
from schemas import load_hierarchy, schema_for
config = load_config(None, sys.argv[1:])
h = load_hierarchy()
model, history = train_stage(config, span_window(config.work_dir, 1), schema_for(h), h)
print("EPOCHS_RUN", len(history["loss"]))
"""


def test_killed_training_resumes_from_the_last_checkpoint(gate_runs):
    root, _, _, _ = gate_runs
    overrides = [
        f"work_dir={root / 'work'}",
        f"data.data_dir={root / 'data'}",
        *QUICK,
        "train.epochs=6",
        "train.early_stopping_patience=0",
        "train.warm_start=false",
    ]
    metadata = root / "work" / "train" / "multihead" / "checkpoints" / "training_metadata.json"
    # Killed at the end of epoch 3: its progress line is logged before its checkpoint is written, so the checkpoint
    # holds epochs 1 and 2 and epoch 3's work is lost, as in a crash in the middle of it.
    killed = subprocess.run(
        [sys.executable, "-c", RESUME_SCRIPT, *overrides],
        env={**os.environ, "KILL_AT": "epoch 3/6"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, f"training was not killed: {killed.stderr[-3000:]}"
    saved = json.loads(metadata.read_text())["epoch"]  # Keras records the number of completed epochs
    assert saved == 2
    resumed = subprocess.run(
        [sys.executable, "-c", RESUME_SCRIPT, *overrides], capture_output=True, text=True, timeout=300, check=True
    )
    epochs_run = int(resumed.stdout.split("EPOCHS_RUN")[1])
    assert "resuming from checkpoint" in resumed.stderr
    assert epochs_run == 6 - saved  # it continues, ending at 6 epochs in all, not more
    assert not metadata.exists()  # a finished training removes its checkpoint
