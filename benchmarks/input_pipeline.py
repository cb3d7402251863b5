"""Is training input-bound? The default multi-head model's train step, fed by the product's tf.data pipeline vs the
same batches already in memory.

Data: the embedded data set (datasources.synthetic_pets) at data.per_breed (quick 20, full the default 60 → 2,220
images), through the real data stage (pipeline.stages.data.ensure_data + pipeline.stages.data.ingest_spans, in-process
Beam) into GZIP TFRecords at the default image size, in a temp work dir (or --work-dir, reused when it matches).

Trainer: built exactly as components.train.train_model builds it with the default config and no tf.distribute
strategy — training_data (labelled_batches: parallel reads, parse, decode, cache, shuffle, flip, batch, prefetch),
build_multihead_model, with_augmentation (in-graph flip/shift/colour jitter, training only), cosine-decayed Adam,
balanced class weights, compile_multihead — and stepped by Keras's own model.fit (shuffle=False, verbose=0), so
per-epoch iterator creation, prefetch start-up and fit's loop are all included. A callback reads wall and process
CPU clocks at each epoch's begin and end (after forcing the epoch's logs to Python floats, i.e. after the last
step has run); ms/step = epoch time / steps per epoch.

Modes, interleaved within every repetition (the order alternates between repetitions, so slow phases of a shared
machine hit both):
  tf.data        the training dataset, its decoded-image cache already filled (every epoch but the first sees this)
  in memory      the same batches materialized first (the training dataset's batches → dataset.cache(), read once
                 fully), then iterated: no parsing, decoding, shuffling, flipping, batching or prefetch threads
  tf.data cold   a freshly built training dataset's first epoch: reading, parsing and decoding every record (the
                 shuffle buffer, 2048, exceeds the train split, so the whole split is decoded before the first step)

Also measured without training: images/s of iterating the training dataset (cold first pass and cached passes), to
show the loader's headroom over what training consumes. With --profile (or when the target is missed) tf.data
variants are timed the same way: prefetch off, sequential map, deterministic order, cache after the flip, files
interleaved one shard at a time.

    python -m benchmarks.input_pipeline [--quick] [--out benchmarks/results/input_pipeline.md] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from benchmarks.common import (
    CpuMeter,
    format_number,
    log,
    machine_info,
    paired_ratio,
    result_row,
    result_rows_markdown,
    result_rows_text,
    write_markdown_report,
)

NAME = "input_pipeline"
TARGET_RATIO = 1.05
# per_breed, epochs per mode per repetition, repetitions kept, loader passes (cached), retry seconds
PROFILES = {"full": (60, 1, 5, 3, 45.0), "quick": (20, 1, 3, 2, 8.0)}
VARIANT_RETRY = 15.0  # retry seconds per variant (--profile)
MIN_CLEAN = 3  # with fewer undisturbed repetitions than wanted but at least this many, only those are kept
MAX_OTHERS = 0.3  # cores other processes may use during a repetition before it is run again
DATA_MARKER = "benchmark-input-pipeline.json"


# --- data -------------------------------------------------------------------------------------------------------
def prepare_data(work_dir: str, per_breed: int, seed: int = 0):
    """(config, tfrecord dirs, hierarchy, schema, seconds spent): the embedded data set at `per_breed` through the
    real data stage into work_dir, reused if a previous call left the same there."""
    from pipeline.config import load_config
    from pipeline.stages.data import ensure_data, ingest_spans
    from schemas import load_hierarchy, schema_for

    config = load_config(None, [f"work_dir={work_dir}", f"data.per_breed={per_breed}", f"data.seed={seed}"])
    hierarchy = load_hierarchy()
    schema = schema_for(hierarchy)
    marker = os.path.join(work_dir, DATA_MARKER)
    wanted = {"per_breed": per_breed, "seed": seed, "image_size": config.preprocess.image_size}
    if os.path.exists(marker):
        with open(marker) as f:
            saved = json.load(f)
        if saved["wanted"] == wanted and all(os.path.isdir(d) for d in saved["tfrecord_dirs"]):
            log(NAME, f"reusing the TFRecords in {work_dir}")
            return config, saved["tfrecord_dirs"], hierarchy, schema, 0.0
    start = time.perf_counter()
    log(NAME, f"data stage: per_breed {per_breed} into {work_dir}")
    data_dir = ensure_data(config.data, work_dir, hierarchy)
    spans = ingest_spans(config, data_dir, hierarchy, schema, [])
    dirs = [span.tfrecord_dir for span in spans]
    with open(marker, "w") as f:
        json.dump({"wanted": wanted, "tfrecord_dirs": dirs}, f)
    return config, dirs, hierarchy, schema, time.perf_counter() - start


# --- the trainer, as components.train.train_model builds it ------------------------------------------------------
def build_trainer(config, tfrecord_dirs, schema, hierarchy, image_size: int, dataset_fn=None):
    """(compiled training model, train dataset, steps per epoch), as train_model makes them (strategy none).
    `dataset_fn(config, tfrecord_dirs, schema, hierarchy, image_size)` replaces components.train.training_data's
    train dataset (for the profile variants)."""
    import keras

    from components.model import build_multihead_model, compile_multihead, with_augmentation
    from components.train import balanced_class_weights

    keras.utils.set_random_seed(config.seed)
    train = (dataset_fn or default_train_dataset)(config, tfrecord_dirs, schema, hierarchy, image_size)
    model = build_multihead_model(hierarchy, image_size, config)
    trained = with_augmentation(model, image_size, config.seed) if config.augment else model
    steps = int(train.cardinality())
    learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.epochs * steps)
    class_weights = balanced_class_weights(tfrecord_dirs, hierarchy) if config.class_weights else None
    compile_multihead(trained, hierarchy, learning_rate, config.breed_loss_weight, class_weights)
    return trained, train, steps


def default_train_dataset(config, tfrecord_dirs, schema, hierarchy, image_size: int):
    """The train split's dataset exactly as the trainer gets it (components.train.training_data)."""
    from components.train import training_data

    train, _ = training_data(config, tfrecord_dirs, schema, hierarchy, image_size)
    return train


def _epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """(wall s, CPU s, other processes' cores) per epoch; on_epoch_end first turns the logs into floats,
        which waits for the epoch's last step."""

        def __init__(self):
            super().__init__()
            self.epochs: list[tuple[float, float, float]] = []
            self.losses: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._meter = CpuMeter().start()

        def on_epoch_end(self, epoch, logs=None):
            values = {k: float(v) for k, v in (logs or {}).items()}
            meter = self._meter.stop()
            self.epochs.append((meter.seconds, meter.cpu, meter.other_cores))
            self.losses.append(values.get("loss", float("nan")))

    return EpochTimer()


def fit_epochs(model, dataset, epochs: int) -> list[tuple[float, float, float]]:
    """model.fit as components.train.fit calls it (no validation, no checkpoints); per epoch (wall s, CPU s, cores
    other processes used)."""
    timer = _epoch_timer()
    model.fit(dataset, epochs=epochs, shuffle=False, verbose=0, callbacks=[timer])
    return timer.epochs


def materialize(dataset):
    """The dataset's batches held in memory: dataset.cache() read once fully; iterating it again replays them."""
    cached = dataset.cache()
    for _ in cached:
        pass
    return cached


def loader_throughput(dataset_fn, args, passes: int) -> dict:
    """Images/s of iterating a fresh training dataset without training: the first pass (read, parse, decode, fill
    the cache) and the median of `passes` cached passes."""
    dataset = dataset_fn(*args)
    times, images = [], 0
    for index in range(passes + 1):
        count = 0
        start = time.perf_counter()
        for batch, _ in dataset:
            count += int(batch.shape[0])
        times.append(time.perf_counter() - start)
        images = count if index == 0 else images
    return {"images": images, "cold": images / times[0], "warm": images / statistics.median(times[1:])}


# --- profile variants ---------------------------------------------------------------------------------------------
def variant_dataset(
    *,
    prefetch: bool = True,
    parallel_map: bool = True,
    deterministic: bool | None = None,
    cache_after_flip: bool = False,
    flip: str = "per image",
    interleave: bool = False,
):
    """A dataset_fn that rebuilds components.train.labelled_batches (training=True) with one knob changed; with none
    changed it is the product's pipeline (the control row)."""

    def build(config, tfrecord_dirs, schema, hierarchy, image_size):
        import tensorflow as tf

        from components.preprocess import split_pattern
        from components.train import count_records, parse_labelled_example, parse_spec, tfrecord_files

        files = tfrecord_files([split_pattern(d, "train") for d in tfrecord_dirs])
        records = count_records(files)
        spec = parse_spec(schema)
        calls = tf.data.AUTOTUNE if parallel_map else None
        if interleave:
            dataset = tf.data.Dataset.from_tensor_slices(files).interleave(
                lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                cycle_length=len(files),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        else:
            dataset = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE)
        dataset = dataset.map(
            lambda s: parse_labelled_example(s, spec, hierarchy, image_size), num_parallel_calls=calls
        )
        dataset = dataset.map(lambda image, labels: (image, {k: v for k, v in labels.items() if k != "breed"}))
        dataset = dataset.cache().apply(tf.data.experimental.assert_cardinality(records))
        dataset = dataset.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
        flipped = lambda image, labels: (tf.image.random_flip_left_right(image, seed=config.seed), labels)  # noqa: E731
        if flip == "per image":
            dataset = dataset.map(flipped, num_parallel_calls=calls).batch(config.batch_size)
        elif flip == "per batch":  # one vectorized op per batch; each image still flipped independently
            dataset = dataset.batch(config.batch_size).map(flipped, num_parallel_calls=calls)
        else:  # none: the model's in-graph augmentation (RandomFlip("horizontal")) flips anyway
            dataset = dataset.batch(config.batch_size)
        if cache_after_flip:  # the same flipped batches every epoch: what caching the whole pipeline would do
            dataset = dataset.cache()
        options = tf.data.Options()
        if deterministic is not None:
            options.deterministic = deterministic
        dataset = dataset.with_options(options)
        return dataset.prefetch(tf.data.AUTOTUNE) if prefetch else dataset

    return build


VARIANTS = {
    "no prefetch": variant_dataset(prefetch=False),
    "sequential map": variant_dataset(parallel_map=False),
    "deterministic=False": variant_dataset(deterministic=False),
    "cache after flip+batch": variant_dataset(cache_after_flip=True),
    "interleave over shards": variant_dataset(interleave=True),
    "flip after batching (vectorized)": variant_dataset(flip="per batch"),
    "no tf.data flip (in-graph RandomFlip only)": variant_dataset(flip="none"),
    "product pipeline, rebuilt (control)": variant_dataset(),
}


# --- measurement --------------------------------------------------------------------------------------------------
def timed_reps(model, modes: dict, steps: int, reps: int, epochs: int, retry_seconds: float, max_others: float) -> dict:
    """Repetitions of every mode back to back (the order rotating). `modes`: name → (zero-argument function giving
    the dataset, epochs; None = `epochs`). A repetition during which other processes used more than `max_others`
    cores (in any epoch) is run again while `retry_seconds` last after the first `reps`; then the undisturbed ones
    are kept if there are at least MIN_CLEAN, else the `reps` least disturbed. Returns per mode the kept
    repetitions' ms/step and CPU ms/step (means over their epochs), the other processes' cores per kept
    repetition, and how many repetitions were run."""
    names = list(modes)
    done, deadline = [], None
    while True:
        clean = [r for r in done if r["others"] <= max_others]
        if len(clean) >= reps or (deadline is not None and time.perf_counter() > deadline):
            break
        if len(done) == reps:
            deadline = time.perf_counter() + retry_seconds
        order = names[len(done) % len(names) :] + names[: len(done) % len(names)]
        rep = {"others": 0.0, "modes": {}}
        for name in order:
            make, n = modes[name]
            measured = fit_epochs(model, make(), n or epochs)
            rep["modes"][name] = (
                _ms(statistics.mean(w for w, _, _ in measured), steps),
                _ms(statistics.mean(c for _, c, _ in measured), steps),
            )
            rep["others"] = max(rep["others"], *(o for _, _, o in measured))
        done.append(rep)
        log(
            NAME,
            f"rep {len(done)}: "
            + ", ".join(f"{name} {rep['modes'][name][0]:.1f}" for name in names)
            + f" ms/step; others {rep['others']:.2f} cores",
        )
    clean = [r for r in done if r["others"] <= max_others]
    kept = clean[:reps] if len(clean) >= MIN_CLEAN else sorted(done, key=lambda r: r["others"])[:reps]
    return {
        "ms": {name: [r["modes"][name][0] for r in kept] for name in names},
        "cpu_ms": {name: [r["modes"][name][1] for r in kept] for name in names},
        "others": [r["others"] for r in kept],
        "run": len(done),
    }


def ratio_of(timed: dict, a: str, b: str) -> float:
    """Median over the kept repetitions of a / b within each (measured back to back)."""
    return paired_ratio(timed["ms"][a], timed["ms"][b])


def measure(quick: bool, work_dir: str | None = None, profile: bool | None = None) -> dict:
    """Everything the table shows, as numbers. `profile`: None = only when the target is missed (full mode)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    per_breed, epochs, reps, passes, retry = PROFILES["quick" if quick else "full"]
    with tempfile.TemporaryDirectory(prefix="petpipe-input-") as tmp:
        config, dirs, hierarchy, schema, data_seconds = prepare_data(work_dir or tmp, per_breed)
        size = config.preprocess.image_size
        args = (config.train, dirs, schema, hierarchy, size)
        model, train, steps = build_trainer(*args)
        log(
            NAME,
            f"data ready ({data_seconds:.0f} s); {steps} steps per epoch of {config.train.batch_size}; warm-up epoch",
        )
        warmup = fit_epochs(model, train, 1)[0]
        cached = materialize(train)
        fit_epochs(model, cached, 1)  # the in-memory path's own warm-up
        modes = {
            "tf.data": (lambda: train, None),
            "in memory": (lambda: cached, None),
            "tf.data cold": (lambda: default_train_dataset(*args), 1),
        }
        timed = timed_reps(model, modes, steps, reps, epochs, retry, MAX_OTHERS)
        ratio = ratio_of(timed, "tf.data", "in memory")
        fastest = min(timed["ms"]["tf.data"]) / min(timed["ms"]["in memory"])
        log(NAME, "loader alone (no training)")
        loader = loader_throughput(default_train_dataset, args, passes)
        variants = {}
        if profile or (profile is None and not quick and ratio > TARGET_RATIO):
            for name, dataset_fn in VARIANTS.items():
                log(NAME, f"variant {name}")
                variant = dataset_fn(*args)
                fit_epochs(model, variant, 1)  # fills its cache
                pair = {"variant": (lambda v=variant: v, None), "in memory": (lambda: cached, None)}
                measured = timed_reps(model, pair, steps, MIN_CLEAN, epochs, VARIANT_RETRY, MAX_OTHERS)
                variants[name] = {mode: statistics.median(v) for mode, v in measured["ms"].items()}
                variants[name]["ratio"] = ratio_of(measured, "variant", "in memory")
                variants[name]["others"] = max(measured["others"])
    return {
        "per_breed": per_breed,
        "steps": steps,
        "batch": config.train.batch_size,
        "epochs_per_rep": epochs,
        "reps": reps,
        "reps_run": timed["run"],
        "train_epochs": config.train.epochs,
        "data_seconds": data_seconds,
        "warmup_ms": _ms(warmup[0], steps),
        "step_ms": {mode: statistics.median(v) for mode, v in timed["ms"].items()},
        "samples_ms": timed["ms"],
        "ratio": ratio,
        "fastest_ratio": fastest,
        "cold_ratio": ratio_of(timed, "tf.data cold", "in memory"),
        "cpu_ms": {mode: statistics.median(v) for mode, v in timed["cpu_ms"].items()},
        "loader": loader,
        "variants": variants,
        "other_cores": timed["others"],
        "config": {
            "image_size": size,
            "filters": list(config.train.filters),
            "augment": config.train.augment,
            "shuffle_buffer": config.train.shuffle_buffer,
        },
    }


def _ms(seconds: float, steps: int) -> float:
    return seconds / steps * 1000


def rows_of(m: dict) -> list[dict]:
    """The benchmark's rows: measurement, value, unit, ratio, target, holds."""
    step, cpu, loader = m["step_ms"], m["cpu_ms"], m["loader"]
    ratio = m["ratio"]
    consumed = m["batch"] / step["tf.data"] * 1000
    epochs = m["train_epochs"]
    whole = (step["tf.data cold"] + (epochs - 1) * step["tf.data"]) / epochs
    rows = [
        _row("train step, tf.data (cache filled)", step["tf.data"], "ms/step", ratio, f"≤ {TARGET_RATIO:g}× in memory"),
        _row("train step, batches in memory", step["in memory"], "ms/step", 1.0),
        _row("fastest repetition, tf.data / in memory", m["fastest_ratio"], "×", m["fastest_ratio"]),
        _row("train step, tf.data first epoch (cold)", step["tf.data cold"], "ms/step", m["cold_ratio"]),
        _row(f"train step, tf.data over {epochs} epochs (1 cold)", whole, "ms/step", whole / step["in memory"]),
        _row("CPU per step, tf.data (cache filled)", cpu["tf.data"], "CPU ms/step", cpu["tf.data"] / cpu["in memory"]),
        _row("CPU per step, batches in memory", cpu["in memory"], "CPU ms/step", 1.0),
        _row("training consumes (tf.data)", consumed, "images/s", None),
        _row("loader alone, first pass (read+parse+decode)", loader["cold"], "images/s", loader["cold"] / consumed),
        _row("loader alone, cached passes", loader["warm"], "images/s", loader["warm"] / consumed),
    ]
    for name, v in m["variants"].items():
        flag = f" (disturbed: others {v['others']:.2f} cores)" if v["others"] > MAX_OTHERS else ""
        rows.append(_row(f"variant: {name}{flag}", v["variant"], "ms/step", v["ratio"]))
    others = max(m["other_cores"])
    rows.append(
        result_row(
            "other processes' CPU during the kept repetitions (max)",
            others,
            "cores",
            None,
            f"≤ {MAX_OTHERS:g} (undisturbed)",
            others <= MAX_OTHERS,
        )
    )
    return rows


def _row(measurement, value, unit, ratio, target=None) -> dict:
    """A row; one with a target is the input-bound verdict: ratio ≤ TARGET_RATIO."""
    return result_row(measurement, value, unit, ratio, target, None if target is None else ratio <= TARGET_RATIO)


def run(quick: bool) -> list[dict]:
    """Rows for `python -m benchmarks`."""
    return rows_of(measure(quick))


# --- output ---------------------------------------------------------------------------------------------------------
def write_markdown(path: str, m: dict, rows: list[dict], info: dict, wall: float, command: str) -> None:
    verdict = next(r for r in rows if r["target"])
    c = m["config"]
    in_memory = format_number(m["step_ms"]["in memory"])
    data = "reused from --work-dir" if not m["data_seconds"] else f"{m['data_seconds']:.0f} s, not timed"
    samples = "; ".join(f"{mode}: " + ", ".join(f"{x:.1f}" for x in values) for mode, values in m["samples_ms"].items())
    others = ", ".join(f"{x:.2f}" for x in m["other_cores"])
    setup = [*(f"{k}: {v}" for k, v in info.items())]
    setup += [
        "CPU other processes used during the kept repetitions (psutil: the machine's busy time minus this "
        f"process's, max over each repetition's epochs): {others} cores; {len(m['other_cores'])} repetitions kept "
        f"of {m['reps_run']} run (wanted {m['reps']}). "
        f"A repetition during which others used more than {MAX_OTHERS:g} cores is run again while the retry budget "
        f"lasts; the undisturbed ones are kept if there are at least {MIN_CLEAN}, else the least disturbed.",
        f"data: embedded data set, per_breed {m['per_breed']}, through the real data stage ({data}); train split "
        f"{m['steps']} steps of {m['batch']} per epoch",
        f"model: default multi-head, image size {c['image_size']}, filters {c['filters']}, augmentation "
        f"{'on' if c['augment'] else 'off'} (in-graph), built and compiled as components.train.train_model does, "
        f"stepped by model.fit; shuffle buffer {c['shuffle_buffer']}",
        f"timing: one warm-up epoch ({m['warmup_ms']:.1f} ms/step: tracing + filling the decoded-image cache) and one "
        f"in-memory warm-up epoch; then repetitions of {m['epochs_per_rep']} epoch(s) via tf.data, "
        f"{m['epochs_per_rep']} in memory and one cold epoch of a freshly built dataset, back to back (order "
        "rotating); values are medians over the kept repetitions, ratios the median of the per-repetition ratios "
        "(the 'fastest repetition' row: ratio of the two modes' best repetitions)",
        "'training consumes': batch / tf.data step time; the loader rows' ratios are loader images/s over that: "
        f"the loader's headroom when it has the CPUs to itself (during training it shares the same "
        f"{os.cpu_count()} cores)",
        "'over N epochs': (cold + (N − 1) × cached-epoch step time) / N for the default train.epochs",
    ]
    if m["variants"]:
        setup.append(
            "variants: components.train.labelled_batches rebuilt in this file with one change each, timed against the "
            "in-memory batches the same way (repetitions kept: at least "
            f"{MIN_CLEAN}); the control row is the unchanged rebuild. A variant row marked disturbed had other "
            "processes using the CPUs throughout its retry budget: its ratio (back to back pairs) is still indicative, "
            "its ms/step is not"
        )
    headline = (
        f"train step via tf.data / batches in memory: **{verdict['ratio']:.3f}×** — target ≤ {TARGET_RATIO:g}× "
        f"**{'holds' if verdict['holds'] else 'missed'}** ({format_number(verdict['value'])} vs {in_memory} ms/step)"
    )
    text = f"""# Training input pipeline benchmark

`{command}` — {info["date"]}, wall time {wall:.0f} s.

- {headline}

{result_rows_markdown(rows)}

ms/step per kept repetition ({m["epochs_per_rep"]} epoch(s) of {m["steps"]} steps per mode): {samples}.

## Setup

{chr(10).join(f"- {line}" for line in setup)}
"""
    write_markdown_report(path, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="per_breed 20, fewer epochs and repetitions (< 1 min)")
    parser.add_argument("--out", default=f"benchmarks/results/{NAME}.md", help="markdown output file")
    parser.add_argument("--work-dir", help="keep the generated data and TFRecords here (reused when they match)")
    parser.add_argument("--profile", action="store_true", help="time the tf.data variants even if the target holds")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    info = machine_info()
    measured = measure(args.quick, args.work_dir, True if args.profile else None)
    rows = rows_of(measured)
    wall = time.perf_counter() - start
    print(result_rows_text(rows))
    print(f"\nwall time {wall:.0f} s")
    command = "python -m benchmarks.input_pipeline" + " --quick" * args.quick + " --profile" * args.profile
    command += f" --out {args.out}" if args.out != parser.get_default("out") else ""
    write_markdown(args.out, measured, rows, info, wall, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
