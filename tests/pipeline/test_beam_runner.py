import collections
import json
import logging
import os
from dataclasses import asdict

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import DirectOptions, WorkerOptions
from apache_beam.runners.portability import prism_runner
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

from common.errors import DataError
from components.ingest import SPLITS
from components.preprocess import quarantine_path, split_pattern
from pipeline import beam_runner
from pipeline.beam_runner import make_pipeline, user_error
from pipeline.config import load_config
from tests.dirty_data import make_dirty_dataset

pytestmark = pytest.mark.slow  # trains, runs Beam jobs or subprocess servers: left out of make test-fast


@pytest.mark.parametrize("args", [[], ["--runner=DirectRunner"], ["--runner", "SwitchingDirectRunner"]])
def test_local_runs_use_fn_api_runner_not_prism(args):
    pipeline = make_pipeline(args + ["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    assert isinstance(pipeline.runner, FnApiRunner)
    direct = pipeline.options.view_as(DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (2, "multi_threading")


def test_other_runners_and_flags_pass_through():
    pipeline = make_pipeline(["--runner=BundleBasedDirectRunner", "--job_name=nightly"])
    assert type(pipeline.runner).__name__ == "BundleBasedDirectRunner"
    assert pipeline.options.get_all_options()["job_name"] == "nightly"


def test_local_pipeline_runs_and_counts():
    with make_pipeline([]) as pipeline:
        _ = pipeline | beam.Create([1, 2, 3]) | beam.Map(lambda x: beam.metrics.Metrics.counter("t", "n").inc())
    counters = pipeline.result.metrics().query()["counters"]
    assert [c.committed for c in counters if c.key.metric.name == "n"] == [3]


def test_errors_relayed_by_worker_processes_become_ours_again():
    relayed = RuntimeError(
        "Traceback ...\n  File x\ncommon.errors.DataError: images/a.jpg (annotated at t.txt:3): not a "
        "decodable image [while running 'Preprocess']\n"
    )
    error = user_error(relayed)
    assert isinstance(error, DataError)
    assert str(error).startswith("images/a.jpg (annotated at t.txt:3)")
    assert user_error(RuntimeError("something else")) is None
    same = DataError("x")
    assert user_error(same) is same


# --- local multi-worker runs: the stand-in for a distributed runner ---------------------------------------------
TWO_WORKERS = ["--direct_num_workers=2"]
# The FnApiRunner's worker handler for each running mode: 2 SDK worker subprocesses, or 2 gRPC worker threads.
WORKER_HANDLER = {"multi_processing": "SubprocessSdkWorkerHandler", "multi_threading": "EmbeddedGrpcWorkerHandler"}


@pytest.fixture
def no_prism(monkeypatch):
    """Every attempt to build the Prism runner or its job server (which downloads the binary) is recorded and
    refused. Recorded too, because DirectRunner would swallow a failing job server and fall back."""
    attempts = []

    def refuse(self, *args, **kwargs):
        attempts.append(type(self).__name__)
        raise AssertionError("the Prism runner (which downloads a binary) must never be used")

    monkeypatch.setattr(prism_runner.PrismRunner, "__init__", refuse)
    monkeypatch.setattr(prism_runner.PrismJobServer, "__init__", refuse)
    return attempts


@pytest.fixture
def started_workers(monkeypatch):
    """(handler type, worker id) of every SDK worker the FnApiRunner starts in this process."""
    started = []
    handlers = (
        worker_handlers.EmbeddedWorkerHandler,
        worker_handlers.EmbeddedGrpcWorkerHandler,
        worker_handlers.SubprocessSdkWorkerHandler,
    )
    for handler in handlers:

        def spy(self, _start=handler.start_worker):
            started.append((type(self).__name__, self.worker_id))
            return _start(self)

        monkeypatch.setattr(handler, "start_worker", spy)
    return started


@pytest.fixture
def made_pipelines(monkeypatch):
    """Every pipeline the data stage gets from make_pipeline."""
    made = []

    def spy(beam_args=None):
        made.append(make_pipeline(beam_args))
        return made[-1]

    monkeypatch.setattr(beam_runner, "make_pipeline", spy)
    return made


def _span_job(dirty_root, work, hierarchy, schema, beam_args):
    from pipeline.stages.data import run_span_job

    config = load_config(None, [f"work_dir={work}", "data.eval_fraction=0.3", "preprocess.num_shards=2"])
    return run_span_job(config, str(dirty_root), 0, hierarchy, schema, beam_args)


def _flat(value, path=""):
    """{"a/b/0": leaf, ...} of nested dicts and lists."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{path}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{path}/{i}").items()}
    return {path: value}


def _outputs(result) -> dict:
    """Everything the span job produced, order-independent: counts, examples and quarantine lines per split."""
    span_dir = result.tfrecord_dir
    examples, quarantine = {}, {}
    for split in SPLITS:
        files = tf.io.gfile.glob(split_pattern(span_dir, split))
        # Re-serialized deterministically: protobuf orders the feature map by a per-process hash seed, so the
        # bytes a worker process writes for an Example differ from the bytes this process writes for the same one.
        examples[split] = collections.Counter(
            tf.train.Example.FromString(record.numpy()).SerializeToString(deterministic=True)
            for record in tf.data.TFRecordDataset(files, compression_type="GZIP")
        )
        with open(quarantine_path(span_dir, split)) as f:
            quarantine[split] = collections.Counter(f.read().splitlines())
    with open(os.path.join(span_dir, "statistics.json")) as f:
        statistics = _flat(json.load(f))
    counts = {key: value for key, value in asdict(result).items() if key != "tfrecord_dir"}
    return {"counts": counts, "examples": examples, "quarantine": quarantine, "statistics": statistics}


@pytest.fixture(scope="module")
def dirty_data(tmp_path_factory):
    """A data set with records to quarantine at every stage of the data stage."""
    return make_dirty_dataset(tmp_path_factory.mktemp("runners") / "data")


@pytest.fixture(scope="module")
def in_process_outputs(dirty_data, hierarchy, schema, tmp_path_factory):
    """The outputs of the default run: in this process, one worker."""
    result = _span_job(dirty_data.root, tmp_path_factory.mktemp("in-process"), hierarchy, schema, [])
    return _outputs(result)


@pytest.mark.parametrize("mode", ["multi_processing", "multi_threading"])
def test_data_stage_on_two_local_workers_equals_the_in_process_run(
    mode, dirty_data, in_process_outputs, hierarchy, schema, tmp_path, no_prism, started_workers, made_pipelines
):
    beam_args = [f"--direct_running_mode={mode}", *TWO_WORKERS]
    result = _span_job(dirty_data.root, tmp_path / "work", hierarchy, schema, beam_args)

    assert no_prism == []
    [pipeline] = made_pipelines
    assert isinstance(pipeline.runner, FnApiRunner)
    direct = pipeline.options.view_as(DirectOptions)
    assert (direct.direct_running_mode, direct.direct_num_workers) == (mode, 2)
    assert {handler for handler, _ in started_workers} == {WORKER_HANDLER[mode]}
    assert len({worker for _, worker in started_workers}) == 2

    assert_outputs_equal(result, in_process_outputs, dirty_data)


def assert_outputs_equal(result, expected: dict, dirty_data) -> None:
    """A span job's outputs (`result`: its SpanResult) equal the in-process run's: counts, parsed examples and
    quarantine lines (order-independent), statistics (floats to 1e-9: sums depend on the order workers add in)."""
    outputs = _outputs(result)
    assert sum(outputs["counts"]["quarantined"].values()) == len(dirty_data.quarantined)  # the run had dirt to find
    assert outputs["counts"] == expected["counts"]
    assert outputs["examples"] == expected["examples"]
    assert outputs["quarantine"] == expected["quarantine"]
    assert outputs["statistics"].keys() == expected["statistics"].keys()
    approx = {k: pytest.approx(v, rel=1e-9) if isinstance(v, float) else v for k, v in expected["statistics"].items()}
    assert outputs["statistics"] == approx


def test_multi_processing_runs_user_code_in_two_worker_processes(tmp_path, no_prism):
    pids = tmp_path / "pids"
    pids.mkdir()
    with make_pipeline(["--direct_running_mode=multi_processing", *TWO_WORKERS]) as pipeline:
        _ = (
            pipeline
            | beam.Create(range(40))
            | beam.Reshuffle()
            | beam.Map(lambda _, into: open(os.path.join(into, str(os.getpid())), "w").close(), str(pids))
        )
    workers = {int(name) for name in os.listdir(pids)}
    assert len(workers) == 2 and os.getpid() not in workers
    assert no_prism == []


def test_errors_raised_in_worker_processes_become_ours_again():
    def reject(x):
        if x == 3:
            raise DataError(f"images/{x}.jpg: not a decodable image")
        return x

    args = ["--direct_running_mode=multi_processing", "--direct_num_workers=1"]
    with pytest.raises(RuntimeError) as failure, make_pipeline(args) as pipeline:  # relayed as text
        _ = pipeline | beam.Create(range(6)) | beam.Map(reject)
    error = user_error(failure.value)
    assert isinstance(error, DataError) and str(error).startswith("images/3.jpg: not a decodable image")


@pytest.mark.parametrize(
    "runner",
    ["direct", "Direct", "directrunner", "TestDirectRunner", "fnapirunner", "apache_beam.runners.DirectRunner"],
)
def test_every_spelling_beam_accepts_for_the_direct_runner_is_ours(runner, no_prism):
    assert isinstance(make_pipeline([f"--runner={runner}"]).runner, FnApiRunner)


def test_prism_only_when_asked_for_by_name():
    # Built, not run: running it would fetch the Prism binary (unless --prism_location names a local one).
    assert type(make_pipeline(["--runner=PrismRunner"]).runner).__name__ == "PrismRunner"


def test_worker_processes_log_beam_at_the_level_this_process_does(caplog):
    multi_processing = ["--direct_running_mode=multi_processing"]
    caplog.set_level(logging.WARNING, logger="apache_beam")
    overrides = make_pipeline(multi_processing).options.view_as(WorkerOptions).sdk_harness_log_level_overrides
    assert overrides == {"apache_beam": "WARNING", "__main__": "WARNING"}
    users = make_pipeline(multi_processing + ['--sdk_harness_log_level_overrides={"apache_beam": "DEBUG"}'])
    assert users.options.view_as(WorkerOptions).sdk_harness_log_level_overrides["apache_beam"] == "DEBUG"
    threads = make_pipeline(["--direct_running_mode=multi_threading"])  # its workers log through this process
    assert threads.options.view_as(WorkerOptions).sdk_harness_log_level_overrides is None
    caplog.set_level(logging.DEBUG, logger="apache_beam")
    assert make_pipeline(multi_processing).options.view_as(WorkerOptions).sdk_harness_log_level_overrides is None
