"""Preprocess: check → decode → RGB → letterbox-resize → JPEG → tf.train.Example → GZIP TFRecord shards per split;
images that fail a check go to the quarantine (`quarantine/<split>.jsonl`, one JSON line each) with a reason.

`decode_and_resize` is the one image transformation of the project: the Beam stage calls it here, the trainer
calls it on the stored JPEGs, and the exported serving signature calls it on the client's bytes, so training
and serving see the same pixels (no skew).

A large JPEG is decoded at a reduced scale first (libjpeg's scaled IDCT, 1/2 to 1/8, keeping at least `size` pixels
on the longer side: decode_at_least), which skips most of the decoding work of a 500×375 photo resized to 64 px.

Aspect handling: the image is scaled so that its longer side equals `size` (area-averaging, antialiased) and
centred on a black square canvas; nothing is cropped and no shape is distorted, which matters because head
proportions are a breed cue.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import re
import zlib
from dataclasses import dataclass

import apache_beam as beam
import tensorflow as tf
from apache_beam.transforms.window import GlobalWindows

from components import fileio
from components.image_check import check_image, classify_decode_error
from components.ingest import QUARANTINE, SPLITS, LabelledImage, counter
from components.records import STAGE_DECODE, Provenance, Quarantined, Rejected
from schemas import (
    IMAGE_ENCODED,
    IMAGE_FILENAME,
    IMAGE_FORMAT,
    LABEL_BREED,
    LABEL_SPECIES,
    NOT_THIS_SPECIES,
    Hierarchy,
    breed_feature,
)

TFRECORD_SUFFIX = ".tfrecord.gz"
PROGRESS_EVERY = 500
log = logging.getLogger("petpipe")


JPEG_SCALES = (1, 2, 4, 8)  # the reduced sizes libjpeg decodes to directly (its scaled IDCT), as ratio=1/N


def decode_at_least(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
    """Decoded uint8 [h, w, 3]. A JPEG is decoded at the largest reduction (1/2, 1/4, 1/8: libjpeg's scaled IDCT,
    which skips most of the decoding work) whose longer side still has `size` pixels or more; any other format, or a
    JPEG too small to reduce, at full size (exactly as tf.io.decode_image)."""

    def reduced_jpeg():
        height_width = tf.image.extract_jpeg_shape(image_bytes)[:2]
        longer = tf.reduce_max(height_width)
        # How many of the reductions 2, 4, 8 keep ceil(longer / N) >= size, i.e. longer > (size - 1) * N.
        steps = tf.add_n([tf.cast(longer > (size - 1) * n, tf.int32) for n in JPEG_SCALES[1:]])
        branches = [lambda n=n: tf.io.decode_jpeg(image_bytes, channels=3, ratio=n) for n in JPEG_SCALES]
        return tf.switch_case(steps, branches)

    def any_format():
        return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)

    return tf.cond(tf.io.is_jpeg(image_bytes), reduced_jpeg, any_format)


def decode_and_resize(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP bytes (scalar tf.string) → uint8 [size, size, 3], aspect kept by letterboxing. Large JPEGs
    are decoded at a reduced scale first (decode_at_least)."""
    image = decode_at_least(image_bytes, size)
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = tf.cast(size, tf.float32) / tf.maximum(height, width)
    new_height = tf.clip_by_value(tf.cast(tf.round(height * scale), tf.int32), 1, size)
    new_width = tf.clip_by_value(tf.cast(tf.round(width * scale), tf.int32), 1, size)
    resized = tf.image.resize(image, [new_height, new_width], method="area", antialias=True)
    resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return tf.image.pad_to_bounding_box(resized, (size - new_height) // 2, (size - new_width) // 2, size, size)


def make_example(
    record_image: str, breed: int, species: int, breed_in_species: int, jpeg: bytes, hierarchy: Hierarchy
) -> tf.train.Example:
    """The tf.train.Example of schemas/schema.pbtxt; label/<s>_breed is -1 unless the image is of species s."""

    def int_feature(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    def bytes_feature(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    features = {
        IMAGE_ENCODED: bytes_feature(jpeg),
        IMAGE_FORMAT: bytes_feature(b"jpeg"),
        IMAGE_FILENAME: bytes_feature(f"{record_image}.jpg".encode()),
        LABEL_SPECIES: int_feature(species),
        LABEL_BREED: int_feature(breed),
    }
    for index, name in enumerate(hierarchy.species):
        features[breed_feature(name)] = int_feature(breed_in_species if index == species else NOT_THIS_SPECIES)
    return tf.train.Example(features=tf.train.Features(feature=features))


_TF_ERROR_NOISE = re.compile(r"^(Graph execution error:|Detected at node|<stack traces unavailable>|\s*\[\[)")


def tf_error_reason(tf_message: str) -> str:
    """The line of a TF error message that says what is wrong, without graph-execution and node context."""
    for line in (tf_message or "").splitlines():
        line = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", line).strip()
        if line and not _TF_ERROR_NOISE.match(line):
            return line
    return ""


@dataclass(frozen=True)
class EncodedExample:
    """What the preprocess core makes of one image: the serialized Example and facts for the statistics."""

    split: str
    serialized: bytes
    width: int  # of the source image, upright
    height: int
    nbytes: int  # of the source file


BATCH_SIZE = (
    64  # images per TensorFlow call in the local job: one call's fixed cost (~0.4 ms) shared, TF's threads busy
)


class ImageToExample:
    """Pure core of the stage: LabelledImage → EncodedExample, or Rejected(reason, message) to quarantine it.

    check_image rejects empty, non-image, tiny and bomb-sized files from their header and hands TF bytes it
    decodes as intended (CMYK, EXIF-rotated, ... normalised); TF's own decode errors (truncated data) are
    classified too. `encode_batch` transforms many images in one TensorFlow call (tf.map_fn: the calls' fixed cost
    is paid once, and the images are decoded in parallel on TF's threads, so both cores work).
    """

    def __init__(self, image_size: int, jpeg_quality: int, hierarchy: Hierarchy, min_side: int, max_pixels: int):
        self.hierarchy = hierarchy
        self.limits = (min_side, max_pixels)

        def transform(data):
            return tf.io.encode_jpeg(decode_and_resize(data, image_size), quality=jpeg_quality)

        self._transform = tf.function(transform, input_signature=[tf.TensorSpec([], tf.string)])
        self._transform_batch = tf.function(
            lambda batch: tf.map_fn(transform, batch, fn_output_signature=tf.string, parallel_iterations=16),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )

    def __call__(self, item: LabelledImage) -> EncodedExample:
        [outcome] = self.encode_batch([item])
        if isinstance(outcome, Rejected):
            raise outcome
        return outcome

    def encode_batch(self, items: list[LabelledImage]) -> list[EncodedExample | Rejected]:
        """One outcome per item, in order."""
        outcomes: list[EncodedExample | Rejected | None] = [None] * len(items)
        checked = []
        for i, item in enumerate(items):
            try:
                checked.append((i, *check_image(item.data, *self.limits)))
            except Rejected as exc:
                outcomes[i] = Rejected(exc.reason, f"{item.path}: {exc.message}")
        jpegs: list[bytes | None] = [None] * len(checked)
        # An image of the batch TF cannot decode fails the whole call: then each is transformed alone, to name it.
        with contextlib.suppress(tf.errors.InvalidArgumentError):
            if checked:
                jpegs = list(self._transform_batch(tf.constant([data for _, data, _ in checked])).numpy())
        for (i, data, info), jpeg in zip(checked, jpegs, strict=True):
            item = items[i]
            try:
                jpeg = jpeg if jpeg is not None else self._transform_one(item, data)
            except Rejected as exc:
                outcomes[i] = exc
                continue
            r = item.record
            example = make_example(r.image, r.breed, r.species, r.breed_in_species, jpeg, self.hierarchy)
            outcomes[i] = EncodedExample(
                item.split, example.SerializeToString(), info.width, info.height, len(item.data)
            )
        return outcomes

    def _transform_one(self, item: LabelledImage, data: bytes) -> bytes:
        try:
            return self._transform(tf.constant(data)).numpy()
        except tf.errors.InvalidArgumentError as exc:
            reason = tf_error_reason(exc.message) or "undecodable"
            raise Rejected(classify_decode_error(exc.message), f"{item.path}: {reason}") from None


class EncodeExampleFn(beam.DoFn):
    """Checks, decodes, resizes and re-encodes images; main output EncodedExample, or a quarantine entry. `process`
    takes one LabelledImage (the Dask job's shape); EncodeBatchFn takes lists of them."""

    def __init__(self, *core_args):
        self._core_args = core_args
        self._to_example = None
        self._done = 0

    def setup(self):
        # Built per worker: tf.function objects do not pickle.
        self._to_example = ImageToExample(*self._core_args)

    def process(self, item: LabelledImage):
        yield from self._outputs([item], self._to_example.encode_batch([item]))

    def _outputs(self, items: list[LabelledImage], outcomes: list[EncodedExample | Rejected]):
        for item, outcome in zip(items, outcomes, strict=True):
            self._done += 1
            if self._done % PROGRESS_EVERY == 0:  # per worker: a long job shows it is moving
                log.info("preprocess: %d images done by this worker", self._done)
            if isinstance(outcome, Rejected):
                r = item.record
                entry = Quarantined(
                    r.image, Provenance(r.source, r.line_no), item.split, STAGE_DECODE, outcome.reason, outcome.message
                )
                yield beam.pvalue.TaggedOutput(QUARANTINE, entry)
                continue
            counter("preprocess", f"written_{item.split}").inc()
            yield outcome


class EncodeBatchFn(EncodeExampleFn):
    """EncodeExampleFn over lists of LabelledImage (from beam.BatchElements), one TensorFlow call per list, pipelined:
    a list is encoded on a worker thread (TensorFlow releases the GIL while it decodes) while this thread reads and
    checks the next one, and its outputs are emitted when the next list arrives or the bundle ends. (Not for Beam's
    DaskRunner, which drops what finish_bundle emits: the Dask job uses EncodeExampleFn.process.)"""

    def setup(self):
        super().setup()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="encode")
        self._pending = None

    def start_bundle(self):
        self._pending = None

    def process(self, items: list[LabelledImage]):
        previous, self._pending = self._pending, (items, self._executor.submit(self._to_example.encode_batch, items))
        if previous is not None:
            yield from self._outputs(previous[0], previous[1].result())

    def finish_bundle(self):
        if self._pending is None:
            return
        (items, future), self._pending = self._pending, None
        for output in self._outputs(items, future.result()):
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
            else:
                yield GlobalWindows.windowed_value(output)

    def teardown(self):
        self._executor.shutdown(wait=True)


def split_prefix(tfrecord_dir: str, split: str) -> str:
    return os.path.join(tfrecord_dir, split, split)


def split_pattern(tfrecord_dir: str, split: str) -> str:
    return split_prefix(tfrecord_dir, split) + "-*" + TFRECORD_SUFFIX


def quarantine_path(tfrecord_dir: str, split: str) -> str:
    return os.path.join(tfrecord_dir, QUARANTINE, f"{split}.jsonl")


class EncodeExamples(beam.PTransform):
    """LabelledImage → {"examples": EncodedExample, "quarantine": Quarantined}."""

    def __init__(self, image_size: int, jpeg_quality: int, hierarchy: Hierarchy, min_side: int, max_pixels: int):
        super().__init__()
        self.encode = EncodeBatchFn(image_size, jpeg_quality, hierarchy, min_side, max_pixels)

    def expand(self, images):
        batches = images | "Batch" >> beam.BatchElements(min_batch_size=BATCH_SIZE, max_batch_size=BATCH_SIZE)
        encoded = batches | "Encode" >> beam.ParDo(self.encode).with_outputs(QUARANTINE, main="examples")
        return {"examples": encoded.examples, QUARANTINE: encoded[QUARANTINE]}


def shard_path(tfrecord_dir: str, split: str, shard: int, num_shards: int) -> str:
    """`<tfrecord_dir>/<split>/<split>-SSSSS-of-NNNNN.tfrecord.gz`, as Beam's file sinks name shards."""
    return f"{split_prefix(tfrecord_dir, split)}-{shard:05d}-of-{num_shards:05d}{TFRECORD_SUFFIX}"


def shard_key(example: EncodedExample, num_shards: int) -> tuple[int, int]:
    """(split index, shard): from the record's bytes (crc32, the same in every worker process, unlike hash())."""
    return SPLITS.index(example.split), zlib.crc32(example.serialized) % num_shards


def write_tfrecords(path: str, serialized) -> None:
    """One GZIP TFRecord file of the records (TensorFlow's writer: checksums and compression in C++)."""
    fileio.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for record in serialized:
            writer.write(record)


def write_lines(path: str, lines) -> None:
    fileio.makedirs(os.path.dirname(path))
    fileio.write_text(path, "".join(line + "\n" for line in lines))


class WriteSplits(beam.PTransform):
    """EncodedExample → GZIP TFRecord shards `<tfrecord_dir>/<split>/<split>-SSSSS-of-NNNNN.tfrecord.gz`, every shard
    of every split written (empty ones too, as Beam's sinks do). One GroupByKey group per shard file, written by one
    TFRecordWriter: Beam's WriteToTFRecord costs more per record (checksums and compression in Python) and adds a
    dozen transforms per split to the job; the staging directory's rename already makes the whole output atomic."""

    def __init__(self, tfrecord_dir: str, num_shards: int):
        super().__init__()
        self.tfrecord_dir = tfrecord_dir
        self.num_shards = num_shards

    def expand(self, examples):
        shards = [(split, shard) for split in range(len(SPLITS)) for shard in range(self.num_shards)]
        every_shard = examples.pipeline | "EveryShard" >> beam.Create([(key, None) for key in shards])
        _ = (
            (examples | "KeyByShard" >> beam.Map(lambda e, n: (shard_key(e, n), e.serialized), self.num_shards),
             every_shard)
            | "WithEmptyShards" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.MapTuple(self._write_shard)
        )  # fmt: skip
        return examples

    def _write_shard(self, key: tuple[int, int], records) -> None:
        split, shard = key
        path = shard_path(self.tfrecord_dir, SPLITS[split], shard, self.num_shards)
        write_tfrecords(path, (record for record in records if record is not None))


def count_quarantined(entry: Quarantined) -> Quarantined:
    counter("quarantine", f"quarantined_{entry.split}").inc()
    counter("quarantine", f"reason_{entry.reason}").inc()
    return entry


class WriteQuarantine(beam.PTransform):
    """Quarantined → one JSON line each in `<tfrecord_dir>/quarantine/<split>.jsonl` (empty file if none)."""

    def __init__(self, tfrecord_dir: str):
        super().__init__()
        self.tfrecord_dir = tfrecord_dir

    def expand(self, entries):
        counted = entries | "Count" >> beam.Map(count_quarantined)
        every_split = entries.pipeline | "EverySplit" >> beam.Create([(split, None) for split in SPLITS])
        _ = (
            (counted | "KeyBySplit" >> beam.Map(lambda q: (q.split, q.to_json())), every_split)
            | "WithEmptySplits" >> beam.Flatten()
            | "GroupBySplit" >> beam.GroupByKey()
            | "WriteSplit" >> beam.MapTuple(self._write_split)
        )
        return counted

    def _write_split(self, split: str, lines) -> None:
        write_lines(quarantine_path(self.tfrecord_dir, split), [line for line in lines if line is not None])
