"""serving/metrics.py: TF Serving's metric definitions, its exporter's page, and the monitoring config file."""

import os
import sys
import threading

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving.metrics import (
    METRICS,
    PROMETHEUS_PATH,
    REQUEST_COUNT,
    REQUEST_LATENCY,
    MetricDef,
    ServingMetrics,
    exponential_buckets,
    read_monitoring_config,
    status_string,
)
from serving.protos import ConfigFileError
from tests.serving.server_process import REPO

DEPLOY = os.path.join(REPO, "deploy", "prometheus")


def _samples(page: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of a page, read by prometheus_client's parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


def _buckets(page: str, name: str, **labels) -> dict[str, float]:
    """{le: cumulative count} of one histogram cell."""
    wanted = set(labels.items())
    return {
        dict(sample_labels)["le"]: value
        for (sample_name, sample_labels), value in _samples(page).items()
        if sample_name == f"{name}_bucket" and wanted <= set(sample_labels)
    }


def test_metrics_are_declared_with_tf_servings_names_labels_and_help():
    declared = {metric.name: (metric.labels, metric.buckets is None) for metric in METRICS}
    assert declared == {
        "/tensorflow/cc/saved_model/load_attempt_count": (("model_path", "status"), True),
        "/tensorflow/cc/saved_model/load_latency": (("model_path",), True),
        "/tensorflow/serving/batching_session/input_batch_size": ((), False),
        "/tensorflow/serving/batching_session/padding_size": (("execution_batch_size",), False),
        "/tensorflow/serving/batching_session/processed_batch_size": ((), False),
        "/tensorflow/serving/batching_session/queuing_latency": (("thread_pool_name",), False),
        "/tensorflow/serving/batching_session/wrapped_run_count": ((), True),
        "/tensorflow/serving/model_warmup_latency": (("model_path", "status"), False),
        "/tensorflow/serving/model_warmup_records_read": (("model_path", "status"), True),
        "/tensorflow/serving/request_count": (("model_name", "status"), True),
        "/tensorflow/serving/request_example_count_total": (("model",), True),
        "/tensorflow/serving/request_example_counts": (("model",), False),
        "/tensorflow/serving/request_latency": (("model_name", "API", "entrypoint"), False),
        "/tensorflow/serving/runtime_latency": (("model_name", "API", "runtime"), False),
    }
    assert REQUEST_COUNT.help == "The total number of requests."
    assert REQUEST_LATENCY.help == "Distribution of wall time (in microseconds) for Tensorflow Serving request."


def test_buckets_are_tfs_exponential_limits_then_dbl_max():
    # Buckets::Exponential(10, 1.8, 33): 33 limits and DBL_MAX, so 34 buckets, the last written "+Inf".
    assert len(REQUEST_LATENCY.buckets) == 34
    assert REQUEST_LATENCY.buckets[:3] == (10, 18.0, 32.4)
    assert REQUEST_LATENCY.buckets[32] == pytest.approx(10 * 1.8**32)
    assert REQUEST_LATENCY.buckets[33] == 1.7976931348623157e308
    assert exponential_buckets(1, 2, 15)[:-1] == tuple(float(2**i) for i in range(15))


def test_fresh_page_has_a_type_line_per_metric_registered_at_start():
    # Function-local metrics (batching_util.h's batch sizes) are registered on first use, so not listed yet.
    assert ServingMetrics().render() == (
        "# TYPE :tensorflow:cc:saved_model:load_attempt_count counter\n"
        "# TYPE :tensorflow:cc:saved_model:load_latency counter\n"
        "# TYPE :tensorflow:serving:batching_session:queuing_latency histogram\n"
        "# TYPE :tensorflow:serving:batching_session:wrapped_run_count counter\n"
        "# TYPE :tensorflow:serving:model_warmup_latency histogram\n"
        "# TYPE :tensorflow:serving:model_warmup_records_read counter\n"
        "# TYPE :tensorflow:serving:request_count counter\n"
        "# TYPE :tensorflow:serving:request_example_count_total counter\n"
        "# TYPE :tensorflow:serving:request_example_counts histogram\n"
        "# TYPE :tensorflow:serving:request_latency histogram\n"
        "# TYPE :tensorflow:serving:runtime_latency histogram\n"
    )


# The next four are TF Serving's util/prometheus_exporter_test.cc, with its metrics and expected lines.


def test_exporter_counter():
    metric = MetricDef("/test/path/total", "A counter.", ("name",))
    metrics = ServingMetrics((metric,))
    metrics.increment(metric, ("abc",), 2)
    assert metrics.render() == '# TYPE :test:path:total counter\n:test:path:total{name="abc"} 2\n'


def test_exporter_histogram():
    metric = MetricDef("/test/path/histogram", "A histogram.", ("status",), exponential_buckets(1, 2, 10))
    metrics = ServingMetrics((metric,))
    for value in (2, 20, 200):
        metrics.observe(metric, ("good",), value)
    counts = [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    limits = ["1", "2", "4", "8", "16", "32", "64", "128", "256", "512", "+Inf"]
    assert metrics.render() == "\n".join(
        [
            "# TYPE :test:path:histogram histogram",
            *(
                f':test:path:histogram_bucket{{status="good",le="{le}"}} {n}'
                for le, n in zip(limits, counts, strict=True)
            ),
            ':test:path:histogram_sum{status="good"} 222',
            ':test:path:histogram_count{status="good"} 3',
            "",
        ]
    )


def test_exporter_escapes_label_values():
    metric = MetricDef("/test/path/total", "A counter.", ("name",))
    metrics = ServingMetrics((metric,))
    metrics.increment(metric, ('"abc\\"',), 2)
    assert metrics.render() == '# TYPE :test:path:total counter\n:test:path:total{name="\\"abc\\\\\\""} 2\n'


def test_exporter_sanitizes_label_and_metric_names():
    metric = MetricDef("0/path-total_count", "A counter.", ("my-name+1",))
    metrics = ServingMetrics((metric,))
    metrics.increment(metric, ("abc",), 2)
    assert metrics.render() == '# TYPE _0:path:total_count counter\n_0:path:total_count{my_name_1="abc"} 2\n'


def test_sample_page_exact_text():
    metrics = ServingMetrics()
    metrics.record_request("pets", "Classify", "GRPC", "INVALID_ARGUMENT", 50)
    metrics.record_examples("pets", 3)
    metrics.record_load("/models/pets/1", True, 1234567)
    expected_example_buckets = [
        f':tensorflow:serving:request_example_counts_bucket{{model="pets",le="{2**i}"}} {0 if i < 2 else 1}'
        for i in range(15)
    ]
    assert metrics.render() == "\n".join(
        [
            "# TYPE :tensorflow:cc:saved_model:load_attempt_count counter",
            ':tensorflow:cc:saved_model:load_attempt_count{model_path="/models/pets/1",status="success"} 1',
            "# TYPE :tensorflow:cc:saved_model:load_latency counter",
            ':tensorflow:cc:saved_model:load_latency{model_path="/models/pets/1"} 1234567',
            "# TYPE :tensorflow:serving:batching_session:queuing_latency histogram",
            "# TYPE :tensorflow:serving:batching_session:wrapped_run_count counter",
            "# TYPE :tensorflow:serving:model_warmup_latency histogram",
            "# TYPE :tensorflow:serving:model_warmup_records_read counter",
            "# TYPE :tensorflow:serving:request_count counter",
            ':tensorflow:serving:request_count{model_name="pets",status="INVALID_ARGUMENT"} 1',
            "# TYPE :tensorflow:serving:request_example_count_total counter",
            ':tensorflow:serving:request_example_count_total{model="pets"} 3',
            "# TYPE :tensorflow:serving:request_example_counts histogram",
            *expected_example_buckets,
            ':tensorflow:serving:request_example_counts_bucket{model="pets",le="+Inf"} 1',
            ':tensorflow:serving:request_example_counts_sum{model="pets"} 3',
            ':tensorflow:serving:request_example_counts_count{model="pets"} 1',
            "# TYPE :tensorflow:serving:request_latency histogram",  # a failed request records no latency
            "# TYPE :tensorflow:serving:runtime_latency histogram",
            "",
        ]
    )


def test_cells_are_written_in_label_value_order():
    metrics = ServingMetrics()
    for model_name, status in (("zeta", "NOT_FOUND"), ("alpha", "UNAVAILABLE"), ("Zulu", "NOT_FOUND"), ("alpha", "OK")):
        metrics.record_request(model_name, "", "REST", status, 1)
    prefix = ":tensorflow:serving:request_count{"
    cells = [line[len(prefix) :] for line in metrics.render().splitlines() if line.startswith(prefix)]
    # The cells are a std::map keyed by the label values: byte order, first label first.
    assert cells == [
        'model_name="Zulu",status="NOT_FOUND"} 1',
        'model_name="alpha",status="OK"} 1',
        'model_name="alpha",status="UNAVAILABLE"} 1',
        'model_name="zeta",status="NOT_FOUND"} 1',
    ]


def test_a_value_on_a_limit_counts_in_the_next_bucket_and_sums_keep_six_digits():
    metrics = ServingMetrics()
    for latency in (9, 10, 17, 1_000_001):
        metrics.record_request("pets", "Predict", "GRPC", "OK", latency)
    page = metrics.render()
    buckets = _buckets(page, ":tensorflow:serving:request_latency", model_name="pets")
    # TF's histogram puts a sample in the first bucket whose limit is above it: 10 is not counted at le="10".
    assert (buckets["10"], buckets["18"], buckets["32.4"], buckets["+Inf"]) == (1, 3, 3, 4)
    assert buckets["1.27482e+06"] == 4 and buckets["708235"] == 3
    labels = 'model_name="pets",API="Predict",entrypoint="GRPC"'
    assert f":tensorflow:serving:request_latency_sum{{{labels}}} 1.00004e+06\n" in page  # absl's six digits
    assert f":tensorflow:serving:request_latency_count{{{labels}}} 4\n" in page


@pytest.fixture
def frequent_thread_switches():
    """Switch threads every microsecond, so an unguarded read-modify-write would lose updates in a test."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def test_concurrent_records_are_all_counted(frequent_thread_switches):
    metrics = ServingMetrics()
    threads, per_thread = 8, 500
    start = threading.Barrier(threads)

    def work(thread: int):
        start.wait()
        for i in range(per_thread):
            metrics.record_request("pets", "Predict", "GRPC", "OK" if i % 5 else "NOT_FOUND", 100)
            metrics.record_examples("pets", 2)
            metrics.record_load(f"/models/pets/{thread % 2}", i % 2 == 0, 3)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    samples = _samples(metrics.render())
    total, failed = threads * per_thread, threads * per_thread // 5

    def value(name, **labels):
        return samples[(name, frozenset(labels.items()))]

    assert value(":tensorflow:serving:request_count_total", model_name="pets", status="OK") == total - failed
    assert value(":tensorflow:serving:request_count_total", model_name="pets", status="NOT_FOUND") == failed
    latency = {"model_name": "pets", "API": "Predict", "entrypoint": "GRPC"}
    assert value(":tensorflow:serving:request_latency_count", **latency) == total - failed
    assert value(":tensorflow:serving:request_latency_sum", **latency) == 100 * (total - failed)
    assert value(":tensorflow:serving:request_example_count_total", model="pets") == 2 * total
    assert _buckets(metrics.render(), ":tensorflow:serving:request_example_counts", model="pets")["2"] == 0
    assert _buckets(metrics.render(), ":tensorflow:serving:request_example_counts", model="pets")["4"] == total
    for path in ("/models/pets/0", "/models/pets/1"):
        for status in ("success", "fail"):
            key = ":tensorflow:cc:saved_model:load_attempt_count_total"
            assert value(key, model_path=path, status=status) == total // 4
        assert value(":tensorflow:cc:saved_model:load_latency_total", model_path=path) == 3 * total // 2


def test_page_parses_with_types_and_label_values_round_trip():
    metrics = ServingMetrics()
    odd_name = 'a\\b"c\nd'
    metrics.record_request(odd_name, "predict", "REST", "OK", 700)
    metrics.record_warmup("/models/pets/1", status_string("DATA_LOSS", "corrupted record at 12"), 2500, 7)
    metrics.record_queuing("", 150)
    metrics.record_wrapped_run()
    page = metrics.render()
    families = {family.name: family.type for family in text_string_to_metric_families(page)}
    assert families[":tensorflow:serving:request_count"] == "counter"
    assert families[":tensorflow:serving:request_latency"] == "histogram"
    samples = _samples(page)
    odd_labels = frozenset({"model_name": odd_name, "status": "OK"}.items())
    assert samples[(":tensorflow:serving:request_count_total", odd_labels)] == 1  # the parser names counters *_total
    warmup = frozenset({"model_path": "/models/pets/1", "status": "DATA_LOSS: corrupted record at 12"}.items())
    assert samples[(":tensorflow:serving:model_warmup_records_read_total", warmup)] == 7
    assert samples[(":tensorflow:serving:model_warmup_latency_sum", warmup)] == 2500
    assert _buckets(page, ":tensorflow:serving:batching_session:queuing_latency", thread_pool_name="")["172.8"] == 1
    assert samples[(":tensorflow:serving:batching_session:wrapped_run_count_total", frozenset())] == 1
    assert ":tensorflow:serving:batching_session:wrapped_run_count{} 1\n" in page  # TF writes empty braces


def test_batch_size_metrics_appear_on_first_use():
    metrics = ServingMetrics()
    metrics.record_input_batch_size(3)
    metrics.record_processed_batch(3, 4)
    page = metrics.render()
    assert "# TYPE :tensorflow:serving:batching_session:processed_batch_size histogram\n" in page
    padding = _buckets(page, ":tensorflow:serving:batching_session:padding_size", execution_batch_size="4")
    assert (padding["1"], padding["2"]) == (0, 1)  # one example of padding: below le="2", not below le="1"
    assert _buckets(page, ":tensorflow:serving:batching_session:input_batch_size")["4"] == 1


def test_status_names_are_checked():
    metrics = ServingMetrics()
    with pytest.raises(ValueError, match="StatusCode.OK"):
        metrics.record_request("pets", "Predict", "GRPC", "StatusCode.OK", 1)
    with pytest.raises(ValueError, match="ok"):
        metrics.record_warmup("/models/pets/1", "ok", 1, 1)
    with pytest.raises(ValueError, match="cannot decrease"):
        metrics.record_examples("pets", -1)
    assert status_string("OK", "ignored") == "OK"
    assert ":tensorflow:serving:request_count{" not in metrics.render()


def test_monitoring_config_default_path_and_disabled(tmp_path):
    config = tmp_path / "monitoring.txt"
    config.write_text("prometheus_config { enable: true }\n")
    assert read_monitoring_config(str(config)) == (True, "/monitoring/prometheus/metrics")
    config.write_text('prometheus_config { enable: true path: "/metrics" }\n')
    assert read_monitoring_config(str(config)) == (True, "/metrics")
    config.write_text("")
    assert read_monitoring_config(str(config)) == (False, PROMETHEUS_PATH)


def test_malformed_monitoring_config_names_the_file_and_line(tmp_path):
    config = tmp_path / "monitoring.txt"
    config.write_text("prometheus_config {\n  enable: true\n  port: 9090\n}\n")
    with pytest.raises(ConfigFileError) as error:
        read_monitoring_config(str(config))
    message = str(error.value)
    assert message.startswith(f"{config}:3:") and "port" in message and "\n" not in message
    with pytest.raises(ConfigFileError, match="cannot read"):
        read_monitoring_config(str(tmp_path / "missing.txt"))


def test_deploy_config_and_scrape_jobs_agree():
    enabled, path = read_monitoring_config(os.path.join(DEPLOY, "monitoring_config.txt"))
    with open(os.path.join(DEPLOY, "prometheus.yml")) as f:
        jobs = {job["job_name"]: job for job in yaml.safe_load(f)["scrape_configs"]}
    assert enabled and set(jobs) == {"petpipe-serve", "tf-serving"}
    assert {job["metrics_path"] for job in jobs.values()} == {path}
    assert jobs["tf-serving"]["static_configs"][0]["targets"] == ["127.0.0.1:8501"]  # docker-compose's REST port
