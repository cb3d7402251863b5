"""Preprocess: decode → RGB → letterbox-resize → JPEG → tf.train.Example, written as GZIP TFRecord shards per split.

`decode_and_resize` is the one image transformation of the project: the Beam stage calls it here, the trainer
calls it on the stored JPEGs, and the exported serving signature calls it on the client's bytes, so training
and serving see the same pixels (no skew).

Aspect handling: the image is scaled so that its longer side equals `size` (area-averaging, antialiased) and
centred on a black square canvas; nothing is cropped and no shape is distorted, which matters because head
proportions are a breed cue.
"""

from __future__ import annotations

import logging
import os
import re

import apache_beam as beam
import tensorflow as tf

from components.ingest import SPLITS, LabelledImage
from pipeline.errors import DataError
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


def decode_and_resize(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP bytes (scalar tf.string) → uint8 [size, size, 3], aspect kept by letterboxing."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
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


class ImageToExample:
    """Callable core of the Beam stage: LabelledImage → serialized tf.train.Example (DataError if undecodable)."""

    def __init__(self, image_size: int, jpeg_quality: int, hierarchy: Hierarchy):
        self.hierarchy = hierarchy
        self._transform = tf.function(
            lambda data: tf.io.encode_jpeg(decode_and_resize(data, image_size), quality=jpeg_quality),
            input_signature=[tf.TensorSpec([], tf.string)],
        )

    def __call__(self, item: LabelledImage) -> bytes:
        try:
            jpeg = self._transform(tf.constant(item.data)).numpy()
        except tf.errors.InvalidArgumentError as exc:
            reason = tf_error_reason(exc.message) or "undecodable"
            raise DataError(
                f"{item.path} (annotated at {item.record.where}): not a decodable image: {reason}"
            ) from None
        r = item.record
        return make_example(r.image, r.breed, r.species, r.breed_in_species, jpeg, self.hierarchy).SerializeToString()


class _EncodeExampleFn(beam.DoFn):
    """Decodes, resizes and re-encodes one image into a tf.train.Example, tagged with its split."""

    def __init__(self, image_size: int, jpeg_quality: int, hierarchy: Hierarchy):
        self._args = (image_size, jpeg_quality, hierarchy)
        self._to_example = None
        self._done = 0

    def setup(self):
        # Built per worker: tf.function objects do not pickle.
        self._to_example = ImageToExample(*self._args)

    def process(self, item: LabelledImage):
        serialized = self._to_example(item)
        beam.metrics.Metrics.counter("preprocess", f"written_{item.split}").inc()
        self._done += 1
        if self._done % PROGRESS_EVERY == 0:  # per worker: a long job shows it is moving
            log.info("preprocess: %d images encoded by this worker", self._done)
        yield beam.pvalue.TaggedOutput(item.split, serialized)


def split_prefix(tfrecord_dir: str, split: str) -> str:
    return os.path.join(tfrecord_dir, split, split)


def split_pattern(tfrecord_dir: str, split: str) -> str:
    return split_prefix(tfrecord_dir, split) + "-*" + TFRECORD_SUFFIX


class WritePetExamples(beam.PTransform):
    """LabelledImage → GZIP TFRecord shards `<tfrecord_dir>/<split>/<split>-SSSSS-of-NNNNN.tfrecord.gz`."""

    def __init__(self, tfrecord_dir: str, image_size: int, jpeg_quality: int, num_shards: int, hierarchy: Hierarchy):
        super().__init__()
        self.tfrecord_dir = tfrecord_dir
        self.num_shards = num_shards
        self.encode = _EncodeExampleFn(image_size, jpeg_quality, hierarchy)

    def expand(self, images):
        by_split = images | "Encode" >> beam.ParDo(self.encode).with_outputs(*SPLITS)
        for split in SPLITS:
            _ = by_split[split] | f"Write{split.capitalize()}" >> beam.io.WriteToTFRecord(
                split_prefix(self.tfrecord_dir, split),
                file_name_suffix=TFRECORD_SUFFIX,
                num_shards=self.num_shards,
                compression_type=beam.io.filesystem.CompressionTypes.GZIP,
            )
        return by_split
