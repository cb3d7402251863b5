"""Large JPEGs are decoded at a reduced scale (libjpeg's scaled IDCT) by decode_at_least, inside decode_and_resize —
the one image function of the data stage, the trainer's input pipeline and the serving graph — and the three paths
give the same pixels for the same photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components import records as rec
from components.export import export_model
from components.ingest import AnnotationRecord, LabelledImage
from components.preprocess import ImageToExample, decode_and_resize, decode_at_least, make_example
from components.records import Rejected
from components.train import parse_labelled_example, parse_spec
from datasources.photo_pets import photo_jpeg
from datasources.synthetic_pets import breed_looks, image_rng, plan
from tests.conftest import TEST_EXPORT, TINY_TRAIN

SIZE = 32


def _jpeg(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(width).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("width", "height", "size", "ratio"),
    [
        (500, 375, 64, 4),  # 125 x 94: the largest reduction keeping the longer side >= 64
        (500, 375, 63, 8),  # ceil(500 / 8) = 63
        (500, 375, 32, 8),  # 63 x 47
        (500, 375, 224, 2),
        (120, 90, 64, 1),  # too small to reduce: decoded as tf.io.decode_image decodes it
        (300, 500, 64, 4),  # portrait: the longer side is the height
    ],
)
def test_a_jpeg_is_decoded_at_the_largest_reduction_that_keeps_size_pixels(width, height, size, ratio):
    data = _jpeg(width, height)
    decoded = decode_at_least(tf.constant(data), size).numpy()
    expected = tf.io.decode_jpeg(data, channels=3, ratio=ratio).numpy()
    assert decoded.shape == expected.shape and max(decoded.shape[:2]) >= size
    np.testing.assert_array_equal(decoded, expected)


def test_other_formats_are_decoded_at_full_size():
    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), (10, 20, 30)).save(buffer, "PNG")
    assert decode_at_least(tf.constant(buffer.getvalue()), 32).numpy().shape == (300, 400, 3)


@pytest.fixture(scope="module")
def photo(hierarchy) -> bytes:
    trainval, _ = plan(hierarchy, per_breed=2, test_fraction=0.5)
    first = trainval[0]
    breed = hierarchy.breeds[first.class_id - 1]
    return photo_jpeg(breed, breed_looks(hierarchy)[breed.name], image_rng(0, first))


def test_data_stage_trainer_and_serving_see_the_same_pixels_of_a_photo(photo, hierarchy, schema, tmp_path):
    pixels = decode_and_resize(tf.constant(photo), SIZE).numpy()
    assert max(Image.open(io.BytesIO(photo)).size) >= 300  # a photo-size JPEG: the reduced decode is used

    # The data stage stores exactly the JPEG of these pixels.
    record = AnnotationRecord("Abyssinian_1", 0, 0, 0, "annotations/trainval.txt", 7)
    encoded = ImageToExample(SIZE, 95, hierarchy, 32, 10_000_000)(LabelledImage(record, "train", "a.jpg", photo))
    stored = tf.train.Example.FromString(encoded.serialized).features.feature["image/encoded"].bytes_list.value[0]
    assert stored == tf.io.encode_jpeg(pixels, quality=95).numpy()

    # The trainer's input pipeline, given the photo itself, decodes it to the same pixels.
    example = make_example("Abyssinian_1", 0, 0, 0, photo, hierarchy).SerializeToString()
    image, _ = parse_labelled_example(tf.constant(example), parse_spec(schema), hierarchy, SIZE)
    np.testing.assert_array_equal(image.numpy(), pixels)

    # The serving signature answers on the photo's bytes what the model answers on these pixels (random weights:
    # any other decode would move the probabilities far beyond the tolerance).
    from components.model import build_multihead_model

    model = build_multihead_model(hierarchy, SIZE, TINY_TRAIN)
    rng = np.random.default_rng(5)
    for weight in model.trainable_weights:  # not the moving statistics: a negative variance would give NaN
        weight.assign(rng.normal(0, 0.3, weight.shape).astype("float32"))
    _, path = export_model(model, hierarchy, str(tmp_path / "pets"), SIZE, TEST_EXPORT)
    served = tf.saved_model.load(path).signatures["serving_default"](image_bytes=tf.constant([photo]))
    direct = model(tf.cast(pixels[None], tf.float32), training=False)
    np.testing.assert_allclose(served["species_probs"].numpy(), direct["species"].numpy(), rtol=1e-5, atol=1e-6)
    assert abs(float(direct["species"][0, 0]) - 0.5) > 0.05  # the random weights answered, not a blank model


def test_a_batch_with_an_undecodable_image_still_encodes_the_others(photo, hierarchy):
    record = AnnotationRecord("Abyssinian_1", 0, 0, 0, "annotations/trainval.txt", 7)
    truncated = photo[: len(photo) // 2]
    items = [LabelledImage(record, "train", f"{i}.jpg", data) for i, data in enumerate((photo, truncated, photo))]
    to_example = ImageToExample(SIZE, 95, hierarchy, 32, 10_000_000)
    first, broken, last = to_example.encode_batch(items)
    assert isinstance(broken, Rejected) and broken.reason == rec.TRUNCATED_IMAGE and broken.message.startswith("1.jpg")
    assert first.serialized == last.serialized == to_example(items[0]).serialized
