"""Distributed training in a fresh interpreter, for tests/components/test_distribute.py: logical CPU devices and
the multi-worker runtime must be configured before TensorFlow initialises, which the pytest process has done.

    python distributed_train.py mirrored <tfrecord_dir> <result.json>
        two logical CPU devices, train_model(strategy="mirrored"), plus the masked loss's cross-replica reduction
    python distributed_train.py multiworker <tfrecord_dir> <result.json> <run_dir>
        TF_CONFIG (set by the caller) names this worker; train_model(strategy="auto"); the chief then exports

Writes the facts the test asserts on as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

IMAGE_SIZE = 64  # what the tiny_tfrecords fixture writes


def masked_loss_across_replicas(strategy) -> dict:
    """The masked, class-weighted loss summed over 2 replicas whose valid labels are spread unevenly, against the
    same loss over the whole batch on one device."""
    import numpy as np
    import tensorflow as tf

    from components.model import MaskedSparseCategoricalCrossentropy

    loss = MaskedSparseCategoricalCrossentropy([1.0, 2.0, 0.5])
    rng = np.random.default_rng(3)
    y_true = np.array([[0, -1, -1, -1], [1, 2, 0, 1]], np.int64)  # replica 0: one valid label, replica 1: four
    y_pred = rng.dirichlet(np.ones(3), size=(2, 4)).astype("float32")
    whole = float(loss(y_true.reshape(-1), y_pred.reshape(-1, 3)))

    def per_replica(ctx):
        return tf.constant(y_true[ctx.replica_id_in_sync_group]), tf.constant(y_pred[ctx.replica_id_in_sync_group])

    values = strategy.experimental_distribute_values_from_function(per_replica)

    @tf.function
    def step(values):
        return strategy.run(lambda pair: loss(pair[0], pair[1]), args=(values,))

    parts = strategy.experimental_local_results(step(values))
    return {"whole": whole, "parts": [float(p) for p in parts]}


def cascade(strategy, config, tfrecord_dir: str, schema, hierarchy, images) -> dict:
    """The cascade's sub-models trained through the same helpers under the same strategy."""
    import dataclasses

    import numpy as np
    import tensorflow as tf

    from components.cascade import train_cascade
    from components.train_config import TrainingJob

    lines: list[str] = []
    config = dataclasses.replace(config, epochs=2)
    job = TrainingJob(config, [tfrecord_dir], schema, hierarchy, IMAGE_SIZE, strategy=strategy, log=lines.append)
    model, history = train_cascade(job)
    outputs = model(tf.cast(images, tf.float32), training=False)
    return {
        "history": {k: [float(v) for v in vs] for k, vs in history.items()},
        "row_sums": {head: probs.numpy().sum(axis=1).tolist() for head, probs in outputs.items()},
        "finite_weights": all(bool(np.isfinite(w.numpy()).all()) for w in model.weights),
        "distributed_variables": all(isinstance(w.value, tf.distribute.DistributedValues) for w in model.weights),
        "log": lines,
    }


def main() -> None:
    mode, tfrecord_dir, out = sys.argv[1:4]
    run_dir = sys.argv[4] if len(sys.argv) > 4 else None
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from components.distribute import make_strategy

    # First, before TensorFlow runs anything: a MultiWorkerMirroredStrategy can only be created then.
    name = "mirrored" if mode == "mirrored" else "auto"
    strategy = make_strategy(name)

    import numpy as np

    from components.export_config import ExportConfig
    from components.preprocess import split_pattern
    from components.train import labelled_batches, train_model
    from components.train_config import TrainConfig, TrainingJob
    from schemas import load_hierarchy, load_schema

    hierarchy, schema = load_hierarchy(), load_schema()
    config = TrainConfig(
        epochs=3, filters=(4, 8), batch_size=16, learning_rate=1e-2, augment=False, early_stopping_patience=0
    )
    lines: list[str] = []
    job = TrainingJob(config, [tfrecord_dir], schema, hierarchy, IMAGE_SIZE, run_dir, strategy=name, log=lines.append)
    model, history = train_model(job)
    test = labelled_batches(split_pattern(tfrecord_dir, "test"), schema, hierarchy, IMAGE_SIZE, 64, False)
    images = next(iter(test))[0]
    outputs = {head: probs.numpy() for head, probs in model(tf.cast(images, tf.float32), training=False).items()}
    weights = [w.numpy() for w in model.weights]  # the first replica's copy
    result = {
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "model_strategy": type(model.distribute_strategy).__name__,
        "history": {k: [float(v) for v in vs] for k, vs in history.items()},
        "row_sums": {head: probs.sum(axis=1).tolist() for head, probs in outputs.items()},
        "rows": len(images),
        "finite_weights": all(bool(np.isfinite(w).all()) for w in weights),
        "weight_digests": {
            w.path: hashlib.sha256(np.ascontiguousarray(w.numpy()).tobytes()).hexdigest()[:16] for w in model.weights
        },
        "trainable": [w.path for w in model.trainable_weights],
        "distributed_variables": all(isinstance(w.value, tf.distribute.DistributedValues) for w in model.weights),
        "log": lines,
    }
    if mode == "multiworker" and strategy.extended.should_checkpoint:
        # The chief alone evaluates and exports, as the pipeline does after training: nothing waits for the others.
        from components.export import DEFAULT_SIGNATURE, export_model

        version, path = export_model(model, hierarchy, os.path.join(run_dir, "serving"), IMAGE_SIZE, ExportConfig())
        served = tf.saved_model.load(path).signatures[DEFAULT_SIGNATURE](image_bytes=tf.constant([b"x"]))
        result["exported"] = {"version": version, "breed_probs_sum": float(served["breed_probs"].numpy().sum())}
    if mode == "mirrored":
        result["masked_loss"] = masked_loss_across_replicas(strategy)
        result["cascade"] = cascade(strategy, config, tfrecord_dir, schema, hierarchy, images)
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
