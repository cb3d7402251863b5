"""The batch scheduler (pure: numpy in, numpy out) and the configuration files in TF Serving's text formats."""

import queue
import threading

import grpc
import numpy as np
import pytest

from serving.batching import BatchingOptions, BatchScheduler
from serving.protos import (
    BatchingParameters,
    ConfigFileError,
    ModelServerConfig,
    parse_text_proto,
    validate_model_server_config,
)
from serving.status import ServingError
from serving.versions import aspired_versions


class CountingModel:
    """y = 2x + 1, recording the batch sizes it was called with."""

    def __init__(self):
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, feeds):
        with self.lock:
            self.calls.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2 + 1}


def _submit_all(scheduler, requests):
    results = [None] * len(requests)

    def submit(i):
        results[i] = scheduler.submit({"x": requests[i]})

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows():
    model = CountingModel()
    scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=16, batch_timeout_micros=200_000))
    requests = [np.arange(i, i + 1 + i % 3, dtype=np.float32) for i in range(8)]  # sizes 1..3, 16 rows in all
    results = _submit_all(scheduler, requests)
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request * 2 + 1)
    assert sum(model.calls) == sum(len(r) for r in requests)
    assert len(model.calls) < len(requests)  # merged: fewer calls than requests
    assert max(model.calls) <= 16
    scheduler.stop()


def test_allowed_batch_sizes_pad_the_batch_and_padding_never_reaches_a_client():
    model = CountingModel()
    options = BatchingOptions(max_batch_size=8, allowed_batch_sizes=(4, 8), batch_timeout_micros=0)
    scheduler = BatchScheduler(model, options)
    result = scheduler.submit({"x": np.array([5.0, 6.0, 7.0], dtype=np.float32)})
    np.testing.assert_array_equal(result["y"], [11.0, 13.0, 15.0])
    assert model.calls == [4]
    scheduler.stop()


def test_oversized_request_is_refused_or_split():
    refuse = BatchScheduler(CountingModel(), BatchingOptions(max_batch_size=4))
    with pytest.raises(ServingError) as error:
        refuse.submit({"x": np.zeros(5, np.float32)})
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.message == "Task size 5 is larger than maximum input batch size 4"
    refuse.stop()

    model = CountingModel()
    split = BatchScheduler(model, BatchingOptions(max_batch_size=4, enable_large_batch_splitting=True))
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(split.submit({"x": x})["y"], x * 2 + 1)
    assert sorted(model.calls) == [2, 4, 4]
    split.stop()


def test_a_full_queue_answers_unavailable():
    running, release = threading.Event(), threading.Event()

    def held(feeds):  # the only batch thread stays in here until the test releases it
        running.set()
        release.wait(30)
        return {"y": feeds["x"] * 2 + 1}

    options = BatchingOptions(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1)
    scheduler = BatchScheduler(held, options)
    busy = threading.Thread(target=scheduler.submit, args=({"x": np.zeros(1, np.float32)},))
    busy.start()
    assert running.wait(30)  # its batch left the queue and occupies the only thread
    outcomes = queue.Queue()

    def submit():
        try:
            outcomes.put(scheduler.submit({"x": np.ones(1, np.float32)}))
        except ServingError as exc:
            outcomes.put(exc)

    # Two more requests: whichever comes first fills the one queue slot and waits; the other is refused at once.
    contenders = [threading.Thread(target=submit) for _ in range(2)]
    for thread in contenders:
        thread.start()
    refused = outcomes.get(timeout=30)
    release.set()
    answered = outcomes.get(timeout=30)
    assert isinstance(refused, ServingError), refused
    assert refused.code == grpc.StatusCode.UNAVAILABLE
    assert "queue to which this task was submitted is full" in refused.message
    np.testing.assert_array_equal(answered["y"], [3.0])  # the queued one is answered once the thread is free
    for thread in [busy, *contenders]:
        thread.join(30)
    scheduler.stop()


def test_inputs_with_different_batch_sizes_are_refused():
    scheduler = BatchScheduler(lambda feeds: feeds, BatchingOptions())
    with pytest.raises(ServingError, match="must have equal 0th-dimension size"):
        scheduler.submit({"a": np.zeros(2), "b": np.zeros(3)})
    scheduler.stop()


def test_a_failing_batch_fails_its_requests_and_the_scheduler_keeps_serving():
    calls = []

    def flaky(feeds):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("boom")
        return {"y": feeds["x"]}

    scheduler = BatchScheduler(flaky, BatchingOptions(num_batch_threads=1))
    with pytest.raises(ValueError, match="boom"):
        scheduler.submit({"x": np.ones(1)})
    np.testing.assert_array_equal(scheduler.submit({"x": np.ones(2)})["y"], [1.0, 1.0])
    scheduler.stop()


def test_batching_parameters_file_in_tf_serving_format():
    text = """
        max_batch_size { value: 32 }
        batch_timeout_micros { value: 5000 }
        num_batch_threads { value: 2 }
        allowed_batch_sizes: 8
        allowed_batch_sizes: 32
    """
    options = BatchingOptions.from_proto(parse_text_proto(text, BatchingParameters(), "batching.txt"))
    assert options == BatchingOptions(32, 5000, 10, 2, (8, 32), False)  # max_enqueued_batches: TF's default 10
    with pytest.raises(ConfigFileError, match=r"^batching.txt:2:9 : .*no field named \"max_batch\""):
        parse_text_proto("\n        max_batch { value: 3 }", BatchingParameters(), "batching.txt")
    bad_sizes = parse_text_proto("max_batch_size { value: 16 } allowed_batch_sizes: 8", BatchingParameters(), "b")
    with pytest.raises(ConfigFileError, match="last entry must equal max_batch_size"):
        BatchingOptions.from_proto(bad_sizes)


def _config(text: str) -> ModelServerConfig:
    return parse_text_proto(text, ModelServerConfig(), "models.config")


def test_version_policies_pick_the_aspired_versions():
    config = _config("""model_config_list {
        config { name: "a" base_path: "/m/a" }
        config { name: "b" base_path: "/m/b" model_version_policy { latest { num_versions: 2 } } }
        config { name: "c" base_path: "/m/c" model_version_policy { all {} } }
        config { name: "d" base_path: "/m/d" model_version_policy { specific { versions: 1 versions: 3 } } }
    }""")
    on_disk = [1, 2, 3, 7]
    picked = {entry.name: aspired_versions(entry, on_disk) for entry in config.model_config_list.config}
    assert picked == {"a": [7], "b": [3, 7], "c": [1, 2, 3, 7], "d": [1, 3]}


@pytest.mark.parametrize(
    "text, message",
    [
        ('config { name: "../etc" base_path: "/m" }', "letters, digits"),
        ('config { name: "a" base_path: "/m" } config { name: "a" base_path: "/n" }', "multiple times"),
        ('config { name: "a" }', "base_path is empty"),
        ('config { name: "a" base_path: "/m" model_platform: "pytorch" }', "unsupported"),
        ('config { name: "a" base_path: "/m" model_version_policy { latest { } } }', "at least 1"),
    ],
)
def test_model_configs_tf_serving_refuses_are_refused(text, message):
    with pytest.raises(ConfigFileError, match=message):
        validate_model_server_config(_config(f"model_config_list {{ {text} }}"))
