"""Scaling out: the data stage and batch inference on one process, on 2 local Beam workers and on Dask with 2 workers,
in one run on the same input, beside `petpipe predict` through `petpipe serve`.

* data stage (`run_span_job`, generated pets): in-process (FnApiRunner), FnApiRunner with 2 worker processes
  (`--direct_running_mode=multi_processing --direct_num_workers=2`), and Beam's DaskRunner on a Dask cluster of a
  scheduler and 2 one-thread workers **on this machine (loopback)**, started once for the whole run (its workers
  keep TensorFlow imported between jobs, as a long-lived cluster would);
* inference over the same image files with an untrained model of the default architecture and image size
  (benchmarks.serving.export_default_model): `petpipe infer` locally (RunInference, batch 32) and on the Dask cluster
  (pipeline/dask_infer.py's shape, batch 32), and `petpipe predict`'s loop (serving.client.predict_images, batches
  of 32, one after the other) against `petpipe serve` started in this process (serving.server.start_server).

Each job is run `--repeats` times, alternating the variants, after one warm-up round; medians and min–max are
reported, with the CPU cores used (this process and its children: Beam's and Dask's workers are children).

    python -m benchmarks.scale_out [--quick] [--repeats N]   # writes benchmarks/results/scale-out.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    REPO,
    CpuMeter,
    log,
    machine_info,
    markdown_table,
    median_run,
    result_row,
    write_markdown_report,
)

NAME = "scale_out"
OUT = os.path.join(REPO, "benchmarks", "results", "scale-out.md")
CACHE = Path(tempfile.gettempdir()) / "petpipe-bench-data"
BATCH = 32
PROFILES = {  # data-stage images, inference images, repeats
    True: {"data_images": 600, "infer_images": 256, "repeats": 2},
    False: {"data_images": 4000, "infer_images": 1024, "repeats": 3},
}
IN_PROCESS, TWO_WORKERS, DASK = "in-process", "FnApiRunner 2 workers", "Dask 2 workers (loopback)"
DATA_VARIANTS = {
    IN_PROCESS: lambda address: [],
    TWO_WORKERS: lambda address: ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    DASK: lambda address: ["--runner=DaskRunner", f"--dask_client_address={address}", "--dask_npartitions=4"],
}
INFER_LOCAL, INFER_DASK, PREDICT = "petpipe infer (local)", "petpipe infer (Dask 2 workers)", "petpipe predict + serve"


# --- the Dask cluster ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def dask_cluster(log_dir: Path, workers: int = 2):
    """`dask scheduler` and `workers` one-thread `dask worker`s on 127.0.0.1 (children of this process): address."""
    import distributed

    dask = str(Path(sys.executable).with_name("dask"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    argvs = [[dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]]
    argvs += [[dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard"]] * workers
    processes = []
    try:
        for i, argv in enumerate(argvs):
            with open(log_dir / f"dask-{i}.log", "w") as out:
                processes.append(
                    subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                )
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# --- one timed run of each job ---------------------------------------------------------------------------------------
def _timed(fn) -> dict:
    with CpuMeter() as meter:
        images = fn()
    return {
        "seconds": meter.seconds,
        "images": images,
        "images_per_s": images / meter.seconds,
        "cores": meter.our_cores,
        "other_cores": meter.other_cores,
    }


def data_stage(ctx, data_dir: Path, beam_args: list[str]) -> int:
    from pipeline.stages.data import run_span_job

    ctx.clean()
    result = run_span_job(ctx.config, str(data_dir), 0, ctx.hierarchy, ctx.schema, beam_args)
    ctx.clean()
    return sum(result.written.values())


def infer(model_base: str, images_dir: Path, output: Path, beam_args: list[str]) -> int:
    from pipeline.cli import main

    shutil.rmtree(output, ignore_errors=True)
    argv = ["infer", "--model", model_base, "--input", str(images_dir), "--output", str(output)]
    with contextlib.redirect_stdout(sys.stderr):
        assert main([*argv, "--batch-size", str(BATCH), *beam_args]) == 0
    rows = json.loads((output / "_SUCCESS").read_text())["rows"]
    shutil.rmtree(output, ignore_errors=True)
    return rows


def predict(target: str, images_dir: Path) -> int:
    """What `petpipe predict --batch-size 32` does: read the files, then one Predict call per 32 images in turn."""
    from serving.client import predict_images

    images = [path.read_bytes() for path in sorted(images_dir.iterdir())]
    answers = []
    for start in range(0, len(images), BATCH):
        answers += predict_images(target, images[start : start + BATCH])
    assert len(answers) == len(images)
    return len(answers)


def _data_job(ctx, data_dir: Path, beam_args: list[str]):
    return lambda: data_stage(ctx, data_dir, beam_args)


# --- the run ---------------------------------------------------------------------------------------------------------
def measure(quick: bool, repeats: int | None, tmp: Path) -> dict:
    from benchmarks.preprocess_jobs import Context, prepare_datasets
    from benchmarks.serving import export_default_model
    from serving.server import start_server

    profile = dict(PROFILES[quick])
    repeats = repeats or profile["repeats"]
    data_dir = prepare_datasets(CACHE, [profile["data_images"]])[profile["data_images"]]
    images_dir = tmp / "infer-images"
    images_dir.mkdir()
    for path in sorted((data_dir / "images").glob("*.jpg"))[: profile["infer_images"]]:
        os.link(path, images_dir / path.name)
    model_base = str(tmp / "serving" / "pets")
    warmup = [p.read_bytes() for p in sorted(images_dir.iterdir())[:4]]
    _, about = export_default_model(model_base, warmup)
    ctx = Context(tmp / "data-work")
    runs: dict[str, list[dict]] = {}
    server = start_server(model_base, "pets", port=0)
    target = f"127.0.0.1:{server.port}"
    try:
        with dask_cluster(tmp) as address:
            jobs = {name: _data_job(ctx, data_dir, flags(address)) for name, flags in DATA_VARIANTS.items()}
            dask_args = ["--runner=DaskRunner", f"--dask_client_address={address}"]
            jobs[INFER_LOCAL] = lambda: infer(model_base, images_dir, tmp / "answers", [])
            jobs[INFER_DASK] = lambda: infer(model_base, images_dir, tmp / "answers", dask_args)
            jobs[PREDICT] = lambda: predict(target, images_dir)
            for round_ in range(repeats + 1):  # round 0: warm-up (imports, TF graphs, the Dask workers' TF)
                for name, job in jobs.items():
                    log(NAME, f"{'warm-up' if round_ == 0 else f'round {round_}/{repeats}'}: {name}")
                    run = _timed(job)
                    if round_:
                        runs.setdefault(name, []).append(run)
    finally:
        server.stop(grace=1)
    return {"runs": runs, "profile": {**profile, "repeats": repeats}, "model": about}


def _line(name: str, runs: list[dict], base: float) -> list[str]:
    median = median_run(runs, "images_per_s")
    rates = median["all_images_per_s"]
    return [
        name,
        str(median["images"]),
        f"{median['images_per_s']:.0f}",
        f"{min(rates):.0f}–{max(rates):.0f}",
        f"{median['images_per_s'] / base:.2f}×",
        f"{median_run(runs, 'seconds')['seconds']:.1f}",
        f"{median_run(runs, 'cores')['cores']:.2f}",
        f"{median_run(runs, 'other_cores')['other_cores']:.2f}",
    ]


HEADER = ["job", "images", "images/s (median)", "min–max", "vs first row", "wall s", "our cores", "others' cores"]


def report(results: dict, info: dict, quick: bool, wall: float) -> str:
    runs, profile = results["runs"], results["profile"]
    rate = {name: median_run(r, "images_per_s")["images_per_s"] for name, r in runs.items()}
    data_lines = [_line(name, runs[name], rate[IN_PROCESS]) for name in DATA_VARIANTS]
    infer_lines = [_line(name, runs[name], rate[INFER_LOCAL]) for name in (INFER_LOCAL, INFER_DASK, PREDICT)]
    model = results["model"]
    return "\n".join(
        [
            "# Scaling out: in-process, 2 local Beam workers, Dask with 2 workers",
            "",
            f"`python -m benchmarks.scale_out{' --quick' if quick else ''}` — {'quick' if quick else 'full'} mode, "
            f"wall time {wall / 60:.1f} min; {profile['repeats']} timed rounds after a warm-up round, variants "
            "alternating within each round. Medians, with the range over the rounds. The Dask cluster is a "
            "scheduler and 2 one-thread workers on **this machine (loopback)**, started once for the run. Cores: CPU "
            "seconds per wall second of this process and its children (Beam's and Dask's workers, and the in-process "
            "server's threads); others': the rest of the machine meanwhile.",
            "",
            *[f"- {key}: {value}" for key, value in info.items()],
            "",
            f"## Data stage (`run_span_job`): {profile['data_images']}-image generated set",
            "",
            markdown_table(HEADER, data_lines),
            "",
            f"## Batch inference: {profile['infer_images']} image files, batches of {BATCH}",
            "",
            f"Model: untrained {model['architecture']}, {model['parameters']:,} parameters, "
            f"{model['image_size']} px input (inference cost does not depend on training). `petpipe infer` runs a "
            "whole Beam job per run (start-up, model load, atomic commit of the answers); `petpipe predict` is the "
            "client loop only, against a server that already has the model loaded and runs in this process.",
            "",
            markdown_table(HEADER, infer_lines),
            "",
            "## Reading",
            "",
            *reading(runs, rate, profile),
            "",
        ]
    )


def reading(runs: dict, rate: dict, profile: dict) -> list[str]:
    two, dask = rate[TWO_WORKERS] / rate[IN_PROCESS], rate[DASK] / rate[IN_PROCESS]
    infer_dask, predict_ = rate[INFER_DASK] / rate[INFER_LOCAL], rate[PREDICT] / rate[INFER_LOCAL]
    others = statistics.median(r["other_cores"] for rs in runs.values() for r in rs)
    compute_s = profile["infer_images"] / rate[PREDICT]  # the model's work, roughly: the warm server's time
    fixed = {name: median_run(runs[name], "seconds")["seconds"] - compute_s for name in (INFER_LOCAL, INFER_DASK)}
    faster = "faster" if dask > 1 else "slower"
    return [
        f"- **2 cores, shared.** Two workers can at best double a one-process rate, and only where one process does "
        f"not already keep both cores busy. Other processes used a median {others:.2f} cores during these runs, so "
        "the absolute rates are low and noisy (see min–max); the ratios, measured in alternating rounds, are the "
        "figures to read.",
        f"- **Data stage at {profile['data_images']} images**: 2 FnApiRunner workers ran at {two:.2f}× and Dask "
        f"(2 workers, {faster} than in-process) at {dask:.2f}× the in-process rate. At this size each job is "
        "dominated by fixed costs: the FnApiRunner starts 2 SDK worker processes that import TensorFlow in every "
        "job (docs/beam-runners.md: ~5 s more, crossover near 11k images on this machine), while the Dask workers "
        "are started once and keep TensorFlow imported between jobs. Neither shows parallel speed-up on 2 busy "
        "cores; this measures overheads, not reach.",
        f"- **Inference**: `petpipe infer` on Dask ran at {infer_dask:.2f}× the local run, `petpipe predict` "
        f"against a warm server at {predict_:.2f}×. Taking the server's time ({compute_s:.1f} s) as the model's "
        f"work, the rest of a job is about {fixed[INFER_LOCAL]:.1f} s locally and {fixed[INFER_DASK]:.1f} s on "
        "Dask: the local job builds a Beam job, loads the SavedModel and commits its output every time; the Dask "
        "workers load the model once per process and reuse it across jobs (pipeline/dask_infer.py), so on a warm "
        "cluster a job costs less. That is a warm-worker effect, not scaling: a first job on a fresh cluster pays "
        "the import and the load too, and the model itself already uses both cores through TensorFlow's threads.",
        "- For a few hundred images a running server answers fastest; `petpipe infer` pays off when the data set "
        "is large enough for its fixed cost to vanish, or when no server should be loaded. Real scale-out needs "
        "more cores or hosts: the loopback cluster shows Dask's overhead, and with workers on other machines the "
        "images and the model must be on shared storage (tests/pipeline/test_dask_runner.py runs the data stage "
        "across three hosts).",
    ]


def rows_of(results: dict) -> list[dict]:
    rows = []
    runs = results["runs"]
    for base, names in ((IN_PROCESS, list(DATA_VARIANTS)), (INFER_LOCAL, [INFER_LOCAL, INFER_DASK, PREDICT])):
        base_rate = median_run(runs[base], "images_per_s")["images_per_s"]
        for name in names:
            rate = median_run(runs[name], "images_per_s")["images_per_s"]
            stage = "data stage" if base == IN_PROCESS else "inference"
            rows.append(result_row(f"{stage}: {name}", rate, "images/s", rate / base_rate))
    return rows


def run(quick: bool, repeats: int | None = None, out: str = OUT) -> list[dict]:
    """For `python -m benchmarks`: measure, write the report, return the rows."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    info = machine_info("dask", "distributed", "grpcio")
    with tempfile.TemporaryDirectory(prefix="petpipe-scale-out-") as tmp:
        results = measure(quick, repeats, Path(tmp))
    text = report(results, info, quick, time.monotonic() - started)
    write_markdown_report(out, text)
    print(text)
    log(NAME, f"wrote {out}")
    return rows_of(results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="600 + 256 images, 2 rounds (< 5 min)")
    parser.add_argument("--repeats", type=int, help="timed rounds (default: 2 quick, 3 full)")
    parser.add_argument("--out", default=OUT, help=f"markdown report (default {os.path.relpath(OUT)})")
    args = parser.parse_args(argv)
    run(args.quick, args.repeats, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
