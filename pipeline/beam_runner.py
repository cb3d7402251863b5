"""Beam pipeline construction that never reaches for the network.

Beam 2.77's DirectRunner first tries the Prism runner, which downloads a binary from the internet. For the
local runners (no --runner, DirectRunner, SwitchingDirectRunner, TestDirectRunner, FnApiRunner — under any of the
spellings Beam accepts: any case, without the "Runner" suffix, or as a class path) we build the FnApiRunner
ourselves — the same runner DirectRunner falls back to, honouring --direct_num_workers and --direct_running_mode
(in_memory, multi_threading, or multi_processing: SDK worker subprocesses). Any other --runner (DataflowRunner,
FlinkRunner, SparkRunner, PortableRunner, PrismRunner, ...) and every other flag pass through as given (for
PortableRunner, a --job_endpoint that does not answer within --job_server_timeout is our one-line error); see
docs/beam-runners.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions, WorkerOptions

from common import errors


def _local_runner_classes() -> tuple[type, ...]:
    """The runners that would try Prism (the DirectRunner family), and the FnApiRunner they fall back to."""
    from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner
    from apache_beam.runners.direct.test_direct_runner import TestDirectRunner
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    return SwitchingDirectRunner, TestDirectRunner, FnApiRunner  # DirectRunner is SwitchingDirectRunner


def is_local_runner(runner_name: str | None) -> bool:
    """Whether --runner names a runner we replace with our FnApiRunner: resolved the way Beam resolves it."""
    if runner_name is None:
        return True
    runner_class = _runner_class(runner_name)
    return any(runner_class is local for local in _local_runner_classes())


def _runner_class(runner_name: str) -> type | None:
    """The class --runner names, resolved the way Beam resolves it; None where Beam will report the name."""
    known = {path.rsplit(".", 1)[-1].lower(): path for path in StandardOptions.ALL_KNOWN_RUNNERS}
    path = known.get(runner_name.lower(), known.get(runner_name.lower() + "runner", runner_name))
    if "." not in path:
        return None  # Beam rejects it with its list of valid runners
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None  # Beam reports it


def _portable_runner_class() -> type:
    from apache_beam.runners.portability.portable_runner import PortableRunner

    return PortableRunner


def _portable_runner():
    """Beam's PortableRunner, but a job service that does not answer at --job_endpoint within --job_server_timeout
    is our error naming the address (Beam raises a bare grpc.FutureTimeoutError)."""
    import grpc
    from apache_beam.options.pipeline_options import PortableOptions
    from apache_beam.runners.portability import portable_runner

    class PortableRunner(portable_runner.PortableRunner):
        def create_job_service(self, options):
            try:
                return super().create_job_service(options)
            except grpc.FutureTimeoutError:
                portable = options.view_as(PortableOptions)
                raise errors.ConfigError(
                    f"--job_endpoint={portable.job_endpoint}: no Beam job service answered there within "
                    f"{portable.job_server_timeout} s (--job_server_timeout)"
                ) from None

    return PortableRunner()


def _local_fn_api_runner(options: PipelineOptions):
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    # As SwitchingDirectRunner does: hand the options to the SDK workers (used by multi-process mode). Only those
    # that differ from their defaults: a worker cannot parse all of them back (e.g. --direct_runner_use_stacked_bundle
    # is only a --no_ flag) and warns about each, while it knows the defaults itself.
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options(drop_default=True))
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=provision)


def _worker_processes_log_beam_like_this_one(options: PipelineOptions) -> None:
    """multi_processing SDK workers log to their own stderr, Beam's harness chatter at INFO, whatever this process
    has configured. Where this process logs Beam above INFO (petpipe's CLI without -v does), they log Beam — and
    their harness, which runs as __main__ — at that level too, unless the user set those loggers' levels with
    --sdk_harness_log_level_overrides. The workers' root level (our own loggers) is left to Beam."""
    if options.view_as(DirectOptions).direct_running_mode != "multi_processing":
        return
    level = logging.getLogger("apache_beam").getEffectiveLevel()
    if level <= logging.INFO:
        return
    worker = options.view_as(WorkerOptions)
    overrides = dict(worker.sdk_harness_log_level_overrides or {})
    for name in ("apache_beam", "__main__"):
        overrides.setdefault(name, logging.getLevelName(level))
    worker.sdk_harness_log_level_overrides = overrides


# Runners Beam 2.77 only accepts as a class path, by the short names we accept for them (any case, "Runner" optional).
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
_SHORT_RUNNER_NAMES = {"daskrunner": DASK_RUNNER}


def _resolve_short_runner_name(options: PipelineOptions) -> None:
    standard = options.view_as(StandardOptions)
    name = (standard.runner or "").lower()
    path = _SHORT_RUNNER_NAMES.get(name, _SHORT_RUNNER_NAMES.get(name + "runner"))
    if path is None and standard.runner != DASK_RUNNER:
        return
    if importlib.util.find_spec("distributed") is None:
        raise errors.ConfigError(f"--runner={standard.runner} needs Dask distributed: pip install 'petpipe[dask]'")
    standard.runner = path or DASK_RUNNER


def make_pipeline(beam_args: list[str] | None = None) -> beam.Pipeline:
    """A beam.Pipeline for the user's Beam flags; local runs use our FnApiRunner, never Prism."""
    options = PipelineOptions(beam_args or [])
    _resolve_short_runner_name(options)
    runner = None
    if is_local_runner(options.view_as(StandardOptions).runner):
        _worker_processes_log_beam_like_this_one(options)
        runner = _local_fn_api_runner(options)
    elif _runner_class(options.view_as(StandardOptions).runner) is _portable_runner_class():
        runner = _portable_runner()
    return beam.Pipeline(runner=runner, options=options)


# How one of our errors reads in the text of a failure relayed from a worker process.
_RELAYED_ERROR = re.compile(re.escape(errors.__name__) + r"\.(\w+): (.+)")  # common.errors.DataError: ...


# A portable job whose job service could not start an SDK worker in the external worker pool fails with the worker
# handler's traceback as its message: StartWorker UNAVAILABLE, "... ipv4:10.0.0.3:50000: ... Connection refused".
_WORKER_POOL_UNREACHABLE = re.compile(r"in start_worker\b.*?StatusCode\.UNAVAILABLE.*?ipv[46]:(\S+?:\d+)", re.S)


def user_error(exc: BaseException) -> errors.PetpipeError | None:
    """Our own error behind a Beam failure: raised in-process as is, or relayed as text by a worker process; an
    external worker pool that did not answer is a ConfigError naming its address."""
    if isinstance(exc, errors.PetpipeError):
        return exc
    if pool := _WORKER_POOL_UNREACHABLE.search(str(exc)):
        return errors.ConfigError(
            f"--environment_config: no Beam worker pool answered at {pool.group(1)}; the job service could not start "
            "an SDK worker there"
        )
    matches = _RELAYED_ERROR.findall(str(exc))
    if not matches:
        return None
    name, message = matches[-1]
    error_type = getattr(errors, name, errors.PetpipeError)
    return error_type(message) if isinstance(error_type, type) else errors.PetpipeError(message)
