"""The three ways benchmarks.preprocess runs the data stage, and timing one run of any of them.

* **Beam, in-process** and **Beam, 2 workers** — the product's `run_span_job` with no Beam flags (the FnApiRunner,
  in memory) or with `--direct_running_mode=multi_processing --direct_num_workers=2`;
* **loop** — what a user would write in one process with the product's own functions: parse the annotation files,
  resolve each key's records, assign splits, label, read each image and run the product's core on it
  (`components.preprocess.ImageToExample`), writing GZIP TFRecords with `tf.io.TFRecordWriter` into the same splits
  and shards, the quarantine JSON lines and the same statistics (`components.statistics.compute_statistics`).

Also the data sets (the project's generator, via benchmarks.common), the stand-in for the image work that
`--profile` uses (a constant Example per image), and the ceiling: two independent loop processes on halves.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from unittest import mock

import apache_beam as beam

from benchmarks.common import CpuMeter, generated_pets, subset_of_pets

SEED = 0
STARTUP_IMAGES = 10  # the start-up job: 7 trainval and 3 test images
BEAM_IN_PROCESS, BEAM_2_WORKERS, LOOP = "beam_in_process", "beam_2_workers", "loop"
VARIANTS = (LOOP, BEAM_IN_PROCESS, BEAM_2_WORKERS)
LABELS = {LOOP: "loop (1 process)", BEAM_IN_PROCESS: "Beam in-process", BEAM_2_WORKERS: "Beam 2 workers"}
BEAM_ARGS = {BEAM_IN_PROCESS: [], BEAM_2_WORKERS: ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]}


# --- data sets --------------------------------------------------------------------------------------------------------
def per_breed_for(images: int, breeds: int) -> int:
    return max(2, -(-images // breeds))


def prepare_datasets(cache_dir: Path, sizes: list[int]) -> dict[int, Path]:
    """{size: data dir}: the project's generated set with ⌈size / breeds⌉ images per breed, cached in cache_dir."""
    from schemas import load_hierarchy

    breeds = len(load_hierarchy().breeds)
    wanted = {size: per_breed_for(size, breeds) for size in sizes}
    dirs = generated_pets(cache_dir, wanted.values(), SEED)
    return {size: dirs[per_breed] for size, per_breed in wanted.items()}


def startup_dataset(cache_dir: Path) -> Path:
    """A 10-image Oxford-layout set (the first 7 trainval and 3 test lines of the 2-per-breed generated set), for
    timing a job's fixed cost."""
    source = generated_pets(cache_dir, [2], SEED)[2]
    return subset_of_pets(source, Path(cache_dir) / f"startup-{STARTUP_IMAGES}", STARTUP_IMAGES - 3, 3)


# --- the variants -----------------------------------------------------------------------------------------------------
class Context:
    """What every run needs: config with its work dir, hierarchy and schema."""

    def __init__(self, work_root: Path):
        from pipeline.config import load_config
        from schemas import load_hierarchy, schema_for

        self.work_root = work_root
        self.hierarchy = load_hierarchy()
        self.schema = schema_for(self.hierarchy)
        self.config = load_config(None, [f"work_dir={work_root / 'work'}"])

    def clean(self) -> None:
        shutil.rmtree(self.work_root / "work", ignore_errors=True)
        shutil.rmtree(self.work_root / "loop", ignore_errors=True)


def run_beam(ctx: Context, data_dir: Path, variant: str, trivial: bool = False) -> tuple[dict[str, int], object]:
    """The product's data stage: (images written per split, the job's PipelineResult). `trivial`: the image work
    replaced by ConstantExamples."""
    from pipeline.stages.data import run_span_job

    finished = []
    with contextlib.ExitStack() as patches:
        if trivial:  # run_span_job looks EncodeExamples up in components.preprocess when called
            patches.enter_context(mock.patch("components.preprocess.EncodeExamples", ConstantExamples))
        config, variant_args = ctx.config, BEAM_ARGS[variant]
        result = run_span_job(config, str(data_dir), 0, ctx.hierarchy, ctx.schema, variant_args, finished.append)
    return dict(result.written), finished[-1]


def run_loop(
    ctx: Context, data_dir: Path, out_dir: Path, part: tuple[int, int] = (0, 1), trivial: bool = False
) -> dict[str, int]:
    """The same work in one process; images written per split. `part` (i, n): only every n-th record, starting
    from the i-th (for the two-process ceiling). `trivial`: the image work replaced by ConstantExample."""
    import tensorflow as tf

    from components import ingest
    from components.ingest import (
        SPLITS,
        LabelledImage,
        assign_split,
        in_file_order,
        label_record,
        read_image_bytes,
        resolve_duplicates,
    )
    from components.preprocess import TFRECORD_SUFFIX, ImageToExample, quarantine_path, split_prefix
    from components.records import STAGE_DECODE, STAGE_LABEL, STAGE_READ, Quarantined, Rejected
    from components.statistics import compute_statistics

    data, pre = ctx.config.data, ctx.config.preprocess
    images_dir = os.path.join(data_dir, "images")
    parsed = [
        p
        for path in ingest.check_layout(str(data_dir))
        for p in ingest.read_oxford_annotations(path, images_dir, data.eval_fraction)
    ][part[0] :: part[1]]
    limits = (data.min_image_side, data.max_image_pixels)
    to_example = (
        ConstantExample() if trivial else ImageToExample(pre.image_size, pre.jpeg_quality, ctx.hierarchy, *limits)
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
    quarantined = [p for p in parsed if isinstance(p, Quarantined)]
    by_key: dict[str, list] = {}
    for record in parsed:
        if not isinstance(record, Quarantined):
            by_key.setdefault(record.key, []).append(record)

    def examples():  # what the Beam job's Resolve and Encode steps do, per key
        for key, records in by_key.items():
            first = in_file_order(records)[0]
            split = assign_split(key, first.split_hint, data.eval_fraction, 0.0)
            stage = STAGE_LABEL
            try:
                record, _ = resolve_duplicates(key, records)
                labelled = label_record(record, ctx.hierarchy)
                stage = STAGE_READ
                item = LabelledImage(labelled, split, record.image_path, read_image_bytes(record))
                stage = STAGE_DECODE
                encoded = to_example(item)
            except Rejected as exc:
                quarantined.append(Quarantined(key, first.provenance, split, stage, exc.reason, exc.message))
                continue
            writers[split][written[split] % n].write(encoded.serialized)
            written[split] += 1
            yield split, encoded.serialized, encoded.width, encoded.height, encoded.nbytes

    stats = compute_statistics(examples(), ctx.schema, ctx.hierarchy, [(q.split, q.reason) for q in quarantined])
    for shards in writers.values():
        for writer in shards:
            writer.close()
    for split in SPLITS:
        os.makedirs(os.path.dirname(quarantine_path(str(out_dir), split)), exist_ok=True)
        with open(quarantine_path(str(out_dir), split), "w") as f:
            f.writelines(q.to_json() + "\n" for q in quarantined if q.split == split)
    with open(os.path.join(out_dir, "statistics.json"), "w") as f:
        json.dump(stats, f, indent=1)
    return written


def time_variant(ctx: Context, data_dir: Path, variant: str, trivial: bool = False) -> dict:
    """One run, timed: wall, images, CPU of this process and of Beam's worker processes, others' CPU; for Beam also
    the PipelineResult (key "beam_result")."""
    ctx.clean()
    beam_result = None
    with CpuMeter() as meter:
        if variant == LOOP:
            written = run_loop(ctx, data_dir, ctx.work_root / "loop", trivial=trivial)
        else:
            written, beam_result = run_beam(ctx, data_dir, variant, trivial)
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
        "worker_cores": meter.children_cores,
        "cpu_s": meter.cpu,
        "cpu_ms_per_image": 1000 * meter.cpu / images,
        "other_cores": meter.other_cores,
        "beam_result": beam_result,
    }


# --- the ceiling: two independent loop processes ----------------------------------------------------------------------
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
    return {
        "images": sum(p["images"] for p in parts),
        "seconds": meter.seconds,
        "work_s": max(p["work_s"] for p in parts),
        "boot_s": max(p["boot_s"] for p in parts),
        "our_cores": meter.our_cores,
        "other_cores": meter.other_cores,
    }


# --- a stand-in for the image work (--profile) ------------------------------------------------------------------------
def _constant_example() -> bytes:
    """A serialized Example of the usual size: one generated pet through the product's transform at the default
    preprocess settings (~2.4 kB, like the real ones)."""
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
    return make_example(f"{breed.name}_1", 0, 0, 0, jpeg.numpy(), hierarchy).SerializeToString()


class ConstantExample:
    """Stands in for ImageToExample (check, decode, resize, encode, Example): the same constant Example for every
    image, everything else (read, shuffles, writes, statistics, counters) unchanged."""

    _example: bytes | None = None

    def __call__(self, item):
        from components.preprocess import EncodedExample

        if ConstantExample._example is None:
            ConstantExample._example = _constant_example()
        return EncodedExample(item.split, ConstantExample._example, 100, 100, len(item.data))


class ConstantExampleFn(beam.DoFn):
    """The preprocess DoFn with ConstantExample as its core; counts written_<split> as the product's DoFn does (the
    data stage's accounting reads those counters)."""

    def setup(self):
        self._to_example = ConstantExample()

    def process(self, item):
        beam.metrics.Metrics.counter("preprocess", f"written_{item.split}").inc()
        yield self._to_example(item)


class ConstantExamples(beam.PTransform):
    """Stands in for components.preprocess.EncodeExamples (same constructor arguments, ignored; same outputs). Module
    level, so that it pickles by reference into Beam's worker processes."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def expand(self, images):
        from components.ingest import QUARANTINE

        encoded = images | "Encode" >> beam.ParDo(ConstantExampleFn()).with_outputs(QUARANTINE, main="examples")
        return {"examples": encoded.examples, QUARANTINE: encoded[QUARANTINE]}
