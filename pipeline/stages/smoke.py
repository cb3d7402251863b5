"""The smoke query: a few of the test split's stored JPEGs sent through the official gRPC stubs to the new version,
served on a free local port. Output: one answer line per image."""

from __future__ import annotations

from schemas import IMAGE_ENCODED, IMAGE_FILENAME, LABEL_BREED, Hierarchy

SMOKE_QUERIES = 3


def sample_test_images(tfrecord_dir: str, hierarchy: Hierarchy, how_many: int) -> list[tuple[str, str, bytes]]:
    """(file name, true breed, stored JPEG) of `how_many` test images spread over the breeds."""
    import tensorflow as tf

    from components.preprocess import split_pattern

    files = sorted(tf.io.gfile.glob(split_pattern(tfrecord_dir, "test")))
    tests = []
    for serialized in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        feature = tf.train.Example.FromString(serialized.numpy()).features.feature
        tests.append(
            (
                feature[IMAGE_FILENAME].bytes_list.value[0].decode(),
                hierarchy.breeds[feature[LABEL_BREED].int64_list.value[0]].name,
                feature[IMAGE_ENCODED].bytes_list.value[0],
            )
        )
    tests.sort()  # by file name, i.e. by breed: evenly spaced picks show different breeds
    return tests[:: max(1, len(tests) // max(1, how_many))][:how_many]


def run_smoke_query(
    model_base_path: str, model_name: str, picked: list[tuple[str, str, bytes]], hierarchy: Hierarchy
) -> list[str]:
    """Start the gRPC server on a free local port, Predict the picked test images through the official stubs.

    The images are the test split's stored JPEGs (sample_test_images), so any source (files, TFDS) works.
    """
    from serving.client import format_answer, predict_images
    from serving.server import start_server

    if not picked:
        return []
    server = start_server(model_base_path, model_name, host="127.0.0.1", port=0)
    try:
        answers = predict_images(
            f"127.0.0.1:{server.port}", [image for _, _, image in picked], model_name, species_names=hierarchy.species
        )
    finally:
        server.stop()
    return [format_answer(f"{name} (true {breed})", a) for (name, breed, _), a in zip(picked, answers, strict=True)]
