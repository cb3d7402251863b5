"""Scheduled retraining, unattended: days of runs on arriving spans, overlapping runs, runs killed at every stage
and resumed, and the failures a scheduler meets (corrupt store, unwritable serving directory, full disk)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf

from components.export import existing_versions
from datasources.synthetic_pets import write_synthetic_pets
from pipeline.cli import main
from tests.conftest import TINY_TRAINING, set_flags

pytestmark = pytest.mark.slow  # trains, runs Beam jobs or subprocess servers: left out of make test-fast

QUICK = [  # the shared tiny training (tests/conftest.py), a little bigger, with a window of two spans
    *TINY_TRAINING,
    "train.filters=8,16",
    "train.epochs=3",
    "train.span_window=2",
    "export.warmup_requests=1",
    "bless.lower_bounds=species_accuracy>=0.1",  # tiny data: the gate's absolute bar is not what is tested here
    "bless.no_regression=",  # no comparison with the served model: the tiny candidates are noisy
]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_args(work, data) -> list[str]:
    return ["run", "--work-dir", str(work), "--data-dir", str(data), *set_flags(QUICK)]


def _add_span(data, span: int, seed: int, drop_species: str | None = None) -> None:
    """data/span-N in the Oxford layout; with drop_species, that species' lines and images are removed (a broken
    label distribution)."""
    root = data / f"span-{span}"
    write_synthetic_pets(root, per_breed=4, seed=seed)
    if drop_species:
        cats = drop_species == "cat"
        for name in ("trainval.txt", "test.txt", "list.txt"):
            path = root / "annotations" / name
            kept = [line for line in path.read_text().splitlines(keepends=True) if not _is_species(line, cats)]
            path.write_text("".join(kept))


def _is_species(line: str, cats: bool) -> bool:
    if line.startswith("#") or not line.strip():
        return False
    return (line.split()[2] == "1") == cats  # SPECIES column: 1 cat, 2 dog


def test_three_scheduled_days(tmp_path, capsys):
    work, data = tmp_path / "work", tmp_path / "data"
    served = work / "serving" / "pets"

    _add_span(data, 1, seed=1)  # day 1: the first span
    assert main(_run_args(work, data)) == 0
    assert existing_versions(str(served)) == [1]
    capsys.readouterr()
    trainings = sorted(work.rglob("events.out.tfevents*"))  # every training writes new TensorBoard event files
    assert trainings

    assert main(_run_args(work, data)) == 0  # day 2: nothing new
    assert "nothing to do" in capsys.readouterr().out
    assert sorted(work.rglob("events.out.tfevents*")) == trainings  # it did not train

    _add_span(data, 2, seed=2, drop_species="cat")  # day 3: a span with no cats at all
    assert main(_run_args(work, data)) == 4
    assert "severe anomalies" in capsys.readouterr().err
    assert existing_versions(str(served)) == [1]  # v1 still served

    _add_span(data, 3, seed=3)  # day 4: a good span
    assert main(_run_args(work, data)) == 0
    assert existing_versions(str(served)) == [1, 2]
    metadata = json.loads((served / "2" / "assets.extra" / "petpipe.json").read_text())
    assert [os.path.basename(d) for d in metadata["trained_on"]] == ["span-1", "span-3"]  # window of 2: not span-2
    capsys.readouterr()

    assert main(["history", "--work-dir", str(work)]) == 0
    history = capsys.readouterr().out
    outcomes = re.findall(r"^\s+\d+\s+\S+ \S+\s+\S+\s+(pushed|nothing to do|ValidationError)\s+(\d+)", history, re.M)
    assert outcomes == [("pushed", "0"), ("nothing to do", "0"), ("ValidationError", "4"), ("pushed", "0")]
    assert "ingest     cached" in history and "ingest     failed" in history

    assert main(["lineage", "2", "--work-dir", str(work)]) == 0
    lineage = capsys.readouterr().out
    assert "pushed_version" in lineage and "run 4 export" in lineage and "run 4 train" in lineage
    assert "span 1;" in lineage and "span 3;" in lineage and "span 2" not in lineage
    assert main(["lineage", "1", "--work-dir", str(work)]) == 0
    assert "run 1 export" in capsys.readouterr().out


def _start(args: list[str], log_path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log_path, "w") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )


def _wait_for(log_path, pattern: str, process, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log_path) as f:
            if re.search(pattern, f.read()):
                return
        if process.poll() is not None:
            break
        time.sleep(0.02)
    with open(log_path) as f:
        raise AssertionError(f"never saw {pattern!r}; exit {process.poll()}:\n{f.read()[-3000:]}")


def test_a_second_run_while_one_is_active_exits_locked(tmp_path, capsys):
    work, data = tmp_path / "work", tmp_path / "data"
    _add_span(data, 1, seed=1)
    first = _start(_run_args(work, data), tmp_path / "first.log")
    try:
        _wait_for(tmp_path / "first.log", r"ingest\+preprocess: start", first)
        assert main(_run_args(work, data)) == 6
        assert first.poll() is None  # answered while the first still runs
        err = capsys.readouterr().err
        assert f"pid {first.pid}" in err and "another petpipe run holds this pipeline root" in err
    finally:
        assert first.wait(300) == 0
    assert existing_versions(str(work / "serving" / "pets")) == [1]


def _tfrecord_contents(work) -> dict[str, list[bytes]]:
    """split → sorted examples of every span (order-independent; re-serialized deterministically, because protobuf
    writes map entries — the features — in an order that may differ between processes)."""
    contents = {}
    for path in sorted(tf.io.gfile.glob(str(work / "tfrecords" / "span-*" / "*" / "*.tfrecord.gz"))):
        split = os.path.basename(os.path.dirname(path))
        contents.setdefault(split, []).extend(
            tf.train.Example.FromString(r.numpy()).SerializeToString(deterministic=True)
            for r in tf.data.TFRecordDataset(path, "GZIP")
        )
    return {split: sorted(records) for split, records in contents.items()}


def _spans(work) -> dict:
    spans = json.loads((work / "spans.json").read_text())
    return {s: (v["written"], v["quarantined"]) for s, v in spans.items()}


def test_killed_at_every_stage_then_resumed_equals_an_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    _add_span(data, 1, seed=1)
    straight = tmp_path / "straight"
    assert subprocess.run([sys.executable, "-m", "pipeline.cli", *_run_args(straight, data)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO}, capture_output=True).returncode == 0  # fmt: skip

    work = tmp_path / "work"
    # (log line after which SIGKILL lands, what must be left behind)
    kill_points = [
        (r"ingest\+preprocess: span 1 from", "data job"),  # inside the Beam job: ingest and preprocess are one job
        (r"epoch 1/3", "training"),
        (r"export: start", "export"),
    ]
    for number, (pattern, stage) in enumerate(kill_points):
        log_path = tmp_path / f"killed-{number}.log"
        child = _start(_run_args(work, data), log_path)
        _wait_for(log_path, pattern, child)
        child.send_signal(signal.SIGKILL)
        child.wait()
        # Nothing half-written where a later run or the server would pick it up: every version TF Serving would
        # load is complete, and every span the trainer would read has its outputs.
        for version in existing_versions(str(work / "serving" / "pets")):
            assert (work / "serving" / "pets" / str(version) / "saved_model.pb").exists(), stage
        if (work / "spans.json").exists():
            for entry in json.loads((work / "spans.json").read_text()).values():
                assert (Path(entry["tfrecord_dir"]) / "statistics.json").exists(), stage

    resumed = subprocess.run([sys.executable, "-m", "pipeline.cli", *_run_args(work, data)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _spans(work) == _spans(straight)
    assert _tfrecord_contents(work) == _tfrecord_contents(straight)
    assert existing_versions(str(work / "serving" / "pets")) == [1]  # one push, however many attempts
    assert not [n for n in os.listdir(work / "serving" / "pets") if n.startswith("_staging-")]
    log = resumed.stdout + resumed.stderr
    assert "ended without finishing" in log  # the killed runs are marked in the store
    history = subprocess.run([sys.executable, "-m", "pipeline.cli", "history", "--work-dir", str(work)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True).stdout  # fmt: skip
    assert history.count("killed") >= 3 and "pushed" in history


def test_corrupt_store_unwritable_serving_dir_and_full_disk(tmp_path, capsys, monkeypatch, caplog):
    work, data = tmp_path / "work", tmp_path / "data"
    _add_span(data, 1, seed=1)
    work.mkdir()
    (work / "metadata.sqlite").write_bytes(b"this is not a database" * 100)
    serving = tmp_path / "readonly-serving"
    serving.mkdir()
    serving.chmod(0o555)
    args = [*_run_args(work, data), "--serving-dir", str(serving)]
    try:
        if os.access(serving, os.W_OK):  # root ignores permission bits: make the directory unusable another way
            serving.chmod(0o755)
            shutil.rmtree(serving)
            serving.write_text("a file where the serving directory should be")
        code = main(args)
    finally:
        if serving.is_dir():
            serving.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and str(serving) in err, err
    assert list(work.glob("metadata.sqlite.corrupt-*"))  # moved aside, with a warning, and a new store began

    # A full disk during export: the error is reported, nothing is served half-written, the next run recovers.
    real_save = tf.saved_model.save

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", disk_full)
    good_serving = tmp_path / "serving"
    args = [*_run_args(work, data), "--serving-dir", str(good_serving)]
    assert main(args) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert existing_versions(str(good_serving / "pets")) == []
    monkeypatch.setattr(tf.saved_model, "save", real_save)
    with caplog.at_level(logging.INFO, logger="petpipe"):
        assert main(args) == 0
    assert existing_versions(str(good_serving / "pets")) == [1]
    assert "train: reusing the model trained by run" in caplog.text


def test_a_missing_span_is_a_clear_error(tmp_path, capsys):
    work, data = tmp_path / "work", tmp_path / "data"
    _add_span(data, 1, seed=1)
    assert main([*_run_args(work, data), "--spans", "4"]) == 2
    assert "data.spans=4: no span-<N> directory in that range (available: [1])" in capsys.readouterr().err


def test_multiworker_without_tf_config_and_an_unknown_strategy_are_one_line_errors(tmp_path, capsys, monkeypatch):
    work, data = tmp_path / "work", tmp_path / "data"
    _add_span(data, 1, seed=1)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert main([*_run_args(work, data), "--set", "train.distribute=multiworker"]) == 2
    assert capsys.readouterr().err == (
        "petpipe: error: TF_CONFIG: not set; train.distribute=multiworker needs the cluster and this task\n"
    )
    assert main([*_run_args(work, data), "--set", "train.distribute=sideways"]) == 2
    assert "train.distribute must be none, mirrored, multiworker or auto" in capsys.readouterr().err


def test_spans_and_statistics_files_go_through_gfile():
    from pipeline.spans import SpanResult, available_spans, load_spans, record_span

    for name in ("span-1", "span-3", "notes"):
        tf.io.gfile.makedirs(f"ram://petpipe-in/{name}")
    assert available_spans("ram://petpipe-in") == [1, 3]
    result = SpanResult(3, "ram://w/tfrecords/span-3", {"train": 2}, {"train": 2}, {"train": 0}, {})
    record_span("ram://w", result, "oxford")
    assert load_spans("ram://w")[3]["tfrecord_dir"] == "ram://w/tfrecords/span-3"


def test_schedule_runs_again_and_the_second_run_has_nothing_to_do(tmp_path, caplog):
    from pipeline.cli import parse_duration

    assert [parse_duration(t) for t in ("90s", "15m", "24h", "1d", "2.5")] == [90, 900, 86400, 86400, 2.5]
    work, data = tmp_path / "work", tmp_path / "data"
    _add_span(data, 1, seed=1)
    args = ["schedule", "--every", "0.1", "--max-runs", "2", *_run_args(work, data)[1:]]
    with caplog.at_level(logging.INFO, logger="petpipe"):
        assert main(args) == 0
    assert "schedule: run 1 ended with exit code 0" in caplog.text and "schedule: run 2 ended" in caplog.text
    assert "nothing to do" in caplog.text
    assert existing_versions(str(work / "serving" / "pets")) == [1]
    assert main(["schedule", "--every", "soon", *_run_args(work, data)[1:]]) == 2
