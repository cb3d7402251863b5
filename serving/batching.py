"""Server-side dynamic batching with TF Serving's parameters (BatchingParameters, see serving/protos.py).

Concurrent requests to one signature of one version are queued and merged along dimension 0 into one call of the
signature, then the outputs are split back per request. As in TF Serving's BasicBatchScheduler:

* a batch is closed when it reaches `max_batch_size` or when its oldest request has waited `batch_timeout_micros`
  (0: as soon as a batch thread is free — batches then form only from requests that queued while the threads were
  busy, which is what makes batching pay under load and cost nothing when idle);
* `num_batch_threads` batches run at once; with `max_enqueued_batches` batches waiting, a request is refused
  with UNAVAILABLE ("The batch scheduling queue to which this task was submitted is full");
* a request larger than `max_batch_size` is refused with INVALID_ARGUMENT, or split across batches with
  `enable_large_batch_splitting`;
* with `allowed_batch_sizes`, a batch is padded (by repeating its first row) up to the next allowed size.

Differences: each (version, signature) has its own threads, where TF Serving shares one pool across servables.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import grpc
import numpy as np

from serving.protos import BatchingParameters, ConfigFileError
from serving.status import ServingError


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 1000  # SharedBatchScheduler's defaults, as TF Serving uses when a field is omitted
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple[int, ...] = ()
    enable_large_batch_splitting: bool = False

    @classmethod
    def from_proto(cls, params: BatchingParameters, what: str = "batching parameters") -> BatchingOptions:
        values = {}
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
            if params.HasField(name):
                values[name] = getattr(params, name).value
        if params.HasField("enable_large_batch_splitting"):
            values["enable_large_batch_splitting"] = params.enable_large_batch_splitting.value
        options = cls(**values, allowed_batch_sizes=tuple(params.allowed_batch_sizes))
        options.validate(what)
        return options

    def validate(self, what: str) -> None:
        if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_batches < 1:
            raise ConfigFileError(f"{what}: max_batch_size, num_batch_threads, max_enqueued_batches must be ≥ 1")
        if self.batch_timeout_micros < 0:
            raise ConfigFileError(f"{what}: batch_timeout_micros must be ≥ 0")
        sizes = self.allowed_batch_sizes
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            # TF Serving's rule, with its wording.
            raise ConfigFileError(
                f"{what}: allowed_batch_sizes entries must be monotonically increasing and the last entry must "
                f"equal max_batch_size ({self.max_batch_size})"
            )


@dataclass
class _Task:
    feeds: dict[str, np.ndarray]
    size: int
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class _Batch:
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    opened: float = field(default_factory=time.monotonic)


def merge_feeds(tasks: list[_Task], pad_to: int) -> dict[str, np.ndarray]:
    """Concatenate each input along dimension 0, then pad with copies of the first row up to `pad_to`."""
    merged = {}
    for name in tasks[0].feeds:
        array = np.concatenate([task.feeds[name] for task in tasks], axis=0)
        if pad_to > len(array):
            array = np.concatenate([array, np.repeat(array[:1], pad_to - len(array), axis=0)], axis=0)
        merged[name] = array
    return merged


def split_outputs(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    total = sum(sizes)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] < total:
            raise ServingError(
                grpc.StatusCode.INTERNAL, f"batched output '{name}' has shape {list(array.shape)}; cannot split it"
            )
    bounds = np.cumsum([0, *sizes])
    return [{name: array[bounds[i] : bounds[i + 1]] for name, array in outputs.items()} for i in range(len(sizes))]


def task_size(feeds: dict[str, np.ndarray]) -> int:
    sizes = {array.shape[0] if array.ndim else -1 for array in feeds.values()}
    if len(sizes) != 1 or -1 in sizes:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() input tensors must have equal 0th-dimension size"
        )
    return sizes.pop()


def _mergeable(batch: _Batch, task: _Task) -> bool:
    """Requests whose inputs differ beyond dimension 0 go to separate batches (one client's odd shape must not
    fail another's request)."""
    first = batch.tasks[0].feeds
    return all(
        first[name].shape[1:] == array.shape[1:] and first[name].dtype == array.dtype
        for name, array in task.feeds.items()
    )


class BatchScheduler:
    """Queues requests for `run(feeds) -> outputs` (dicts of numpy arrays) and runs them in merged batches.
    `metrics` (serving/metrics.py's ServingMetrics) hears what TF Serving's BatchingSession records: each request's
    input size and time in the queue, each batch's size and padding, each merged run."""

    def __init__(self, run, options: BatchingOptions, name: str = "batch", metrics=None):
        self._run = run
        self._metrics = metrics
        self.options = options
        self._queue: list[_Batch] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, daemon=True, name=f"{name}-{i}")
            for i in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one request through a batch; blocks until its outputs are ready."""
        size = task_size(feeds)
        limit = self.options.max_batch_size
        if size > limit and not self.options.enable_large_batch_splitting:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"Task size {size} is larger than maximum input batch size {limit}"
            )
        pieces = [
            _Task({name: array[start : start + limit] for name, array in feeds.items()}, min(limit, size - start))
            for start in range(0, size, limit)
        ]
        with self._cond:
            if self._stopping:  # an in-flight request on a version being unloaded: run it directly
                return self._run(feeds)
            for task in pieces:
                self._enqueue(task)
            self._cond.notify_all()
        results = [task.future.result() for task in pieces]
        if len(results) == 1:
            return results[0]
        return {name: np.concatenate([r[name] for r in results], axis=0) for name in results[0]}

    def _enqueue(self, task: _Task) -> None:
        last = self._queue[-1] if self._queue else None
        if last is None or last.size + task.size > self.options.max_batch_size or not _mergeable(last, task):
            if len(self._queue) >= self.options.max_enqueued_batches:
                raise ServingError(
                    grpc.StatusCode.UNAVAILABLE, "The batch scheduling queue to which this task was submitted is full"
                )
            last = _Batch()
            self._queue.append(last)
        last.tasks.append(task)
        last.size += task.size

    def _next_batch(self) -> _Batch | None:
        timeout = self.options.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                if self._queue:
                    first = self._queue[0]
                    waited = time.monotonic() - first.opened
                    if len(self._queue) > 1 or first.size >= self.options.max_batch_size or waited >= timeout:
                        return self._queue.pop(0)
                    self._cond.wait(timeout - waited)
                elif self._stopping:
                    return None
                else:
                    self._cond.wait()

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._process(batch)

    def _process(self, batch: _Batch) -> None:
        pad_to = next((s for s in self.options.allowed_batch_sizes if s >= batch.size), batch.size)
        if self._metrics is not None:
            self._record(batch, pad_to)
        try:
            outputs = self._run(merge_feeds(batch.tasks, pad_to))
            for task, result in zip(batch.tasks, split_outputs(outputs, [t.size for t in batch.tasks]), strict=True):
                task.future.set_result(result)
        except Exception as exc:  # every request of the batch gets the error; the thread keeps serving
            for task in batch.tasks:
                if not task.future.done():
                    task.future.set_exception(exc)

    def _record(self, batch: _Batch, pad_to: int) -> None:
        dequeued = time.monotonic()
        for task in batch.tasks:
            # TF Serving's model server passes an empty thread pool name to its batching sessions.
            self._metrics.record_queuing("", int((dequeued - task.enqueued) * 1e6))
            for array in task.feeds.values():
                self._metrics.record_input_batch_size(task.size if array.ndim else 0)
        self._metrics.record_processed_batch(batch.size, pad_to)
        self._metrics.record_wrapped_run()

    def stop(self) -> None:
        """Finish what is queued, then end the threads; later submits run directly."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
