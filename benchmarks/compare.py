"""Multi-head vs cascade, trained with the same config and seed on the TFRecords of a finished `petpipe run`.

Each architecture is trained, evaluated on the test split, exported and queried in its own subprocess, so peak
memory (ru_maxrss) is that architecture's alone. One markdown table is printed and written to DIR/compare.md:
training wall time (and its split: steps, the first step of each fit where the train function is traced,
validation passes, the rest), peak RSS, parameters, SavedModel size, serving_default latency (median of
--repeats-latency calls with JPEG bytes, after warm-up) at batch 1 and 32, and every scalar test metric of
components.evaluate.evaluate_model (nested dicts flattened to dotted names), with a multi-head/cascade ratio.

    python -m benchmarks.compare --work-dir DIR [--epochs N] [--repeats-latency 50] [--set train.filters=8,16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial

from benchmarks.common import log, markdown_table, result_row

ARCHITECTURES = ("multihead", "cascade")
LATENCY_BATCHES = (1, 32)
WARMUP_CALLS = 3


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _test_images(patterns: list[str], count: int) -> list[bytes]:
    """The first `count` encoded (JPEG) test images, repeated if the split is smaller."""
    import tensorflow as tf

    from schemas import IMAGE_ENCODED

    files = sorted(f for pattern in patterns for f in tf.io.gfile.glob(pattern))
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)
    spec = {IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)}
    images = [tf.io.parse_single_example(r, spec)[IMAGE_ENCODED].numpy() for r in records]
    if not images:
        raise SystemExit(f"{patterns}: no test records")
    return [images[i % len(images)] for i in range(count)]


def _latency_ms(serve, images: list[bytes], repeats: int) -> float:
    """Median wall time of one serving_default call on `images`, after warm-up calls (tracing, allocation)."""
    import tensorflow as tf

    batch = tf.constant(images)
    for _ in range(WARMUP_CALLS):
        serve(image_bytes=batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        serve(image_bytes=batch)["breed_probs"].numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


class _TrainSteps:
    """Times the train steps and validation passes of every Model.fit in this process (the cascade fits three).

    Installed by patching keras.Model.fit in the measuring subprocess only, so the trainers stay as they are.
    It splits training wall time into: the first step of each fit (tracing the train function), the other
    steps, validation during training, leaving fit (from its last callback to its return), and the rest (data
    set set-up, epoch boundaries, callbacks) — which is what explains the cascade/multi-head ratio."""

    def __init__(self):
        self.first_steps: list[float] = []  # one per fit
        self.steps: list[float] = []  # every other step
        self.validation_s = 0.0
        self.leaving_fit_s = 0.0  # from on_train_end to fit's return: tearing down its iterators and functions
        self._started = 0.0
        self._train_ended = 0.0

    def count(self) -> int:
        return len(self.first_steps) + len(self.steps)

    def median_ms(self) -> float:
        return statistics.median(self.steps) * 1000 if self.steps else 0.0

    def install(self):
        import keras

        timer, original_fit = self, keras.Model.fit

        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.first = True

            def on_train_batch_begin(self, batch, logs=None):
                timer._started = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                (timer.first_steps if self.first else timer.steps).append(time.perf_counter() - timer._started)
                self.first = False

            def on_test_begin(self, logs=None):
                timer._started = time.perf_counter()

            def on_test_end(self, logs=None):
                timer.validation_s += time.perf_counter() - timer._started

            def on_train_end(self, logs=None):
                timer._train_ended = time.perf_counter()

        def timed_fit(model, *args, callbacks=None, **kwargs):
            history = original_fit(model, *args, callbacks=[*(callbacks or []), Callback()], **kwargs)
            timer.leaving_fit_s += time.perf_counter() - timer._train_ended
            return history

        keras.Model.fit = timed_fit

    def rows(self, train_seconds: float) -> dict[str, float]:
        return {
            "train steps, all models": self.count(),
            "median train step (ms)": self.median_ms(),
            "training: steps after the first (s)": sum(self.steps),
            "training: first step of each fit, tracing (s)": sum(self.first_steps),
            "training: validation passes (s)": self.validation_s,
            "training: leaving fit, after its last callback (s)": self.leaving_fit_s,
            "training: the rest — data set-up, epoch ends (s)": (
                train_seconds - sum(self.steps) - sum(self.first_steps) - self.validation_s - self.leaving_fit_s
            ),
        }


def _directory_mib(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 2**20


def measure(architecture: str, work_dir: str, config_path: str | None, overrides: list[str], repeats: int) -> dict:
    """Train, evaluate, export and query one architecture in this process; the numbers of the table."""
    import tensorflow as tf

    from components.architectures import architecture as registered
    from components.evaluate import evaluate_model
    from components.export import DEFAULT_SIGNATURE, export_model
    from components.preprocess import split_pattern
    from components.train import labelled_batches
    from components.train_config import TrainingJob
    from pipeline.config import load_config
    from pipeline.spans import span_window
    from schemas import load_hierarchy, schema_for

    progress = partial(log, architecture)  # on stderr: the parent's stdout carries only the table
    config = load_config(config_path, [*overrides, f"train.architecture={architecture}"])
    hierarchy = load_hierarchy(config.data.hierarchy) if config.data.hierarchy else load_hierarchy()
    schema = schema_for(hierarchy)
    tfrecord_dirs = span_window(work_dir, 1)
    test_patterns = [split_pattern(d, "test") for d in tfrecord_dirs]
    # The records were written at the run's image size, which need not be this config's default.
    size = int(tf.io.decode_image(_test_images(test_patterns, 1)[0]).shape[0])
    if size != config.preprocess.image_size:
        progress(f"records are {size} px (config says {config.preprocess.image_size}); using {size}")

    timer = _TrainSteps()
    timer.install()
    start = time.perf_counter()
    model, history = registered(architecture).train(
        TrainingJob(config.train, tfrecord_dirs, schema, hierarchy, size, log=progress)
    )
    train_seconds = time.perf_counter() - start
    train_rss = _peak_rss_mib()

    test = labelled_batches(test_patterns, schema, hierarchy, size, 256, False, keep_breed=True)
    metrics = evaluate_model(model, test, hierarchy, config.export.top_k)
    with tempfile.TemporaryDirectory() as serving:
        _, path = export_model(model, hierarchy, os.path.join(serving, "pets"), size, config.export)
        saved_model_mib = _directory_mib(path)
        serve = tf.saved_model.load(path).signatures[DEFAULT_SIGNATURE]
        images = _test_images(test_patterns, max(LATENCY_BATCHES))
        latency = {n: _latency_ms(serve, images[:n], repeats) for n in LATENCY_BATCHES}
    rows = {
        "training wall time (s)": train_seconds,
        **timer.rows(train_seconds),
        "peak RSS after training (MiB)": train_rss,
        "peak RSS incl. evaluation and serving (MiB)": _peak_rss_mib(),
        "parameters": model.count_params(),
        "SavedModel size (MiB)": saved_model_mib,
    }
    rows.update({f"latency p50, batch {n} (ms)": ms for n, ms in latency.items()})
    # Early stopping may end a model before config.epochs; for the cascade this is the species model's count.
    rows["epochs run"] = len(history.get("loss", history.get("species/loss", [])))
    rows.update(flatten_scalars(metrics))
    context = {
        "epochs": config.train.epochs,
        "filters": list(config.train.filters),
        "backbone": config.train.backbone,
        "seed": config.train.seed,
        "image_size": size,
        "tfrecord_dirs": tfrecord_dirs,
    }
    return {"rows": rows, "context": context}


def flatten_scalars(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Dotted name → number for every int/float leaf of nested dicts; lists, None and booleans are skipped."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_scalars(value, name + "."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = value
    return flat


def _format(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) or (isinstance(value, float) and abs(value) >= 1e4):
        return f"{value:,.0f}"
    return f"{value:.4g}"


def format_table(results: dict[str, dict]) -> str:
    """Markdown: one row per measure present in either architecture, values and the multi-head/cascade ratio."""
    multihead, cascade = results["multihead"]["rows"], results["cascade"]["rows"]
    names = list(multihead) + [name for name in cascade if name not in multihead]
    lines = []
    for name in names:
        a, b = multihead.get(name), cascade.get(name)
        lines.append([name, _format(a), _format(b), _format(a / b if a is not None and b else None)])
    return markdown_table(["measure", "multi-head", "cascade", "multi-head / cascade"], lines)


def _run_child(architecture: str, args, overrides: list[str]) -> dict:
    """`measure` in a fresh interpreter, so its peak RSS is its own; the result comes back through a file."""
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        command = [sys.executable, "-m", "benchmarks.compare", "--work-dir", args.work_dir, "--child", architecture]
        command += ["--result", result, "--repeats-latency", str(args.repeats_latency)]
        command += ["--config", args.config] if args.config else []
        command += [part for override in overrides for part in ("--set", override)]
        log(architecture, "training in a subprocess")
        done = subprocess.run(command, stdout=sys.stderr, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{architecture}: the measuring subprocess failed (exit {done.returncode})")
        with open(result) as f:
            return json.load(f)


HEADLINE = (  # the measures `python -m benchmarks` reports, in this order
    "training wall time (s)",
    "train steps, all models",
    "median train step (ms)",
    "training: steps after the first (s)",
    "training: first step of each fit, tracing (s)",
    "training: validation passes (s)",
    "training: leaving fit, after its last callback (s)",
    "training: the rest — data set-up, epoch ends (s)",
    "peak RSS incl. evaluation and serving (MiB)",
    "latency p50, batch 1 (ms)",
    "latency p50, batch 32 (ms)",
    "species_accuracy",
    "breed_top1_accuracy",
    "expected_calibration_error",
)
TARGETS = {"training wall time (s)": ("multi-head ≥ 2.5× faster to train", lambda mh, c: c / mh >= 2.5)}


def run(quick: bool) -> list[dict]:
    """For `python -m benchmarks`: ingest a generated data set (quick: 10 images per breed, 3 epochs; full: the
    default 60 and the default epochs), train both architectures in their subprocesses, one row per headline
    measure with the cascade / multi-head ratio."""
    from datasources.synthetic_pets import write_synthetic_pets
    from pipeline.config import load_config
    from pipeline.stages.data import ingest_spans
    from schemas import load_hierarchy, schema_for

    per_breed, overrides = (10, ["train.epochs=3"]) if quick else (60, [])
    with tempfile.TemporaryDirectory() as root:
        hierarchy = load_hierarchy()
        write_synthetic_pets(os.path.join(root, "data"), per_breed=per_breed, seed=0)
        config = load_config(None, [f"work_dir={os.path.join(root, 'work')}"])
        os.makedirs(config.work_dir)
        ingest_spans(config, os.path.join(root, "data"), hierarchy, schema_for(hierarchy), [])
        args = argparse.Namespace(work_dir=config.work_dir, repeats_latency=10 if quick else 50, config=None)
        results = {architecture: _run_child(architecture, args, overrides) for architecture in ARCHITECTURES}
    rows = []
    for name in HEADLINE:
        target, check = TARGETS.get(name, ("", None))
        multihead, cascade = results["multihead"]["rows"].get(name), results["cascade"]["rows"].get(name)
        if multihead is None or cascade is None:
            continue
        ratio = cascade / multihead if multihead else None
        rows.append(
            result_row(
                f"{name}: multi-head {_format(multihead)} vs cascade {_format(cascade)}",
                multihead,
                "",
                f"cascade/multi-head {_format(ratio)}" if ratio is not None else "",
                target,
                check(multihead, cascade) if check else None,
            )
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True, help="work dir of a finished `petpipe run` (has spans.json)")
    parser.add_argument("--epochs", type=int, help="train.epochs for both (default: the config's)")
    parser.add_argument("--repeats-latency", type=int, default=50, help="timed serving calls per batch size")
    parser.add_argument("--config", help="TOML config file, as for `petpipe run`")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--child", choices=ARCHITECTURES, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    overrides = list(args.set) + ([f"train.epochs={args.epochs}"] if args.epochs else [])

    if args.child:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        measured = measure(args.child, args.work_dir, args.config, overrides, args.repeats_latency)
        with open(args.result, "w") as f:
            json.dump(measured, f)
        return 0

    from pipeline.config import load_config

    load_config(args.config, overrides)  # a bad --set fails here, before any training
    results = {architecture: _run_child(architecture, args, overrides) for architecture in ARCHITECTURES}
    context = results["multihead"]["context"]
    caption = (
        f"Multi-head vs cascade on {', '.join(context['tfrecord_dirs'])}: {context['epochs']} epochs per model, "
        f"backbone {context['backbone']} {context['filters']}, {context['image_size']} px, seed {context['seed']}, "
        f"{results['multihead']['rows'].get('examples', '?')} test images."
    )
    text = f"{caption}\n\n{format_table(results)}\n"
    print(text)
    with open(os.path.join(args.work_dir, "compare.md"), "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
