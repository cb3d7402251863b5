"""`petpipe infer`: batch inference with Beam's RunInference over image files and TFRecords."""

from __future__ import annotations

import glob
import json
import os

import pytest

from pipeline.cli import main
from tests.image_factory import DAMAGED_JPEG, jpeg_bytes


def _rows(output: str) -> dict[str, dict]:
    rows = {}
    for path in sorted(glob.glob(os.path.join(output, "answers-*.jsonl"))):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                assert row["image"] not in rows, f"{row['image']} answered twice"
                rows[row["image"]] = row
    return rows


def _same_answer(inferred: dict, predicted: dict) -> None:
    """Strings, flags and the version exactly; probabilities to float32 rounding (the two ran different batches)."""
    for key in ("image", "species", "breed", "species_uncertain", "version", "error"):
        assert inferred[key] == predicted[key], key
    assert inferred["species_probs"] == pytest.approx(predicted["species_probs"], abs=1e-6)
    assert inferred["breed_prob"] == pytest.approx(predicted["breed_prob"], abs=1e-6)
    assert [t["breed"] for t in inferred["top_k"]] == [t["breed"] for t in predicted["top_k"]]
    assert [t["score"] for t in inferred["top_k"]] == pytest.approx([t["score"] for t in predicted["top_k"]], abs=1e-6)


def _staging_leftovers(output: str) -> list[str]:
    parent, name = os.path.split(output.rstrip("/"))
    return [n for n in os.listdir(parent) if n.startswith(f".{name}.staging-")]


def test_infer_answers_as_petpipe_predict_does_against_petpipe_serve(exported_model, tmp_path, capsys):
    from serving.server import start_server

    base, version, _ = exported_model
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(5):
        (images / f"pet{seed}.jpg").write_bytes(jpeg_bytes(seed))
    (images / "not-an-image.png").write_bytes(b"these bytes are no picture at all")  # image_error from the graph
    server = start_server(base, "pets", port=0)
    try:
        assert (
            main(["predict", "--server", f"127.0.0.1:{server.port}", "--json", "--batch-size", "4", str(images)]) == 0
        )
    finally:
        server.stop(grace=1)
    predicted = {row["image"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    output = tmp_path / "answers"

    assert main(["infer", "--model", base, "--input", str(images), "--output", str(output), "--batch-size", "3"]) == 0

    inferred = _rows(str(output))
    assert sorted(inferred) == sorted(predicted) and len(inferred) == 6
    for name, row in inferred.items():
        _same_answer(row, predicted[name])
    assert inferred[str(images / "not-an-image.png")]["error"] == "not a JPEG, PNG, GIF or BMP image"
    assert (
        inferred[str(images / "pet0.jpg")]["version"] == version and inferred[str(images / "pet0.jpg")]["error"] == ""
    )
    summary = json.loads((output / "_SUCCESS").read_text())
    assert (summary["rows"], summary["error_rows"], summary["version"]) == (6, 1, version)
    assert f"6 answers (1 errors) in {output}" in capsys.readouterr().out
    assert _staging_leftovers(str(output)) == []


def test_bad_and_unreadable_images_are_error_rows_and_the_job_succeeds(exported_model, tmp_path):
    base, version, path = exported_model
    images = tmp_path / "images"
    images.mkdir()
    (images / "good.jpg").write_bytes(jpeg_bytes(1))
    (images / "empty.jpg").write_bytes(b"")
    (images / "truncated.jpg").write_bytes(jpeg_bytes(2)[:200])
    (images / "damaged.jpg").write_bytes(DAMAGED_JPEG)  # passes the envelope check; the decoder fails its batch
    os.symlink(tmp_path / "gone.jpg", images / "dangling.jpg")  # listed, but cannot be opened
    output = tmp_path / "answers"

    # One batch holds all five: the damaged image must not take the others' answers with it.
    assert main(["infer", "--model", path, "--input", str(images), "--output", str(output), "--batch-size", "8"]) == 0

    errors = {os.path.basename(name): row["error"] for name, row in _rows(str(output)).items()}
    assert errors["good.jpg"] == ""
    assert errors["empty.jpg"] == "empty, or too short to be an image"
    assert errors["truncated.jpg"] == "truncated image: the file ends before the image does"
    assert errors["damaged.jpg"].startswith("cannot decode image: ")
    assert errors["dangling.jpg"] == "cannot read file: No such file or directory"
    assert len(errors) == 5
    assert json.loads((output / "_SUCCESS").read_text())["error_rows"] == 4


def test_a_job_that_fails_midway_leaves_no_output_and_keeps_the_previous_one(exported_model, tmp_path, monkeypatch):
    from components import bulk_inference

    base = exported_model[0]
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(4):
        (images / f"pet{seed}.jpg").write_bytes(jpeg_bytes(seed))
    calls = []

    def fail_on_the_second_batch(self, batch, model, inference_args=None):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("worker lost")
        return original(self, batch, model, inference_args)

    original = bulk_inference.ServingSignatureHandler.run_inference
    monkeypatch.setattr(bulk_inference.ServingSignatureHandler, "run_inference", fail_on_the_second_batch)
    fresh, previous = tmp_path / "fresh", tmp_path / "previous"
    previous.mkdir()
    (previous / "answers-00000-of-00001.jsonl").write_text('{"image": "old"}\n')
    (previous / "_SUCCESS").write_text("{}\n")

    with pytest.raises(Exception, match="worker lost"):
        main(["infer", "--model", base, "--input", str(images), "--output", str(fresh), "--batch-size", "1"])
    assert calls[:2] == [1, 1] and not fresh.exists() and _staging_leftovers(str(fresh)) == []

    calls.clear()
    argv = ["--model", base, "--input", str(images), "--output", str(previous), "--batch-size", "1", "--overwrite"]
    with pytest.raises(Exception, match="worker lost"):
        main(["infer", *argv])
    assert sorted(os.listdir(previous)) == ["_SUCCESS", "answers-00000-of-00001.jsonl"]
    assert _rows(str(previous)) == {"old": {"image": "old"}} and _staging_leftovers(str(previous)) == []


def test_tfrecords_of_the_data_stage_are_answered_by_their_image_filename(exported_model, tiny_tfrecords, tmp_path):
    import tensorflow as tf

    tfrecord_dir, written = tiny_tfrecords
    test_dir = os.path.join(tfrecord_dir, "test")
    expected = []
    for path in sorted(glob.glob(os.path.join(test_dir, "*.tfrecord.gz"))):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            example = tf.train.Example.FromString(record.numpy())
            expected.append(example.features.feature["image/filename"].bytes_list.value[0].decode())
    output = tmp_path / "answers"

    assert main(["infer", "--model", exported_model[0], "--input", test_dir, "--output", str(output)]) == 0

    rows = _rows(str(output))
    assert sorted(rows) == sorted(expected) and len(rows) == written["test"] > 0
    assert all(row["error"] == "" and row["species"] in ("cat", "dog") for row in rows.values())


@pytest.mark.parametrize(
    "argv_tail, message",
    [
        (["--model", "{empty}", "--input", "{images}"], "{empty}: no model versions there"),
        (["--model", "{model}", "--input", "{images}/*.webp"], "{images}/*.webp: no image or TFRecord files there"),
        (["--model", "{model}", "--input", "{tmp}/missing.jpg"], "{tmp}/missing.jpg: no image or TFRecord files"),
        (["--model", "{model}", "--input", "{images}", "--output", "{images}"], "{images}: output directory exists"),
    ],
)
def test_bad_arguments_are_one_line_errors_naming_the_path(argv_tail, message, exported_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "pet.jpg").write_bytes(jpeg_bytes(0))
    names = {"empty": tmp_path / "empty", "images": tmp_path / "images", "model": exported_model[0], "tmp": tmp_path}
    argv = ["infer", *(a.format(**names) for a in argv_tail)]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out")]

    assert main(argv) == 2

    err = capsys.readouterr().err
    assert err.startswith(f"petpipe: error: {message.format(**names)}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    text = capsys.readouterr().out
    for flag in ("--model", "--input", "--output", "--overwrite", "--batch-size", "_SUCCESS", "Beam options"):
        assert flag in text
