"""Beam pipeline construction that never reaches for the network.

Beam 2.77's DirectRunner first tries the Prism runner, which downloads a binary from the internet. For the
local runners (no --runner, DirectRunner, SwitchingDirectRunner) we build the FnApiRunner ourselves — the same
runner DirectRunner falls back to, honouring --direct_num_workers and --direct_running_mode. Any other
--runner (DataflowRunner, FlinkRunner, SparkRunner, PrismRunner, ...) and every other flag pass through as given.
"""

from __future__ import annotations

import re

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import errors

LOCAL_RUNNER_NAMES = {None, "DirectRunner", "SwitchingDirectRunner", "FnApiRunner"}


def _local_fn_api_runner(options: PipelineOptions):
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    # As SwitchingDirectRunner does: hand the options to the SDK workers (used by multi-process mode).
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=provision)


def make_pipeline(beam_args: list[str] | None = None) -> beam.Pipeline:
    """A beam.Pipeline for the user's Beam flags; local runs use the in-process FnApiRunner, never Prism."""
    options = PipelineOptions(beam_args or [])
    runner_name = options.view_as(StandardOptions).runner
    runner = _local_fn_api_runner(options) if runner_name in LOCAL_RUNNER_NAMES else None
    return beam.Pipeline(runner=runner, options=options)


# How one of our errors reads in the text of a failure relayed from a worker process.
_RELAYED_ERROR = re.compile(r"pipeline\.errors\.(\w+): (.+)")


def user_error(exc: BaseException) -> errors.PetpipeError | None:
    """Our own error behind a Beam failure: raised in-process as is, or relayed as text by a worker process."""
    if isinstance(exc, errors.PetpipeError):
        return exc
    matches = _RELAYED_ERROR.findall(str(exc))
    if not matches:
        return None
    name, message = matches[-1]
    error_type = getattr(errors, name, errors.PetpipeError)
    return error_type(message) if isinstance(error_type, type) else errors.PetpipeError(message)
