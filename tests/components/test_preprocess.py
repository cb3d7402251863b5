import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components import records as rec
from components.ingest import AnnotationRecord, LabelledImage, label_record, read_oxford_annotations
from components.preprocess import ImageToExample, decode_and_resize, split_pattern
from components.records import Rejected
from schemas import breed_feature


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def test_letterbox_keeps_aspect_and_centres():
    wide = np.full((50, 100, 3), 200, np.uint8)  # 2:1 grey image
    out = decode_and_resize(tf.constant(_encode(wide, "PNG")), 32).numpy()
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert (out[:8] == 0).all() and (out[-8:] == 0).all()  # 8 black rows above and below a 16-row band
    assert (out[8:24] == 200).all()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_decodes_common_formats_to_rgb(fmt):
    pixels = np.zeros((40, 40, 3), np.uint8)
    pixels[..., 0] = 255
    out = decode_and_resize(tf.constant(_encode(pixels, fmt)), 16).numpy()
    assert out.shape == (16, 16, 3)
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 60


def test_grayscale_and_rgba_become_rgb():
    gray = decode_and_resize(tf.constant(_encode(np.full((20, 20), 90, np.uint8), "PNG")), 8).numpy()
    assert gray.shape == (8, 8, 3) and np.all(gray == 90)
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 1] = 255
    rgba[..., 3] = 128
    out = decode_and_resize(tf.constant(_encode(rgba, "PNG")), 8).numpy()
    assert out.shape == (8, 8, 3) and np.all(out[..., 1] == 255)


def test_core_encodes_or_rejects_with_a_reason(hierarchy):
    record = AnnotationRecord("Bengal_1", 5, 0, 1, "annotations/trainval.txt", 9)
    to_example = ImageToExample(16, 90, hierarchy, 32, 10_000_000)
    with pytest.raises(Rejected) as error:
        to_example(LabelledImage(record, "train", "images/Bengal_1.jpg", b"this is not an image"))
    assert error.value.reason == rec.NOT_AN_IMAGE and error.value.message.startswith("images/Bengal_1.jpg: ")
    png = _encode(np.full((60, 40, 3), 7, np.uint8), "PNG")
    encoded = to_example(LabelledImage(record, "eval", "images/Bengal_1.jpg", png))
    assert (encoded.split, encoded.width, encoded.height, encoded.nbytes) == ("eval", 40, 60, len(png))
    example = tf.train.Example.FromString(encoded.serialized).features.feature
    assert example["label/breed"].int64_list.value == [5] and example["label/dog_breed"].int64_list.value == [-1]
    truncated = _encode(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), "JPEG")[:300]
    with pytest.raises(Rejected) as error:
        to_example(LabelledImage(record, "train", "x.jpg", truncated))
    assert error.value.reason == rec.TRUNCATED_IMAGE


def _read_split(tfrecord_dir, split, schema_spec):
    files = tf.io.gfile.glob(split_pattern(tfrecord_dir, split))
    return [tf.io.parse_single_example(s, schema_spec) for s in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_tfrecords_match_annotations(tiny_tfrecords, tiny_data, hierarchy, schema):
    from components.train import parse_spec

    tfrecord_dir, counts = tiny_tfrecords
    spec = parse_spec(schema)
    annotations = {}
    for name in ("trainval.txt", "test.txt"):
        path = os.path.join(tiny_data, "annotations", name)
        for record in read_oxford_annotations(path, os.path.join(tiny_data, "images"), 0.3):
            annotations[f"{record.key}.jpg"] = label_record(record, hierarchy)
    seen = {}
    for split in ("train", "eval", "test"):
        examples = _read_split(tfrecord_dir, split, spec)
        assert len(examples) == counts[split], split  # the summary counts what was written
        for example in examples:
            filename = example["image/filename"].numpy().decode()
            record = annotations[filename]
            seen[filename] = split
            assert example["image/format"].numpy() == b"jpeg"
            assert int(example["label/breed"]) == record.breed
            assert int(example["label/species"]) == record.species
            for index, species in enumerate(hierarchy.species):
                value = int(example[breed_feature(species)])
                assert value == (record.breed_in_species if index == record.species else -1)
            image = tf.io.decode_jpeg(example["image/encoded"]).numpy()
            assert image.shape == (64, 64, 3)
    assert set(seen) == set(annotations)  # every annotated image is written exactly once
    assert sum(counts.values()) == len(annotations) == 111
    assert all(seen[f] == "test" for f, r in annotations.items() if r.source.endswith("test.txt"))
    assert counts["eval"] > 0 and counts["train"] > counts["eval"]
    assert len(tf.io.gfile.glob(split_pattern(tfrecord_dir, "train"))) == 2  # num_shards
