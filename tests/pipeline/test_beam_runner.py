import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

from pipeline.beam_runner import make_pipeline, user_error
from pipeline.errors import DataError


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
        "Traceback ...\n  File x\npipeline.errors.DataError: images/a.jpg (annotated at t.txt:3): not a "
        "decodable image [while running 'Preprocess']\n"
    )
    error = user_error(relayed)
    assert isinstance(error, DataError)
    assert str(error).startswith("images/a.jpg (annotated at t.txt:3)")
    assert user_error(RuntimeError("something else")) is None
    same = DataError("x")
    assert user_error(same) is same
