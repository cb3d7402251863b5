import io
import os
import time

import pytest
from apache_beam.runners.portability import prism_runner
from PIL import Image

from pipeline.cli import main
from tests.conftest import TINY_TRAINING, set_flags
from tests.serving.server_process import free_port


def _no_prism(*args, **kwargs):
    raise AssertionError("the Prism runner (which downloads a binary) must never be constructed")


def test_run_on_tiny_data_prints_summary_and_never_touches_prism(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(prism_runner.PrismRunner, "__init__", _no_prism)
    work = tmp_path / "work"
    code = main(
        [
            "run",
            "--data-dir",
            tiny_data,
            "--work-dir",
            str(work),
            *set_flags(TINY_TRAINING, "data.eval_fraction=0"),  # no eval split: training runs without validation
            "--direct_num_workers=1",  # a Beam flag, passed through
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "records:  train 74, eval 0, test 37" in out
    assert "species accuracy" in out and "breed top-1 accuracy" in out
    assert f"exported: version 1 at {work}/serving/pets/1" in out
    assert out.count("gRPC:     ") == 3
    assert os.path.isfile(work / "serving" / "pets" / "1" / "saved_model.pb")
    assert os.path.getsize(work / "serving" / "pets" / "1" / "assets.extra" / "tf_serving_warmup_requests") > 0
    assert f'base_path: "{work}/serving/pets"' in (work / "serving" / "models.config").read_text()
    (run_dir,) = (work / "runs").iterdir()
    assert (run_dir / "metrics.json").is_file() and (run_dir / "report" / "index.html").is_file()
    assert f"report:   {run_dir}/report/index.html" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--data-dir", "/nonexistent/pets"], "/nonexistent/pets: data directory not found"),
        (["run", "--set", "train.epochs=zero"], "train.epochs: expected int, got 'zero'"),
        (["run", "--source", "folders"], "this data.source needs --data-dir"),
        (["run", "--source", "tfds"], "data.source=tfds needs --tfds-data-dir"),
        (["run", "--set", "data.source=s3"], "data.source must be one of oxford, folders, csv, tfds; got 's3'"),
        (["run", "--source", "csv", "--data-dir", "/nonexistent.csv"], "/nonexistent.csv: CSV manifest not found"),
        (
            ["run", "--source", "csv", "--data-dir", "/", "--spans", "2"],
            "data.spans=2: / has no span-<N> subdirectories",
        ),
        (["predict", "/nonexistent.jpg"], "/nonexistent.jpg: cannot read image"),
        (["serve", "--model-base-path", "/nonexistent/models"], "/nonexistent/models: model base path not found"),
    ],
)
def test_errors_are_one_line_without_traceback(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"petpipe: error: {message}" or err.strip().startswith(f"petpipe: error: {message}")
    assert "Traceback" not in err


def test_predict_prints_species_breed_and_top5(exported_model, tmp_path, capsys):
    from PIL import Image

    from serving.server import start_server

    image = tmp_path / "pet.png"
    Image.new("RGB", (30, 20), (90, 60, 30)).save(image)
    server = start_server(exported_model[0], "pets", port=0)
    try:
        assert main(["predict", "--server", f"127.0.0.1:{server.port}", str(image)]) == 0
    finally:
        server.stop()
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and "; breed " in line and "top-5: " in line and "cat " in line


def test_predict_against_no_server_fails_cleanly(tmp_path, capsys):
    image = tmp_path / "x.jpg"
    image.write_bytes(b"123")
    assert main(["predict", "--server", "127.0.0.1:1", "--timeout", "2", str(image)]) == 2
    assert "Predict failed: UNAVAILABLE" in capsys.readouterr().err


def test_help_explains_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--data-dir" in out and "never downloading the Prism runner" in out


def test_predict_over_a_directory_and_a_glob_as_json_and_status(exported_model, tmp_path, capsys):
    import json

    from PIL import Image

    from serving.server import start_server

    for i in range(3):
        Image.new("RGB", (30, 20), (90 * i, 60, 30)).save(tmp_path / f"pet{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    server = start_server(exported_model[0], "pets", port=0)
    target = f"127.0.0.1:{server.port}"
    try:
        assert main(["predict", "--server", target, "--json", "--batch-size", "2", str(tmp_path)]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert main(["predict", "--server", target, str(tmp_path / "pet*.png")]) == 0
        assert len(capsys.readouterr().out.strip().splitlines()) == 3
        assert main(["status", "--server", target]) == 0
        status = capsys.readouterr().out.strip()
    finally:
        server.stop()
    answers = [json.loads(line) for line in lines]
    assert [a["image"] for a in answers] == [str(tmp_path / f"pet{i}.png") for i in range(3)]
    assert all(len(a["top_k"]) == 5 and a["version"] == exported_model[1] for a in answers)
    assert status == f"pets version {exported_model[1]}: AVAILABLE"
    assert main(["predict", str(tmp_path / "*.jpeg")]) == 2
    assert "no image files there" in capsys.readouterr().err


class _StartOnFirstBackoff:
    """Stands in for serving.client's `time` module: the client's first backoff sleep — its first attempt met a
    refused connection — starts the server instead of sleeping; later sleeps are real. So the retry is certain, and
    no timer races the client's first attempt."""

    def __init__(self, start):
        self.start, self.backoffs, self.server = start, 0, None

    def sleep(self, seconds: float) -> None:
        self.backoffs += 1
        if self.server is None:
            self.server = self.start()
        else:
            time.sleep(seconds)

    def __getattr__(self, name):
        return getattr(time, name)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def test_client_retries_while_the_server_is_starting(exported_model, monkeypatch):
    from serving import client
    from serving.server import start_server

    port = free_port()
    starter = _StartOnFirstBackoff(lambda: start_server(exported_model[0], "pets", port=port))
    monkeypatch.setattr(client, "time", starter)
    try:
        buffer = io.BytesIO()
        Image.new("RGB", (20, 20)).save(buffer, format="PNG")
        answers = client.predict_images(f"127.0.0.1:{port}", [buffer.getvalue()], timeout=20)  # UNAVAILABLE at first
    finally:
        starter.stop()
    assert starter.backoffs >= 1  # it was refused, backed off and retried
    assert len(answers) == 1 and answers[0].version == exported_model[1]


def test_predict_and_status_over_rest_with_retries_while_starting(exported_model, tmp_path, capsys, monkeypatch):
    import json

    from serving import client
    from serving.server import start_server

    Image.new("RGB", (30, 20), (10, 200, 30)).save(tmp_path / "pet.png")
    rest_port = free_port()
    # The first REST attempt meets a refused connection; the server starts during the client's first backoff.
    starter = _StartOnFirstBackoff(lambda: start_server(exported_model[0], "pets", port=0, rest_api_port=rest_port))
    monkeypatch.setattr(client, "time", starter)
    target = f"http://127.0.0.1:{rest_port}"
    try:
        assert main(["predict", "--server", target, "--json", "--timeout", "20", str(tmp_path / "pet.png")]) == 0
        over_rest = json.loads(capsys.readouterr().out)
        assert starter.backoffs >= 1  # it was refused, backed off and retried
        grpc_target = f"127.0.0.1:{starter.server.port}"
        assert main(["predict", "--server", grpc_target, "--json", str(tmp_path / "pet.png")]) == 0
        over_grpc = json.loads(capsys.readouterr().out)
        assert main(["status", "--server", target]) == 0
        status = capsys.readouterr().out.strip()
        assert main(["predict", "--server", target, "--model-name", "cats", str(tmp_path / "pet.png")]) == 2
        error = capsys.readouterr().err
    finally:
        starter.stop()
    assert over_rest["version"] is None and over_grpc["version"] == exported_model[1]
    assert over_rest["breed"] == over_grpc["breed"]
    # REST carries float32 as TF Serving's JSON writes it (9 significant digits), gRPC the float32 itself.
    assert [k["breed"] for k in over_rest["top_k"]] == [k["breed"] for k in over_grpc["top_k"]]
    for rest_score, grpc_score in zip(over_rest["top_k"], over_grpc["top_k"], strict=True):
        assert rest_score["score"] == pytest.approx(grpc_score["score"], rel=1e-7)
    assert status == f"pets version {exported_model[1]}: AVAILABLE"
    assert "HTTP 404: Servable not found for request: Latest(cats)" in error


def test_log_format_json_before_or_after_the_command():
    from pipeline.cli import build_parser

    for argv in (["--log-format", "json", "run"], ["run", "--log-format", "json"], ["schedule", "--every", "1h",
                 "--log-format", "json"]):  # fmt: skip
        args, unknown = build_parser().parse_known_args(argv)
        assert args.log_format == "json" and unknown == []
    assert build_parser().parse_known_args(["run"])[0].log_format == "text"


def test_json_log_lines_carry_time_level_logger_and_message():
    import json
    import logging

    from pipeline.cli import JsonLines

    record = logging.LogRecord("petpipe", logging.WARNING, __file__, 1, "span %d: %s", (2, "drift"), None)
    entry = json.loads(JsonLines().format(record))
    assert entry["level"] == "WARNING" and entry["logger"] == "petpipe" and entry["message"] == "span 2: drift"
    assert entry["time"].endswith("+00:00")
