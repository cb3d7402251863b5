"""Batch inference (TFX's BulkInferrer): every image of a directory, a glob or the data stage's TFRecords through an
exported version's serving signature in a Beam job, answered as `petpipe predict --json` answers them.

  inputs ─ image files: read (an unreadable file → an error row with the reason)
         └ TFRecords: tf.train.Example with image/encoded, named by image/filename (a record without the image
           → an error row)
       → RunInference(KeyedModelHandler(ServingSignatureHandler)): Beam's batching (BatchElements, up to
         --batch-size images per call) feeds the SavedModel's serving_default signature, which decodes in the
         graph and answers image_error for bytes that are not an image or are truncated
       → answer rows (schemas/answers.py: the same code turns a server's response into `petpipe predict`'s
         answers) → JSON lines.

A bad image never fails the job: the signature reports a bad envelope per image, and when the decoder refuses
damaged bytes inside an intact envelope (which fails the whole batch, as it fails a request on TF Serving), the
batch is retried image by image, so only the damaged image becomes an error row.

Output is committed atomically (commit_output): the job writes into a staging directory beside the output, then
renames it into place with a _SUCCESS marker inside, so a half-finished job leaves no output directory at all.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import apache_beam as beam
import tensorflow as tf
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from common.errors import PetpipeError
from components import fileio
from components.export import DEFAULT_SIGNATURE, IMAGE_BYTES_INPUT
from schemas import IMAGE_ENCODED, IMAGE_FILENAME
from schemas.answers import IMAGE_SUFFIXES, PetAnswer, answer_dict, answers_from_outputs, error_answer
from schemas.serving_layout import parse_version, version_dirs

TFRECORD_SUFFIXES = (".tfrecord", ".tfrecord.gz", ".tfrecords", ".tfrecords.gz")
ANSWERS_PREFIX = "answers"  # shards: answers-SSSSS-of-NNNNN.jsonl
ANSWERS_SUFFIX = ".jsonl"
SUCCESS_FILE = "_SUCCESS"  # Hadoop's and Spark's marker: present ⇒ every shard is complete
METRICS_NAMESPACE = "petpipe_infer"
_READ_ERRORS = "read_errors"


@dataclass(frozen=True)
class InferenceInputs:
    images: tuple[str, ...]  # image files
    tfrecords: tuple[str, ...]  # TFRecord files of tf.train.Example (GZIP when named *.gz)


@dataclass(frozen=True)
class ServedVersion:
    version: int
    path: str  # the version directory: <model base path>/<version>
    species_names: tuple[str, ...]  # the model's own species order (its assets/species.txt)


def _is_tfrecord(path: str) -> bool:
    return path.lower().endswith(TFRECORD_SUFFIXES)


def resolve_inputs(arguments: Sequence[str]) -> InferenceInputs:
    """Directories (their image files; or, when they hold none, every TFRecord file below them, e.g. a span's
    train/ eval/ test/), globs and files → the files to read; PetpipeError naming what matches nothing."""
    images, tfrecords = [], []
    for argument in arguments:
        if tf.io.gfile.isdir(argument):
            names = sorted(fileio.listdir(argument))
            found = [os.path.join(argument, n) for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
            if not found:
                found = sorted(
                    os.path.join(directory, name)
                    for directory, _, files in fileio.walk(argument)
                    for name in files
                    if _is_tfrecord(name)
                )
        elif any(c in argument for c in "*?["):
            found = sorted(p for p in tf.io.gfile.glob(argument) if not tf.io.gfile.isdir(p))
        else:
            found = [argument] if tf.io.gfile.exists(argument) else []
        if not found:
            raise PetpipeError(f"{argument}: no image or TFRecord files there")
        tfrecords += [p for p in found if _is_tfrecord(p)]
        images += [p for p in found if not _is_tfrecord(p)]
    return InferenceInputs(tuple(images), tuple(tfrecords))


def resolve_version(model_path: str) -> ServedVersion:
    """A version directory (<base>/<version>/saved_model.pb), or a model base path → its latest version, as TF
    Serving's default version policy (the highest number) picks it."""
    model_path = model_path.rstrip("/")
    version = parse_version(os.path.basename(model_path))
    if version is not None and tf.io.gfile.exists(os.path.join(model_path, "saved_model.pb")):
        path = model_path
    else:
        versions = version_dirs(fileio.listdir(model_path)) if tf.io.gfile.isdir(model_path) else {}
        if not versions:
            raise PetpipeError(f"{model_path}: no model versions there (expected <version>/saved_model.pb)")
        version = max(versions)
        path = os.path.join(model_path, versions[version])
        if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            raise PetpipeError(f"{path}: latest version has no saved_model.pb (still being written?)")
    species_file = os.path.join(path, "assets", "species.txt")
    with fileio.open_text(species_file) as f:
        species = tuple(line.rstrip("\n") for line in f if line.strip())
    return ServedVersion(version, path, species)


class ServingSignatureHandler(ModelHandler[bytes, PredictionResult, tf.Module]):
    """RunInference over an exported version's serving_default signature: a batch of encoded images in, one
    PetAnswer per image out (PredictionResult.inference)."""

    def __init__(self, served: ServedVersion, max_batch_size: int):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self._served = served

    def load_model(self) -> tf.Module:
        # The loaded module, not just its signature: the signature's function holds only weak references to the
        # module's variables, which would be freed with it.
        return tf.saved_model.load(self._served.path)

    def run_inference(self, batch: Sequence[bytes], model: tf.Module, inference_args=None) -> list[PredictionResult]:
        answers = self._answers(list(batch), model)
        version = str(self._served.version)
        return [PredictionResult(image, answer, version) for image, answer in zip(batch, answers, strict=True)]

    def _answers(self, images: list[bytes], model: tf.Module) -> list[PetAnswer]:
        signature = model.signatures[DEFAULT_SIGNATURE]
        try:
            outputs = signature(**{IMAGE_BYTES_INPUT: tf.constant(images, tf.string)})
        except tf.errors.InvalidArgumentError as exc:
            # The decoder refused bytes inside an intact JPEG/PNG/... envelope; that fails the whole batch.
            if len(images) == 1:
                first_line = exc.message.strip().splitlines()[0] if exc.message.strip() else type(exc).__name__
                return [error_answer(f"cannot decode image: {first_line}", self._served.version)]
            return [answer for image in images for answer in self._answers([image], model)]
        arrays = {name: tensor.numpy() for name, tensor in outputs.items()}
        return answers_from_outputs(arrays, self._served.version, list(self._served.species_names))

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(image) for image in batch)


class _ReadImageFiles(beam.DoFn):
    """path → (path, bytes); an unreadable file → (path, reason) on the read_errors output."""

    def process(self, path: str):
        try:
            yield path, fileio.read_bytes(path)
        except OSError as exc:
            yield beam.pvalue.TaggedOutput(_READ_ERRORS, (path, f"cannot read file: {exc.strerror or exc}"))


class _ImagesFromRecords(beam.DoFn):
    """(TFRecord file, serialized tf.train.Example) → (image/filename, image/encoded); a record without an image
    → (its file, reason) on the read_errors output."""

    def process(self, element: tuple[str, bytes]):
        tfrecord, serialized = element
        try:
            features = tf.train.Example.FromString(serialized).features.feature
        except Exception as exc:  # protobuf's DecodeError; its module differs between protobuf implementations
            yield beam.pvalue.TaggedOutput(_READ_ERRORS, (tfrecord, f"record is not a tf.train.Example: {exc}"))
            return
        names = features[IMAGE_FILENAME].bytes_list.value if IMAGE_FILENAME in features else []
        name = names[0].decode("utf-8", "replace") if names else tfrecord
        images = features[IMAGE_ENCODED].bytes_list.value if IMAGE_ENCODED in features else []
        if not images:
            yield beam.pvalue.TaggedOutput(_READ_ERRORS, (name, f"record in {tfrecord} has no {IMAGE_ENCODED}"))
            return
        yield name, images[0]


def _answer_line(name: str, answer: PetAnswer) -> str:
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rows").inc()
    if answer.error:
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, "error_rows").inc()
    return json.dumps(answer_dict(name, answer))


class InferAnswers(beam.PTransform):
    """Pipeline root → one JSON line per input image: answer_dict's fields (image = the file path or the record's
    image/filename). Line order is not the input order."""

    def __init__(self, inputs: InferenceInputs, served: ServedVersion, batch_size: int):
        super().__init__()
        self._inputs = inputs
        self._served = served
        self._batch_size = batch_size

    def expand(self, root):
        named_images, read_errors = [], []
        if self._inputs.images:
            read = (
                root
                | "ImagePaths" >> beam.Create(self._inputs.images)
                | "SpreadPaths" >> beam.Reshuffle()  # so that the reading runs in parallel on several workers
                | "ReadImages" >> beam.ParDo(_ReadImageFiles()).with_outputs(_READ_ERRORS, main="images")
            )
            named_images.append(read.images)
            read_errors.append(read[_READ_ERRORS])
        if self._inputs.tfrecords:
            records = (
                root
                | "TFRecordFiles" >> beam.Create(self._inputs.tfrecords)
                | "ReadRecords" >> beam.io.ReadAllFromTFRecord(with_filename=True)
                | "RecordImages" >> beam.ParDo(_ImagesFromRecords()).with_outputs(_READ_ERRORS, main="images")
            )
            named_images.append(records.images)
            read_errors.append(records[_READ_ERRORS])
        version = self._served.version
        handler = KeyedModelHandler(ServingSignatureHandler(self._served, self._batch_size))
        answered = (
            tuple(named_images)
            | "AllImages" >> beam.Flatten()
            | "RunInference" >> RunInference(handler)
            | "Answers" >> beam.MapTuple(lambda name, result: (name, result.inference))
        )
        unread = (
            tuple(read_errors)
            | "AllReadErrors" >> beam.Flatten()
            | "ErrorAnswers" >> beam.MapTuple(lambda name, reason: (name, error_answer(reason, version)))
        )
        return (answered, unread) | "AllAnswers" >> beam.Flatten() | "JsonLines" >> beam.MapTuple(_answer_line)


class WriteAnswers(beam.PTransform):
    """JSON lines → <directory>/answers-SSSSS-of-NNNNN.jsonl."""

    def __init__(self, directory: str):
        super().__init__()
        self._directory = directory

    def expand(self, lines):
        prefix = os.path.join(self._directory, ANSWERS_PREFIX)
        return lines | "WriteJsonLines" >> beam.io.WriteToText(prefix, file_name_suffix=ANSWERS_SUFFIX)


def staging_dir(output: str) -> str:
    """Where a job writes before commit_output: beside the output (same filesystem, so the rename is one step),
    under a name no reader takes for the result."""
    output = output.rstrip("/")
    return os.path.join(os.path.dirname(output), f".{os.path.basename(output)}.staging-{uuid.uuid4().hex}")


def check_output(output: str, overwrite: bool) -> None:
    """PetpipeError when `output` holds files and may not be replaced."""
    if tf.io.gfile.isdir(output) and fileio.listdir(output) and not overwrite:
        raise PetpipeError(f"{output}: output directory exists and is not empty (--overwrite replaces it)")
    if tf.io.gfile.exists(output) and not tf.io.gfile.isdir(output):
        raise PetpipeError(f"{output}: exists and is not a directory")


def commit_output(staging: str, output: str, summary: dict) -> None:
    """Move a finished job's files from `staging` to `output`, with _SUCCESS (the summary, JSON) among them.
    Local: _SUCCESS is written into staging and the directory renamed in one step (a previous output is moved
    aside first and deleted after), so `output` is either absent, the old result or the whole new one. URLs
    (object stores have no atomic rename): the shards are moved one by one and _SUCCESS written last, so readers
    must wait for _SUCCESS there."""
    marker = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    output = output.rstrip("/")
    if not fileio.is_remote(output):
        fileio.write_text(os.path.join(staging, SUCCESS_FILE), marker)
        previous = None
        if os.path.isdir(output) and os.listdir(output):
            previous = staging + ".previous"
            os.rename(output, previous)
        os.replace(staging, output)  # onto an absent or empty directory: atomic
        if previous:
            fileio.rmtree(previous, ignore_errors=True)
        return
    if tf.io.gfile.exists(output):
        fileio.rmtree(output)
    tf.io.gfile.makedirs(output)
    for name in fileio.listdir(staging):
        with fileio.os_errors(os.path.join(output, name)):
            tf.io.gfile.rename(os.path.join(staging, name), os.path.join(output, name), overwrite=True)
    fileio.write_text(os.path.join(output, SUCCESS_FILE), marker)
    fileio.rmtree(staging, ignore_errors=True)
