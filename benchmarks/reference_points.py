"""Reference points for the README: chance, and a linear classifier on downsampled pixels.

Reads the TFRecords of a finished `petpipe run` (train + eval to fit, test to score), so the numbers sit next to
the model's own test metrics. Usage:

    python -m benchmarks.reference_points --work-dir petpipe-work
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np


def load_split(tfrecord_dir: str, split: str, pixels: int):
    import tensorflow as tf

    from components.preprocess import split_pattern
    from components.train import labelled_batches
    from schemas import load_hierarchy, load_schema

    hierarchy, schema = load_hierarchy(), load_schema()
    dataset = labelled_batches(split_pattern(tfrecord_dir, split), schema, hierarchy, 64, 256, False, keep_breed=True)
    images, species, breeds = [], [], []
    for batch, labels in dataset:
        small = tf.image.resize(tf.cast(batch, tf.float32) / 255.0, [pixels, pixels], method="area")
        images.append(small.numpy().reshape(len(small), -1))
        species.append(labels["species"].numpy())
        breeds.append(labels["breed"].numpy())
    return np.concatenate(images), np.concatenate(species), np.concatenate(breeds)


def linear_accuracy(x_train, y_train, x_test, y_test, classes: int, seed: int = 0) -> float:
    """Multinomial logistic regression (one Dense softmax layer, Adam, 60 epochs) on standardised pixels."""
    import keras

    keras.utils.set_random_seed(seed)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    model = keras.Sequential([keras.Input((x_train.shape[1],)), keras.layers.Dense(classes, activation="softmax")])
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit((x_train - mean) / std, y_train, epochs=60, batch_size=64, verbose=0)
    return float(model.evaluate((x_test - mean) / std, y_test, verbose=0)[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="petpipe-work", help="work dir of a finished petpipe run")
    parser.add_argument("--pixels", type=int, default=16, help="side of the downsampled image (default 16)")
    args = parser.parse_args(argv)
    from pipeline.spans import span_window

    tfrecords = span_window(args.work_dir, 1)[0]
    train_parts = [load_split(tfrecords, split, args.pixels) for split in ("train", "eval")]
    x_train, s_train, b_train = (np.concatenate(parts) for parts in zip(*train_parts, strict=True))
    x_test, s_test, b_test = load_split(tfrecords, "test", args.pixels)
    majority_species = np.bincount(s_train).argmax()
    rows = {
        "chance (majority species, uniform breed)": (float(np.mean(s_test == majority_species)), 1 / 37),
        f"linear softmax on {args.pixels}x{args.pixels} RGB pixels": (
            linear_accuracy(x_train, s_train, x_test, s_test, 2),
            linear_accuracy(x_train, b_train, x_test, b_test, 37),
        ),
    }
    runs = sorted(glob.glob(os.path.join(args.work_dir, "runs", "*", "metrics.json")))
    if runs:  # the latest run's candidate, on the same test split
        with open(runs[-1]) as f:
            test = json.load(f)["test"]
        rows["petpipe multi-head CNN (latest run)"] = (test["species_accuracy"], test["breed_top1_accuracy"])
    print(f"| reference point | species accuracy | breed top-1 accuracy |  (test split, {len(s_test)} images)")
    print("|---|---|---|")
    for name, (species_acc, breed_acc) in rows.items():
        print(f"| {name} | {species_acc:.3f} | {breed_acc:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
