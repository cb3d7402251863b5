"""Data stage throughput: Beam in-process, Beam with 2 worker processes, and a plain single-process Python loop.

All three do the same work on the same generated Oxford-layout data set (datasources/synthetic_pets.py):

* **Beam, in-process** — `pipeline.data_stage.run_span_job` with no Beam flags (the FnApiRunner, in memory);
* **Beam, 2 workers** — the same call with `--direct_running_mode=multi_processing --direct_num_workers=2`;
* **loop** — what a user would write in one process: parse the annotation files, assign splits, read each image,
  and run the product's own core on it (`components.preprocess.ImageToExample`: `image_check.check_image`, then
  `decode_and_resize` + `tf.io.encode_jpeg` in one tf.function, then `make_example`), writing GZIP TFRecords
  with `tf.io.TFRecordWriter` into the same splits and shards, the quarantine JSON lines and the same statistics
  (`components.statistics.compute_statistics`), so the outputs match the Beam job's.

Beam is timed around the whole `run_span_job` call: pipeline construction, worker start-up, the job and the move
of its output into place. Start-up is measured on its own as the time of a 10-image job, and again as the fixed
cost of a straight-line fit of time against images. Each data set is generated once (not timed) and cached.

    python -m benchmarks.preprocess [--quick] [--sizes 2500,5000,10000,20000] [--reps 3] [--reps-large N]
                                    [--out benchmarks/results/preprocess.md] [--cache-dir DIR] [--profile]

--quick: 2.5k and 5k images, 1 rep (~2 min). Full: every size, median of --reps reps (--reps-large for sizes
≥ 20k if that has to be cut; the full run takes ~9 minutes on 2 idle cores, plus ~1.5 minutes to generate the
20k set the first time). Cost per image is reported as wall/images and net of start-up, (wall − the 10-image
job's time) / (images − 10), which is what tells whether the per-image cost grows with the data. Runs of one
size alternate between the variants (rotating the order each rep), so machine noise hits all three alike.

--profile adds where the time goes: cProfile of the loop, the ceiling (two independent loop processes on halves
of the data), wall time per fused Beam stage in both modes, and the Beam job with the image work replaced by a
trivial DoFn.

`run(quick)` returns the result rows for a `python -m benchmarks` entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import math
import multiprocessing
import os
import pstats
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

from benchmarks import write_report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported, here and in Beam's workers

SIZES = (2500, 5000, 10000, 20000)
QUICK_SIZES = (2500, 5000)
LARGE = 20000  # sizes from here on run --reps-large reps
SEED = 0
STARTUP_IMAGES = 10
BEAM_IN_PROCESS, BEAM_2_WORKERS, LOOP = "beam_in_process", "beam_2_workers", "loop"
VARIANTS = (LOOP, BEAM_IN_PROCESS, BEAM_2_WORKERS)
LABELS = {LOOP: "loop (1 process)", BEAM_IN_PROCESS: "Beam in-process", BEAM_2_WORKERS: "Beam 2 workers"}
BEAM_ARGS = {BEAM_IN_PROCESS: [], BEAM_2_WORKERS: ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]}
SPEEDUP_TARGET = 1.7  # Beam with 2 workers / loop, at 20k images
SCALING_TOLERANCE = 0.10  # ms per image at 20k within ±10 % of 5k
QUIET_CORES = 0.2  # other processes' CPU during a run above this: the numbers are not the machine's
DEFAULT_OUT = "benchmarks/results/preprocess.md"


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------- data sets
def per_breed_for(images: int, breeds: int) -> int:
    return max(2, math.ceil(images / breeds))


def _render(job: tuple[str, int, list]) -> None:
    """Render and write images exactly as datasources.synthetic_pets.make_dataset does (per-image random streams)."""
    from datasources.synthetic_pets import breed_looks, encode_jpeg, image_rng, render_pet
    from schemas import load_hierarchy

    out, seed, annotations = job
    hierarchy = load_hierarchy()
    looks = breed_looks(hierarchy)
    for annotation in annotations:
        rng = image_rng(seed, annotation)
        breed = hierarchy.breeds[annotation.class_id - 1]
        jpeg = encode_jpeg(render_pet(breed, looks[breed.name], rng), quality=int(rng.integers(55, 96)))
        (Path(out) / "images" / f"{annotation.image}.jpg").write_bytes(jpeg)


def _write_annotations(out: Path, trainval: list, test: list) -> None:
    from datasources.synthetic_pets import LIST_HEADER

    everything = sorted(trainval + test, key=lambda a: (a.class_id, int(a.image.rsplit("_", 1)[1])))
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / "list.txt").write_text(LIST_HEADER + "".join(a.line() for a in everything))
    (out / "annotations" / "trainval.txt").write_text("".join(a.line() for a in trainval))
    (out / "annotations" / "test.txt").write_text("".join(a.line() for a in test))


def _dataset_dir(cache_dir: Path, per_breed: int) -> Path:
    return cache_dir / f"pets-{per_breed}-per-breed-seed{SEED}"


def prepare_datasets(cache_dir: Path, sizes: list[int]) -> dict[int, Path]:
    """{size: data dir}. The largest set is rendered once (2 processes); every smaller one is the same files as
    make_dataset(per_breed=...) would write (images depend only on seed, breed and number), hard-linked from it,
    with its own annotation files. Sets already in the cache are reused."""
    from datasources.synthetic_pets import plan
    from schemas import load_hierarchy

    hierarchy = load_hierarchy()
    wanted = {size: per_breed_for(size, len(hierarchy.breeds)) for size in sizes}
    dirs = {size: _dataset_dir(cache_dir, pb) for size, pb in wanted.items()}
    largest = max(wanted.values())
    source = _dataset_dir(cache_dir, largest)
    for per_breed in sorted(set(wanted.values()), reverse=True):
        out = _dataset_dir(cache_dir, per_breed)
        if (out / ".complete").exists():
            continue
        shutil.rmtree(out, ignore_errors=True)
        (out / "images").mkdir(parents=True)
        trainval, test = plan(hierarchy, per_breed, 0.3)
        start = time.perf_counter()
        if per_breed == largest:
            everything = trainval + test
            chunks = [everything[i::8] for i in range(8)]
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                pool.map(_render, [(str(out), SEED, chunk) for chunk in chunks])
        else:
            for annotation in trainval + test:
                name = f"{annotation.image}.jpg"
                os.link(source / "images" / name, out / "images" / name)
        _write_annotations(out, trainval, test)
        (out / ".complete").write_text(json.dumps({"trainval": len(trainval), "test": len(test)}))
        _log(f"data set: {len(trainval) + len(test)} images in {out} ({time.perf_counter() - start:.0f} s)")
    return dirs


def startup_dataset(cache_dir: Path, source: Path) -> Path:
    """A 10-image Oxford-layout set (7 trainval, 3 test) for timing a job's fixed cost."""
    out = cache_dir / f"startup-{STARTUP_IMAGES}"
    if (out / ".complete").exists():
        return out
    from datasources.synthetic_pets import plan
    from schemas import load_hierarchy

    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    trainval, test = plan(load_hierarchy(), 2, 0.3)  # per breed: number 1 trainval, number 2 test
    trainval, test = trainval[: STARTUP_IMAGES - 3], test[:3]
    for annotation in trainval + test:
        os.link(source / "images" / f"{annotation.image}.jpg", out / "images" / f"{annotation.image}.jpg")
    _write_annotations(out, trainval, test)
    (out / ".complete").write_text("")
    return out


# ------------------------------------------------------------------------------------------------ CPU accounting
def _machine_busy_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def _descendant_cpu(root: int) -> dict[int, float]:
    """{pid: CPU seconds so far} of every live descendant of `root` (Beam's `sh -c python ...` SDK workers)."""
    parents, cpu = {}, {}
    ticks = os.sysconf("SC_CLK_TCK")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(name)] = int(fields[1])  # fields after "(comm)": state, ppid, ... utime, stime at 11, 12
        cpu[int(name)] = (int(fields[11]) + int(fields[12])) / ticks
    found = {}
    for pid in cpu:
        ancestor, hops = parents.get(pid), 0
        while ancestor and ancestor != root and hops < 10:
            ancestor, hops = parents.get(ancestor), hops + 1
        if ancestor == root:
            found[pid] = cpu[pid]
    return found


class CpuMeter:
    """Wall time, CPU of this process and of its descendants (Beam's worker processes, sampled every 0.5 s from
    /proc while they live: up to the last half second of a worker is missed), and the whole machine's CPU."""

    INTERVAL = 0.5

    def __enter__(self):
        self._times = os.times()
        self._busy = _machine_busy_jiffies()
        self._seen: dict[int, tuple[float, float]] = {}  # pid -> (CPU when first seen, CPU when last seen)
        self._first = True
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)
        self._start = time.perf_counter()
        self._sampler.start()
        return self

    def _sample(self) -> None:
        for pid, value in _descendant_cpu(os.getpid()).items():
            first = self._seen.get(pid, (value if self._first else 0.0, 0.0))[0]  # born meanwhile: counts from 0
            self._seen[pid] = (first, value)
        self._first = False

    def _sample_loop(self) -> None:
        self._sample()
        while not self._stop.wait(self.INTERVAL):
            self._sample()

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start
        self._stop.set()
        self._sampler.join()
        self._sample()
        end, busy = os.times(), _machine_busy_jiffies()
        self.own_cpu = (end.user - self._times.user) + (end.system - self._times.system)
        self.children_cpu = sum(last - first for first, last in self._seen.values())
        self.machine_cpu = (busy[0] - self._busy[0]) / os.sysconf("SC_CLK_TCK")
        return False

    @property
    def our_cores(self) -> float:
        return (self.own_cpu + self.children_cpu) / self.seconds

    @property
    def other_cores(self) -> float:
        """CPU others used meanwhile (other agents, CI); approximate (jiffies, and workers' last half second)."""
        return max(0.0, self.machine_cpu - self.own_cpu - self.children_cpu) / self.seconds


# ------------------------------------------------------------------------------------------------ the variants
class Context:
    """What every run needs: config with its work dir, hierarchy and schema."""

    def __init__(self, work_root: Path):
        from pipeline.config import load_config
        from schemas import load_hierarchy, schema_for

        self.work_root = work_root
        self.hierarchy = load_hierarchy()
        self.schema = schema_for(self.hierarchy)
        self.config = load_config(None, [f"work_dir={work_root / 'work'}"])

    def out_dir(self) -> Path:
        return Path(self.config.tfrecord_root) / "span-0"

    def clean(self) -> None:
        shutil.rmtree(self.work_root / "work", ignore_errors=True)
        shutil.rmtree(self.work_root / "loop", ignore_errors=True)


def run_beam(ctx: Context, data_dir: Path, variant: str) -> dict[str, int]:
    """The product's data stage; images written per split."""
    from pipeline.data_stage import run_span_job

    result = run_span_job(ctx.config, str(data_dir), 0, ctx.hierarchy, ctx.schema, BEAM_ARGS[variant])
    return dict(result.written)


def run_loop(ctx: Context, data_dir: Path, out_dir: Path, part: tuple[int, int] = (0, 1)) -> dict[str, int]:
    """The plain single-process loop over the same product functions; images written per split.

    Same splits (assign_split on the same keys), same shards per split (round robin, like Beam's fixed
    num_shards), same file names, quarantine lines and statistics.json. `part` (i, n): only every n-th record
    from the i-th (for --profile's two-process ceiling)."""
    import tensorflow as tf

    from components import ingest
    from components.ingest import SPLITS, LabelledImage, assign_split, label_record, read_image_bytes
    from components.preprocess import TFRECORD_SUFFIX, ImageToExample, quarantine_path, split_prefix
    from components.records import STAGE_DECODE, STAGE_LABEL, STAGE_READ, Quarantined, Rejected
    from components.statistics import compute_statistics

    data, pre = ctx.config.data, ctx.config.preprocess
    annotation_paths = ingest.check_layout(str(data_dir))
    images_dir = os.path.join(data_dir, "images")
    parsed = [
        p for path in annotation_paths for p in ingest.read_oxford_annotations(path, images_dir, data.eval_fraction)
    ][part[0] :: part[1]]
    to_example = ImageToExample(
        pre.image_size, pre.jpeg_quality, ctx.hierarchy, data.min_image_side, data.max_image_pixels
    )
    n = pre.num_shards
    writers = {}
    for split in SPLITS:
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        writers[split] = [
            tf.io.TFRecordWriter(f"{split_prefix(str(out_dir), split)}-{i:05d}-of-{n:05d}{TFRECORD_SUFFIX}", "GZIP")
            for i in range(n)
        ]
    written = dict.fromkeys(SPLITS, 0)
    quarantined: list = []
    seen: set[str] = set()

    def examples():
        for record in parsed:
            if isinstance(record, Quarantined):
                quarantined.append(record)
                continue
            if record.key in seen:  # the data has no duplicate lines; a careful user would still skip them
                continue
            seen.add(record.key)
            split = assign_split(record.key, record.split_hint, data.eval_fraction, 0.0)
            stage = STAGE_LABEL
            try:
                labelled = label_record(record, ctx.hierarchy)
                stage = STAGE_READ
                item = LabelledImage(labelled, split, record.image_path, read_image_bytes(record))
                stage = STAGE_DECODE
                encoded = to_example(item)
            except Rejected as exc:
                quarantined.append(Quarantined(record.key, record.provenance, split, stage, exc.reason, exc.message))
                continue
            writers[split][written[split] % n].write(encoded.serialized)
            written[split] += 1
            yield split, encoded.serialized, encoded.width, encoded.height, encoded.nbytes

    stats = compute_statistics(examples(), ctx.schema, ctx.hierarchy, [(q.split, q.reason) for q in quarantined])
    for shards in writers.values():
        for writer in shards:
            writer.close()
    os.makedirs(os.path.join(out_dir, ingest.QUARANTINE), exist_ok=True)
    for split in SPLITS:
        with open(quarantine_path(str(out_dir), split), "w") as f:
            f.writelines(q.to_json() + "\n" for q in quarantined if q.split == split)
    with open(os.path.join(out_dir, "statistics.json"), "w") as f:
        json.dump(stats, f, indent=1)
    return written


def time_variant(ctx: Context, data_dir: Path, variant: str) -> dict:
    ctx.clean()
    with CpuMeter() as meter:
        if variant == LOOP:
            written = run_loop(ctx, data_dir, ctx.work_root / "loop")
        else:
            written = run_beam(ctx, data_dir, variant)
    images = sum(written.values())
    ctx.clean()
    return {
        "variant": variant,
        "seconds": meter.seconds,
        "images": images,
        "written": written,
        "images_per_s": images / meter.seconds,
        "ms_per_image": 1000 * meter.seconds / images,
        "our_cores": meter.our_cores,
        "worker_cores": meter.children_cpu / meter.seconds,
        "cpu_ms_per_image": 1000 * (meter.own_cpu + meter.children_cpu) / images,
        "other_cores": meter.other_cores,
    }


# ------------------------------------------------------------------------------------------------ measurement
def _median_run(runs: list[dict]) -> dict:
    """The run with the median time (lower middle for an even count), plus the spread of images/s."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    middle = dict(ordered[(len(ordered) - 1) // 2])
    middle["seconds"] = statistics.median(r["seconds"] for r in runs)
    middle["images_per_s"] = middle["images"] / middle["seconds"]
    middle["ms_per_image"] = 1000 * middle["seconds"] / middle["images"]
    middle["all_images_per_s"] = [r["images_per_s"] for r in runs]
    middle["reps"] = len(runs)
    middle["max_other_cores"] = max(r["other_cores"] for r in runs)
    return middle


def measure(sizes: list[int], reps: int, reps_large: int, cache_dir: Path, work_root: Path) -> dict:
    start = time.perf_counter()
    dirs = prepare_datasets(cache_dir, sizes)
    tiny = startup_dataset(cache_dir, dirs[max(sizes)])
    generation_s = time.perf_counter() - start
    ctx = Context(work_root)
    _log("warm-up: imports and TF tracing in this process")
    for variant in VARIANTS:
        time_variant(ctx, tiny, variant)
    startup = {}
    for variant in VARIANTS:
        tries = [time_variant(ctx, tiny, variant) for _ in range(2)]
        startup[variant] = min(r["seconds"] for r in tries)
        _log(f"{STARTUP_IMAGES}-image job, {LABELS[variant]}: {startup[variant]:.2f} s")
    results: dict[int, dict[str, dict]] = {}
    for size in sizes:
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        n_reps = reps_large if size >= LARGE else reps
        for rep in range(n_reps):
            order = VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]
            for variant in order:
                run = time_variant(ctx, dirs[size], variant)
                runs[variant].append(run)
                _log(
                    f"{run['images']} images, {LABELS[variant]}, rep {rep + 1}/{n_reps}: {run['seconds']:.1f} s, "
                    f"{run['images_per_s']:.0f} images/s, {run['our_cores']:.2f} cores ours, "
                    f"{run['other_cores']:.2f} others'"
                )
        counts = {v: runs[v][0]["written"] for v in VARIANTS}
        if len({json.dumps(c, sort_keys=True) for c in counts.values()}) != 1:
            raise SystemExit(f"{size}: the variants wrote different numbers of images per split: {counts}")
        results[size] = {v: _median_run(runs[v]) for v in VARIANTS}
    ceiling = None
    if max(sizes) >= LARGE:  # what the target asks of Beam, next to what two plain processes reach
        tries = []
        for rep in range(reps_large):
            run = loop_ceiling(dirs[max(sizes)], work_root)
            tries.append(run)
            _log(f"2 loop processes, {run['images']} images, rep {rep + 1}/{reps_large}: {run['seconds']:.1f} s")
        ceiling = sorted(tries, key=lambda r: r["seconds"])[(len(tries) - 1) // 2]
    return {"startup": startup, "results": results, "generation_s": generation_s, "ceiling": ceiling}


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares seconds = fixed + per_image * images → (fixed s, ms per image)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx if sxx else 0.0
    return mean_y - slope * mean_x, 1000 * slope


def _net_ms(run: dict, startup_s: float) -> float:
    """ms per image once the fixed cost (the 10-image job's time) is taken out."""
    return 1000 * (run["seconds"] - startup_s) / (run["images"] - STARTUP_IMAGES)


def result_rows(measured: dict) -> list[dict]:
    """The rows {"measurement", "value", "unit", "ratio", "target", "holds"} of a measurement."""
    results, startup = measured["results"], measured["startup"]
    sizes = sorted(results)
    rows = []

    def row(measurement, value, unit, ratio=None, target=None, holds=None):
        rows.append(
            {"measurement": measurement, "value": value, "unit": unit, "ratio": ratio, "target": target, "holds": holds}
        )

    for size in sizes:
        by = results[size]
        images = by[LOOP]["images"]
        loop_rate = by[LOOP]["images_per_s"]
        for variant in VARIANTS:
            rate = by[variant]["images_per_s"]
            ratio = None if variant == LOOP else rate / loop_rate
            target = holds = None
            if variant == BEAM_2_WORKERS and size == max(sizes) and size >= LARGE:
                target, holds = f"≥ {SPEEDUP_TARGET}× loop at {size} images", ratio >= SPEEDUP_TARGET
            row(f"images/s, {LABELS[variant]}, {images} images", rate, "images/s", ratio, target, holds)
        for variant in VARIANTS:
            row(f"ms/image, {LABELS[variant]}, {images} images", by[variant]["ms_per_image"], "ms/image")
    small = 5000 if 5000 in results and sizes[-1] != 5000 else sizes[0]
    large = LARGE if LARGE in results else sizes[-1]
    if small != large:
        for variant in VARIANTS:
            before, after = results[small][variant]["ms_per_image"], results[large][variant]["ms_per_image"]
            change = after / before
            row(
                f"ms/image change {results[small][variant]['images']} → {results[large][variant]['images']} images, "
                f"{LABELS[variant]}",
                100 * (change - 1),
                "%",
                change,
                f"within ±{SCALING_TOLERANCE:.0%}" if large >= LARGE and small == 5000 else None,
                abs(change - 1) <= SCALING_TOLERANCE if large >= LARGE and small == 5000 else None,
            )
        for variant in VARIANTS:
            before, after = (
                _net_ms(results[small][variant], startup[variant]),
                _net_ms(results[large][variant], startup[variant]),
            )
            change = after / before
            scored = large >= LARGE and small == 5000
            row(
                f"ms/image net of start-up change {results[small][variant]['images']} → "
                f"{results[large][variant]['images']} images, {LABELS[variant]}",
                100 * (change - 1),
                "%",
                change,
                f"within ±{SCALING_TOLERANCE:.0%}" if scored else None,
                abs(change - 1) <= SCALING_TOLERANCE if scored else None,
            )
    for size in sizes:
        for variant in VARIANTS:
            r = results[size][variant]
            row(
                f"ms/image net of start-up, {LABELS[variant]}, {r['images']} images",
                _net_ms(r, startup[variant]),
                "ms/image",
            )
    for variant in VARIANTS:
        row(f"{STARTUP_IMAGES}-image job (start-up), {LABELS[variant]}", startup[variant], "s")
    noise = max(results[s][v]["max_other_cores"] for s in sizes for v in VARIANTS)
    row(
        "others' CPU during a measured run, the most",
        noise,
        "cores",
        None,
        f"≤ {QUIET_CORES} (a quiet machine; else the ratios are not this machine's)",
        noise <= QUIET_CORES,
    )
    if len(sizes) >= 2:
        for variant in VARIANTS:
            fixed, per_image = _fit([(results[s][variant]["images"], results[s][variant]["seconds"]) for s in sizes])
            row(f"fit over sizes: fixed cost, {LABELS[variant]}", fixed, "s")
            loop_per_image = _fit([(results[s][LOOP]["images"], results[s][LOOP]["seconds"]) for s in sizes])[1]
            row(
                f"fit over sizes: marginal cost, {LABELS[variant]} (ratio: loop's / this, i.e. speed-up without "
                "fixed costs)",
                per_image,
                "ms/image",
                loop_per_image / per_image,
            )
    ceiling = measured.get("ceiling")
    if ceiling:
        loop = results[sizes[-1]][LOOP]
        row(
            f"images/s, 2 independent loop processes on halves of the {ceiling['images']} images (launch to both "
            "done: the most any 2-process split of this work reaches here)",
            ceiling["images"] / ceiling["seconds"],
            "images/s",
            loop["seconds"] / ceiling["seconds"],
        )
        row(
            "images/s, the same 2 loop processes counted from after their imports (start-up excluded)",
            ceiling["images"] / ceiling["work_s"],
            "images/s",
            loop["seconds"] / ceiling["work_s"],
        )
    if sizes[-1] < LARGE or (small == large):
        row(
            f"Beam 2 workers ≥ {SPEEDUP_TARGET}× loop at {LARGE} images (full mode only)",
            None,
            "",
            None,
            f"≥ {SPEEDUP_TARGET}×",
            None,
        )
    return rows


# ------------------------------------------------------------------------------------------------ profiling
class StageTimer:
    """Wall time per fused stage of a FnApiRunner job (the runner runs one stage's bundles at a time), plus
    the time before the first stage (construction, translation, fusion) and after the last one."""

    def __init__(self):
        self.stages: dict[str, float] = {}
        self.marks: dict[str, float] = {}

    @contextlib.contextmanager
    def patched(self):
        from apache_beam.runners.portability.fn_api_runner import fn_runner

        execute, run_stages = fn_runner.FnApiRunner._execute_bundle, fn_runner.FnApiRunner.run_stages
        timer = self

        def timed_execute(runner, context, bundle_context_manager, bundle_input):
            start = time.perf_counter()
            try:
                return execute(runner, context, bundle_context_manager, bundle_input)
            finally:
                name = bundle_context_manager.stage.name
                timer.stages[name] = timer.stages.get(name, 0.0) + time.perf_counter() - start

        def timed_run_stages(runner, stage_context, stages):
            timer.marks["run_stages_start"] = time.perf_counter()
            try:
                return run_stages(runner, stage_context, stages)
            finally:
                timer.marks["run_stages_end"] = time.perf_counter()

        with (
            mock.patch.object(fn_runner.FnApiRunner, "_execute_bundle", timed_execute),
            mock.patch.object(fn_runner.FnApiRunner, "run_stages", timed_run_stages),
        ):
            yield self

    @staticmethod
    def label(stage: str) -> str:
        """A fused stage's name, e.g. '((((Ingest/...)+(ref_AppliedPTransform_Preprocess-Encode_12))+...' →
        'Ingest → Preprocess (17 steps)': its top-level transforms in order."""
        steps = re.findall(r"ref_AppliedPTransform_([^)]+?)_\d+\)|\(([^()+]+?)/(?:Read|Write)\)", stage)
        names = [(a or b).replace("-", "/").split("/")[0] for a, b in steps]
        names = [name for name in names if not name.startswith("ref_")]  # runner-made PCollection reads/writes
        top = list(dict.fromkeys(names))
        return f"{' → '.join(top) or stage[:60]} ({len(steps)} steps)"

    def table(self, start: float, seconds: float) -> str:
        before = self.marks["run_stages_start"] - start
        in_runner = self.marks["run_stages_end"] - self.marks["run_stages_start"]
        after = start + seconds - self.marks["run_stages_end"]
        staged = sum(self.stages.values())
        shown = sorted(self.stages.items(), key=lambda kv: -kv[1])
        lines = ["| fused stage (or phase) | s | share |", "|---|---:|---:|"]
        lines.append(
            f"| before the first stage (construction, translation, fusion) | {before:.2f} | {before / seconds:.0%} |"
        )
        for name, value in shown[:7]:
            lines.append(f"| {self.label(name)} | {value:.2f} | {value / seconds:.0%} |")
        rest = sum(v for _, v in shown[7:])
        lines.append(
            f"| the other {max(0, len(shown) - 7)} of {len(shown)} stages | {rest:.2f} | {rest / seconds:.0%} |"
        )
        between = in_runner - staged
        lines.append(
            f"| in the runner between stages (queues, worker shut-down) | {between:.2f} | {between / seconds:.0%} |"
        )
        lines.append(f"| after the runner (metrics, output moved into place) | {after:.2f} | {after / seconds:.0%} |\n")
        return "\n".join(lines)


def _loop_part(job: tuple[str, str, int, int, float]) -> dict:
    """One of the ceiling's processes: imports (TensorFlow, the product), then the loop over its part of the records."""
    work_root, data_dir, index, parts, launched = job
    import tensorflow  # noqa: F401

    import components.preprocess  # noqa: F401
    import components.statistics  # noqa: F401

    ctx = Context(Path(work_root))
    ready = time.time()
    start = time.perf_counter()
    written = run_loop(ctx, Path(data_dir), Path(work_root) / f"part-{index}", (index, parts))
    seconds = time.perf_counter() - start
    return {"images": sum(written.values()), "work_s": seconds, "boot_s": ready - launched}


def loop_ceiling(data_dir: Path, work_root: Path, processes: int = 2) -> dict:
    """What `processes` independent loop processes (each over 1/n of the records, own output files) achieve:
    the best a 2-process data stage could do on this machine with this per-image work."""
    shutil.rmtree(work_root / "ceiling", ignore_errors=True)
    launched = time.time()
    jobs = [(str(work_root / "ceiling"), str(data_dir), i, processes, launched) for i in range(processes)]
    with CpuMeter() as meter, multiprocessing.get_context("spawn").Pool(processes) as pool:
        parts = pool.map(_loop_part, jobs, chunksize=1)
    shutil.rmtree(work_root / "ceiling", ignore_errors=True)
    images = sum(p["images"] for p in parts)
    return {
        "images": images,
        "seconds": meter.seconds,
        "work_s": max(p["work_s"] for p in parts),
        "boot_s": max(p["boot_s"] for p in parts),
        "our_cores": meter.our_cores,
        "other_cores": meter.other_cores,
    }


def _constant_example() -> tuple[bytes, int]:
    """A serialized Example of the usual size: one generated pet through the product's transform at the default
    preprocess settings (~2.4 kB, like the real ones); and that size."""
    import numpy as np
    import tensorflow as tf

    from components.preprocess import decode_and_resize, make_example
    from datasources.synthetic_pets import breed_looks, encode_jpeg, render_pet
    from pipeline.config import PreprocessConfig
    from schemas import load_hierarchy

    hierarchy, pre = load_hierarchy(), PreprocessConfig()
    breed = hierarchy.breeds[0]
    source = encode_jpeg(render_pet(breed, breed_looks(hierarchy)[breed.name], np.random.default_rng(0)), 90)
    jpeg = tf.io.encode_jpeg(decode_and_resize(tf.constant(source), pre.image_size), quality=pre.jpeg_quality)
    example = make_example(f"{breed.name}_1", 0, 0, 0, jpeg.numpy(), hierarchy).SerializeToString()
    return example, len(example)


class TrivialEncodeFn:
    """Stands in for the image work (check, decode, resize, encode, Example) in `--profile`'s Beam run: a constant
    Example per image, everything else (read, shuffles, writes, statistics, counters) unchanged. A plain class
    so that it pickles by reference into Beam's worker processes."""

    _example: bytes | None = None

    def __call__(self, item):
        from components.preprocess import EncodedExample

        if TrivialEncodeFn._example is None:
            TrivialEncodeFn._example = _constant_example()[0]
        return EncodedExample(item.split, TrivialEncodeFn._example, 100, 100, len(item.data))


def _trivial_encode_examples():
    """components.preprocess.EncodeExamples with the per-image work replaced by TrivialEncodeFn."""
    import apache_beam as beam

    from components.ingest import QUARANTINE
    from components.preprocess import EncodeExamples, _EncodeExampleFn

    class _TrivialDoFn(_EncodeExampleFn):
        def setup(self):
            self._to_example = TrivialEncodeFn()

    class TrivialEncodeExamples(EncodeExamples):
        def expand(self, images):
            encoded = images | "Encode" >> beam.ParDo(_TrivialDoFn()).with_outputs(QUARANTINE, main="examples")
            return {"examples": encoded.examples, QUARANTINE: encoded[QUARANTINE]}

    return TrivialEncodeExamples


def profile(size: int, cache_dir: Path, work_root: Path) -> str:
    """Markdown: where the time of each variant goes, at `size` images."""
    dirs = prepare_datasets(cache_dir, [size])
    ctx = Context(work_root)
    data_dir = dirs[size]
    out = io.StringIO()
    tiny = startup_dataset(cache_dir, data_dir)
    for variant in VARIANTS:
        time_variant(ctx, tiny, variant)  # warm-up
    summary: dict[tuple[str, str], dict] = {}  # (variant, "10 images" | "real" | "trivial") -> run

    # The loop under cProfile, its functions grouped into the steps of the work.
    ctx.clean()
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    written = run_loop(ctx, data_dir, work_root / "loop")
    profiler.disable()
    seconds = time.perf_counter() - start
    ctx.clean()
    images = sum(written.values())
    stats = pstats.Stats(profiler)
    groups = {
        "read file (gfile)": ("read_image_bytes",),
        "check_image (PIL header)": ("check_image",),
        "decode+resize+encode (tf.function call)": ("__call__ of tensorflow",),
        "make_example + SerializeToString": ("make_example", "SerializeToString"),
        "TFRecordWriter.write (gzip)": ("write of TFRecordWriter",),
        "statistics add_example": ("add_example",),
    }
    cumulative = {}
    for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        for group, keys in groups.items():
            for key in keys:
                fn, _, where = key.partition(" of ")
                if name == fn and (
                    not where or where in filename or (where == "TFRecordWriter" and "tf_record" in filename)
                ):
                    cumulative[group] = max(cumulative.get(group, 0.0), ct)
    print(
        f"### Loop under cProfile, {images} images: {seconds:.1f} s ({1000 * seconds / images:.2f} ms/image; "
        "cProfile adds overhead to Python-heavy steps)\n",
        file=out,
    )
    print("| step | s | ms/image | share |\n|---|---:|---:|---:|", file=out)
    for group, value in sorted(cumulative.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {value:.2f} | {1000 * value / images:.3f} | {value / seconds:.0%} |", file=out)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    top = "\n".join(line for line in text.getvalue().splitlines() if line.strip())
    print(f"\n<details><summary>top 15 by own time</summary>\n\n```\n{top}\n```\n</details>\n", file=out)

    # The ceiling: two independent loop processes on halves of the records, against the loop alone.
    ctx.clean()
    alone = time_variant(ctx, data_dir, LOOP)
    summary[LOOP, "real"] = alone
    summary[LOOP, "10 images"] = time_variant(ctx, tiny, LOOP)
    with mock.patch("components.preprocess.ImageToExample", lambda *args: TrivialEncodeFn()):
        summary[LOOP, "trivial"] = time_variant(ctx, data_dir, LOOP)
    ceiling = loop_ceiling(data_dir, work_root)
    print(
        f"### Ceiling: 2 independent loop processes, each on half the records, {ceiling['images']} images\n", file=out
    )
    print("| run | wall s | images/s | vs loop alone | our CPU (cores) | others' CPU (cores) |", file=out)
    print("|---|---:|---:|---:|---:|---:|", file=out)
    print(
        f"| loop alone | {alone['seconds']:.1f} | {alone['images_per_s']:.0f} | 1.00× | {alone['our_cores']:.2f} "
        f"| {alone['other_cores']:.2f} |",
        file=out,
    )
    rate = ceiling["images"] / ceiling["seconds"]
    print(
        f"| 2 loop processes, launch to both done (spawn + imports: {ceiling['boot_s']:.1f} s) | "
        f"{ceiling['seconds']:.1f} | "
        f"{rate:.0f} | {rate / alone['images_per_s']:.2f}× | {ceiling['our_cores']:.2f} | "
        f"{ceiling['other_cores']:.2f} |",
        file=out,
    )
    rate = ceiling["images"] / ceiling["work_s"]
    print(
        f"| 2 loop processes, work only (slower process, after its imports) | {ceiling['work_s']:.1f} | "
        f"{rate:.0f} | {rate / alone['images_per_s']:.2f}× | – | – |\n",
        file=out,
    )
    _log(f"ceiling: {ceiling['seconds']:.1f} s (work {ceiling['work_s']:.1f} s) vs loop alone {alone['seconds']:.1f} s")

    # Beam: wall time per fused stage of a 10-image job (fixed costs), the real job, and the job with trivial
    # image work (Beam's own per-image cost).
    for variant in (BEAM_IN_PROCESS, BEAM_2_WORKERS):
        for source, trivial in ((tiny, False), (data_dir, False), (data_dir, True)):
            ctx.clean()
            timer = StageTimer()
            patches = contextlib.ExitStack()
            patches.enter_context(timer.patched())
            if trivial:
                patches.enter_context(mock.patch("components.preprocess.EncodeExamples", _trivial_encode_examples()))
            with patches, CpuMeter() as meter:
                start = time.perf_counter()
                written = run_beam(ctx, source, variant)
            ctx.clean()
            images = sum(written.values())
            what = "trivial image DoFn (constant Example)" if trivial else "real"
            print(
                f"### {LABELS[variant]}, {what}, {images} images: {meter.seconds:.2f} s "
                f"({1000 * meter.seconds / images:.2f} ms/image), our CPU {meter.our_cores:.2f} cores "
                f"({meter.children_cpu / meter.seconds:.2f} in worker processes; "
                f"{1000 * (meter.own_cpu + meter.children_cpu) / images:.2f} CPU ms/image), "
                f"others' {meter.other_cores:.2f}\n",
                file=out,
            )
            print(timer.table(start, meter.seconds), file=out)
            _log(f"profiled {LABELS[variant]} ({what}, {images} images): {meter.seconds:.1f} s")
            kind = "trivial" if trivial else "real" if source == data_dir else "10 images"
            cpu = meter.own_cpu + meter.children_cpu
            summary[variant, kind] = {
                "seconds": meter.seconds,
                "images": images,
                "cpu_s": cpu,
                "other_cores": meter.other_cores,
            }
    return _cost_summary(summary) + out.getvalue()


def _cost_summary(summary: dict) -> str:
    """Per variant: fixed cost, the per-image cost of everything but the image work (trivial DoFn), and of the
    image work itself (real − trivial)."""
    lines = [
        "### Summary: fixed cost, and per-image cost with and without the image work\n",
        "Fixed = the 10-image job. Non-image = (trivial run − fixed) / images: reading, splitting, writing, "
        "statistics and, for Beam, its own per-element cost. Image work = (real − trivial) / images: check_image, "
        "decode/resize/encode, Example. CPU = this process + worker processes.\n",
        "| variant | fixed s | real run s | trivial run s | non-image ms/image (wall) | image work ms/image (wall) "
        "| real CPU ms/image | trivial CPU ms/image | others' CPU (cores, most) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        fixed, real, trivial = (summary.get((variant, k)) for k in ("10 images", "real", "trivial"))
        if not (fixed and real and trivial):
            continue
        n = real["images"]
        cpu = {
            k: r.get("cpu_s", r.get("our_cores", 0) * r["seconds"]) for k, r in (("real", real), ("trivial", trivial))
        }
        noise = max(r["other_cores"] for r in (fixed, real, trivial))
        lines.append(
            f"| {LABELS[variant]} | {fixed['seconds']:.2f} | {real['seconds']:.1f} | {trivial['seconds']:.1f} "
            f"| {1000 * (trivial['seconds'] - fixed['seconds']) / n:.3f} "
            f"| {1000 * (real['seconds'] - trivial['seconds']) / n:.3f} | {1000 * cpu['real'] / n:.3f} "
            f"| {1000 * cpu['trivial'] / n:.3f} | {noise:.2f} |"
        )
    return "\n".join(lines) + "\n\n"


# ------------------------------------------------------------------------------------------------ report
def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def tables(measured: dict) -> str:
    results, startup = measured["results"], measured["startup"]
    sizes = sorted(results)
    lines = [
        "| images | reps | loop images/s | Beam in-process images/s | Beam 2 workers images/s | 2 workers / loop "
        "| in-process / loop | loop ms/image | in-process ms/image | 2 workers ms/image |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        by = results[size]
        loop = by[LOOP]["images_per_s"]
        lines.append(
            f"| {by[LOOP]['images']} | {by[LOOP]['reps']} | {loop:.0f} | {by[BEAM_IN_PROCESS]['images_per_s']:.0f} "
            f"| {by[BEAM_2_WORKERS]['images_per_s']:.0f} | {by[BEAM_2_WORKERS]['images_per_s'] / loop:.2f}× "
            f"| {by[BEAM_IN_PROCESS]['images_per_s'] / loop:.2f}× | {by[LOOP]['ms_per_image']:.2f} "
            f"| {by[BEAM_IN_PROCESS]['ms_per_image']:.2f} | {by[BEAM_2_WORKERS]['ms_per_image']:.2f} |"
        )
    lines += [
        "",
        "Cost per image, ms: wall / images, and net of start-up = (wall − the 10-image job) / (images − 10):",
        "",
        "| images | loop | loop net | in-process | in-process net | 2 workers | 2 workers net |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        cells = [f"{results[size][LOOP]['images']}"]
        for variant in VARIANTS:
            r = results[size][variant]
            cells += [f"{r['ms_per_image']:.3f}", f"{_net_ms(r, startup[variant]):.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per run (the median rep; images/s of every rep; CPU in cores: ours = this process + Beam's worker "
        "processes, others' = the rest of the machine meanwhile — on 2 cores, what others take we cannot have):",
        "",
        "| images | variant | wall s (median) | images/s of each rep | our CPU (cores) | of which worker processes "
        "| our CPU ms/image | others' CPU (cores) |",
        "|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for size in sizes:
        for variant in VARIANTS:
            r = results[size][variant]
            each = ", ".join(f"{x:.0f}" for x in r["all_images_per_s"])
            lines.append(
                f"| {r['images']} | {LABELS[variant]} | {r['seconds']:.1f} | {each} | {r['our_cores']:.2f} "
                f"| {r['worker_cores']:.2f} | {r['cpu_ms_per_image']:.2f} | {r['other_cores']:.2f} |"
            )
    lines += [
        "",
        f"Start-up ({STARTUP_IMAGES}-image job, best of 2): "
        + ", ".join(f"{LABELS[v]} {startup[v]:.2f} s" for v in VARIANTS),
    ]
    return "\n".join(lines)


def targets_text(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if r["target"] is None:
            continue
        verdict = {True: "holds", False: "MISSED", None: "not measured (needs the 5k and 20k sizes)"}[r["holds"]]
        value = f"{r['ratio']:.2f}×" if r["ratio"] is not None else "–"
        if r["unit"] == "%":
            value = f"{r['value']:+.1f} %"
        elif r["unit"] == "cores":
            value = f"{r['value']:.2f} cores"
        lines.append(f"- {r['measurement']}: **{value}** — target {r['target']}: **{verdict}**")
    return "\n".join(lines)


def rows_table(rows: list[dict]) -> str:
    lines = ["| measurement | value | unit | ratio | target | holds |", "|---|---:|---|---:|---|---|"]
    for r in rows:
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "–"
        holds = {True: "holds", False: "missed", None: "–"}[r["holds"]]
        lines.append(
            f"| {r['measurement']} | {_fmt(r['value'])} | {r['unit']} | {ratio} | {r['target'] or '–'} | {holds} |"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, str]:
    from benchmarks import machine_info as common

    return common("tensorflow", "apache-beam")


# ------------------------------------------------------------------------------------------------ entry points
def _cache_dir(cache_dir: str | None) -> Path:
    return Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "petpipe-bench-preprocess"


def run(
    quick: bool,
    sizes: list[int] | None = None,
    reps: int | None = None,
    reps_large: int | None = None,
    cache_dir: str | None = None,
) -> list[dict]:
    """Measure and return the result rows (quick: 2.5k and 5k images, 1 rep; else every size, median of 3 reps)."""
    return _run(quick, sizes, reps, reps_large, cache_dir)[1]


def _run(quick, sizes, reps, reps_large, cache_dir) -> tuple[dict, list[dict]]:
    sizes = sorted(sizes or (QUICK_SIZES if quick else SIZES))
    reps = reps or (1 if quick else 3)
    reps_large = reps_large or reps
    with tempfile.TemporaryDirectory(prefix="petpipe-bench-") as work_root:
        measured = measure(sizes, reps, reps_large, _cache_dir(cache_dir), Path(work_root))
    return measured, result_rows(measured)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2.5k and 5k images, 1 rep")
    parser.add_argument("--sizes", help="comma-separated image counts (default 2500,5000,10000,20000)")
    parser.add_argument("--reps", type=int, help="reps per size, median reported (default 3; quick 1)")
    parser.add_argument("--reps-large", type=int, help=f"reps for sizes ≥ {LARGE} (default: --reps)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="markdown report (default %(default)s)")
    parser.add_argument("--cache-dir", help="where generated data sets are kept (default $TMPDIR/petpipe-bench-...)")
    parser.add_argument("--profile", action="store_true", help="also show where the time goes (at --profile-size)")
    parser.add_argument("--profile-size", type=int, default=5000)
    parser.add_argument("--profile-only", action="store_true", help="only the profile")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    started = time.perf_counter()
    sections = []
    command = "python -m benchmarks.preprocess " + " ".join(argv if argv is not None else sys.argv[1:])
    generation = ""
    if not args.profile_only:
        measured, rows = _run(args.quick, sizes, args.reps, args.reps_large, args.cache_dir)
        sections += [
            "## Targets\n\n" + targets_text(rows),
            "## Throughput\n\n" + tables(measured),
            "## Result rows\n\n" + rows_table(rows),
        ]
        generation = f", of which {measured['generation_s']:.0f} s generating data sets not yet cached"
    if args.profile or args.profile_only:
        with tempfile.TemporaryDirectory(prefix="petpipe-bench-") as work_root:
            sections.append(
                f"## Where the time goes ({args.profile_size} images)\n\n"
                + profile(args.profile_size, _cache_dir(args.cache_dir), Path(work_root))
            )
    wall = time.perf_counter() - started
    info = machine_info()
    setup = "\n".join(f"- {k}: {v}" for k, v in info.items())
    report = (
        f"# Data stage throughput: Beam vs a plain loop\n\n`{command.strip()}` — {info['date']}, wall time "
        f"{wall:.0f} s{generation} (generation is not part of any measurement).\n\n"
        + "\n\n".join(sections)
        + f"\n\n## Setup\n\n{setup}\n"
    )
    print(report)
    if args.out:
        write_report(args.out, report)
        _log(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
