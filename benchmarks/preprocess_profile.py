"""`python -m benchmarks.preprocess --profile`: where the data stage's time goes, per variant, at one size.

* the loop under cProfile, its functions grouped into the steps of the work;
* the ceiling: two independent loop processes on halves of the records, against the loop alone;
* each Beam variant on the 10-image set (fixed costs), on the real set, and with the image work replaced by a
  constant Example (Beam's own per-image cost): wall and CPU, and the execution time of each top-level transform
  as Beam itself reports it — the PipelineResult's monitoring metrics
  (beam:metric:pardo_execution_time:{start,process,finish}_bundle_msecs:v1, sampled by the SDK workers);
* a summary per variant: fixed cost, per-image cost without the image work, and of the image work.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from pathlib import Path

from benchmarks.common import log, markdown_table
from benchmarks.preprocess_jobs import (
    BEAM_2_WORKERS,
    BEAM_IN_PROCESS,
    LABELS,
    LOOP,
    VARIANTS,
    Context,
    loop_ceiling,
    prepare_datasets,
    run_loop,
    startup_dataset,
    time_variant,
)

NAME = "preprocess"
EXECUTION_TIME = "metric:pardo_execution_time:"  # + {start,process,finish}_bundle_msecs:v1, in the "beam" namespace
SHOWN_TRANSFORMS = 7
LOOP_STEPS = {  # step of the loop's work → the functions (name, or "name of where") whose cumulative time it is
    "read file (gfile)": ("read_image_bytes",),
    "check_image (PIL header)": ("check_image",),
    "decode+resize+encode (tf.function call)": ("__call__ of tensorflow",),
    "make_example + SerializeToString": ("make_example", "SerializeToString"),
    "TFRecordWriter.write (gzip)": ("write of TFRecordWriter",),
    "statistics add_example": ("add_example",),
}


# --- Beam: execution time per transform, from the job's own metrics --------------------------------------------------
def transform_seconds(beam_result) -> dict[str, dict[str, float]]:
    """{top-level transform: {"start": s, "process": s, "finish": s}}: the execution time Beam's SDK workers
    sampled in each transform's start_bundle, process and finish_bundle, summed over its sub-transforms and over the
    worker processes (PipelineResult.monitoring_metrics(), the "beam" namespace's counters)."""
    from apache_beam.metrics.metric import MetricsFilter

    found: dict[str, dict[str, float]] = {}
    counters = beam_result.monitoring_metrics().query(MetricsFilter().with_namespace("beam"))["counters"]
    for counter in counters:
        metric, step = counter.key.metric.name, counter.key.step
        if not metric.startswith(EXECUTION_TIME) or not step:
            continue
        phase = metric[len(EXECUTION_TIME) :].split("_", 1)[0]  # start | process | finish
        name = "(runner-made PCollection reads and writes)" if step.startswith("ref_") else step.split("/", 1)[0]
        top = found.setdefault(name, {"start": 0.0, "process": 0.0, "finish": 0.0})
        top[phase] += counter.committed / 1000
    return found


def transform_table(run: dict, workers: int) -> str:
    """Markdown: the run's execution time per top-level transform, the biggest first, and what no transform took."""
    times, seconds, images = transform_seconds(run["beam_result"]), run["seconds"], run["images"]
    ordered = sorted(times.items(), key=lambda kv: -sum(kv[1].values()))
    lines = []
    for name, phases in ordered[:SHOWN_TRANSFORMS]:
        total = sum(phases.values())
        lines.append(
            [name, f"{phases['start']:.2f}", f"{phases['process']:.2f}", f"{phases['finish']:.2f}", f"{total:.2f}"]
            + [f"{1000 * total / images:.3f}", f"{total / (workers * seconds):.0%}"]
        )
    rest = sum(sum(p.values()) for _, p in ordered[SHOWN_TRANSFORMS:])
    executed = sum(sum(p.values()) for p in times.values())
    lines.append(
        [f"the other {max(0, len(ordered) - SHOWN_TRANSFORMS)} of {len(ordered)} transforms", "", "", "", f"{rest:.2f}"]
        + [f"{1000 * rest / images:.3f}", f"{rest / (workers * seconds):.0%}"]
    )
    idle = workers * seconds - executed
    lines.append(
        [f"in no transform: {workers} × wall − the above (construction, fusion, worker start, runner, data channel)"]
        + ["", "", "", f"{idle:.2f}", f"{1000 * idle / images:.3f}", f"{idle / (workers * seconds):.0%}"]
    )
    header = ["top-level transform", "start_bundle s", "process s", "finish_bundle s", "total s", "ms/image"]
    return markdown_table([*header, f"share of {workers} × wall"], lines, "lrrrrrr")


def _beam_section(ctx: Context, variant: str, data_dir: Path, trivial: bool) -> tuple[str, dict]:
    run = time_variant(ctx, data_dir, variant, trivial)
    seconds, images = run["seconds"], run["images"]
    what = "constant Example instead of the image work" if trivial else "real"
    workers = 2 if variant == BEAM_2_WORKERS else 1
    heading = (
        f"### {LABELS[variant]}, {what}, {images} images: {seconds:.2f} s ({1000 * seconds / images:.2f} ms/image), "
        f"our CPU {run['our_cores']:.2f} cores ({run['worker_cores']:.2f} in worker processes; "
        f"{run['cpu_ms_per_image']:.2f} CPU ms/image), others' {run['other_cores']:.2f}\n"
    )
    log(NAME, f"profiled {LABELS[variant]} ({what}, {images} images): {seconds:.1f} s")
    return heading + "\n" + transform_table(run, workers) + "\n", run


# --- the loop under cProfile ------------------------------------------------------------------------------------------
def _loop_profile(ctx: Context, data_dir: Path, work_root: Path) -> str:
    ctx.clean()
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    written = run_loop(ctx, data_dir, work_root / "loop")
    profiler.disable()
    seconds = time.perf_counter() - start
    ctx.clean()
    images = sum(written.values())
    cumulative: dict[str, float] = {}
    for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in pstats.Stats(profiler).stats.items():
        for step, keys in LOOP_STEPS.items():
            for key in keys:
                function, _, where = key.partition(" of ")
                if name == function and (
                    not where or where in filename or (where == "TFRecordWriter" and "tf_record" in filename)
                ):
                    cumulative[step] = max(cumulative.get(step, 0.0), ct)
    ordered = sorted(cumulative.items(), key=lambda kv: -kv[1])
    table = markdown_table(
        ["step", "s", "ms/image", "share"],
        [[step, f"{v:.2f}", f"{1000 * v / images:.3f}", f"{v / seconds:.0%}"] for step, v in ordered],
    )
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    top = "\n".join(line for line in text.getvalue().splitlines() if line.strip())
    return (
        f"### Loop under cProfile, {images} images: {seconds:.1f} s ({1000 * seconds / images:.2f} ms/image; "
        f"cProfile adds overhead to Python-heavy steps)\n\n{table}\n\n"
        f"<details><summary>top 15 by own time</summary>\n\n```\n{top}\n```\n</details>\n"
    )


def _ceiling_section(alone: dict, ceiling: dict) -> str:
    def line(name: str, seconds: float, images: int, ours: str, others: str) -> list[str]:
        rate = images / seconds
        return [name, f"{seconds:.1f}", f"{rate:.0f}", f"{rate / alone['images_per_s']:.2f}×", ours, others]

    lines = [
        line(
            "loop alone", alone["seconds"], alone["images"], f"{alone['our_cores']:.2f}", f"{alone['other_cores']:.2f}"
        ),
        line(
            f"2 loop processes, launch to both done (spawn + imports: {ceiling['boot_s']:.1f} s)",
            ceiling["seconds"],
            ceiling["images"],
            f"{ceiling['our_cores']:.2f}",
            f"{ceiling['other_cores']:.2f}",
        ),
        line(
            "2 loop processes, work only (slower process, after its imports)",
            ceiling["work_s"],
            ceiling["images"],
            "–",
            "–",
        ),
    ]
    header = ["run", "wall s", "images/s", "vs loop alone", "our CPU (cores)", "others' CPU (cores)"]
    return (
        f"### Ceiling: 2 independent loop processes, each on half the records, {ceiling['images']} images\n\n"
        + markdown_table(header, lines)
        + "\n"
    )


def _cost_summary(summary: dict) -> str:
    """Per variant: fixed cost, the per-image cost of everything but the image work (constant Example), and of the
    image work itself (real − constant)."""
    lines = []
    for variant in VARIANTS:
        fixed, real, trivial = (summary.get((variant, k)) for k in ("10 images", "real", "trivial"))
        if not (fixed and real and trivial):
            continue
        n = real["images"]
        noise = max(r["other_cores"] for r in (fixed, real, trivial))
        lines.append(
            [LABELS[variant], f"{fixed['seconds']:.2f}", f"{real['seconds']:.1f}", f"{trivial['seconds']:.1f}"]
            + [f"{1000 * (trivial['seconds'] - fixed['seconds']) / n:.3f}"]
            + [f"{1000 * (real['seconds'] - trivial['seconds']) / n:.3f}", f"{1000 * real['cpu_s'] / n:.3f}"]
            + [f"{1000 * trivial['cpu_s'] / n:.3f}", f"{noise:.2f}"]
        )
    header = ["variant", "fixed s", "real run s", "trivial run s", "non-image ms/image (wall)"]
    header += ["image work ms/image (wall)", "real CPU ms/image", "trivial CPU ms/image", "others' CPU (cores, most)"]
    return (
        "### Summary: fixed cost, and per-image cost with and without the image work\n\n"
        "Fixed = the 10-image job. Non-image = (trivial run − fixed) / images: reading, splitting, writing, "
        "statistics and, for Beam, its own per-element cost. Image work = (real − trivial) / images: check_image, "
        "decode/resize/encode, Example. Trivial = a constant Example per image instead of the image work. "
        "CPU = this process + worker processes.\n\n" + markdown_table(header, lines) + "\n\n"
    )


def profile(size: int, cache_dir: Path, work_root: Path) -> str:
    """Markdown: where the time of each variant goes, at `size` images."""
    data_dir = prepare_datasets(cache_dir, [size])[size]
    tiny = startup_dataset(cache_dir)
    ctx = Context(work_root)
    for variant in VARIANTS:
        time_variant(ctx, tiny, variant)  # warm-up
    sections = [_loop_profile(ctx, data_dir, work_root)]
    summary: dict[tuple[str, str], dict] = {}  # (variant, "10 images" | "real" | "trivial") → run
    alone = summary[LOOP, "real"] = time_variant(ctx, data_dir, LOOP)
    summary[LOOP, "10 images"] = time_variant(ctx, tiny, LOOP)
    summary[LOOP, "trivial"] = time_variant(ctx, data_dir, LOOP, trivial=True)
    ceiling = loop_ceiling(data_dir, work_root)
    sections.append(_ceiling_section(alone, ceiling))
    log(NAME, f"ceiling: {ceiling['seconds']:.1f} s (work {ceiling['work_s']:.1f} s) vs loop {alone['seconds']:.1f} s")
    for variant in (BEAM_IN_PROCESS, BEAM_2_WORKERS):
        for kind, source, trivial in (
            ("10 images", tiny, False),
            ("real", data_dir, False),
            ("trivial", data_dir, True),
        ):
            text, summary[variant, kind] = _beam_section(ctx, variant, source, trivial)
            sections.append(text)
    note = (
        "Beam's execution times are what its SDK workers sample per transform (start_bundle, process, "
        "finish_bundle; every 200 ms at most, so short transforms read coarse), summed over the worker processes: "
        "with 2 workers the shares are of 2 × wall. A fused stage's time spent outside its transforms (bundle "
        "set-up, data channel) and the runner's own work fall in the last row. A lazy import is charged to the "
        "first transform that runs it: in a worker process, ParseAnnotations (components.fileio imports TensorFlow); "
        "the first image's tf.function tracing, to Preprocess.\n"
    )
    return _cost_summary(summary) + "\n".join(sections) + "\n" + note
