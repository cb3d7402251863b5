"""The issue-15 job against a baseline commit, alternating, on the same data: `petpipe run` cold, then again with
nothing to do.

The job (the one measured against TFX 1.21): `petpipe make-data --out D --per-breed N [--photo]`, then

    petpipe run --data-dir D --work-dir FRESH --set train.epochs=2 --set train.filters=16,32,64
        --set train.augment=false --set train.class_weights=false --set train.dropout=0
        --set train.learning_rate=0.001 --set train.early_stopping_patience=0 --set export.warmup_requests=0
        --set bless.lower_bounds=species_accuracy>=0.5

The baseline runs from a detached git worktree of `--baseline` (default ac92d88, the code the issue measured) with
this interpreter; each repetition runs baseline then current on fresh work dirs, then each again on its work dir
(nothing to do). Per run: wall seconds, the CLI's stage seconds ("seconds:" line), start-up and teardown (wall −
the stages), the process's peak RSS (wait4: the largest resident set of the process; Beam's in-process runner has no
child processes), test accuracies from the summary. Medians and min–max over the repetitions; ratios current /
baseline of the medians.

    python -m benchmarks.versus_baseline [--quick] [--repeats N] [--baseline REF] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import REPO, log, machine_info, markdown_table, write_markdown_report

NAME = "versus_baseline"
OUT = os.path.join(REPO, "benchmarks", "results", "versus-baseline.md")
DATA_CACHE = os.path.join(tempfile.gettempdir(), "petpipe-bench-data")
JOB = [
    "train.epochs=2",
    "train.filters=16,32,64",
    "train.augment=false",
    "train.class_weights=false",
    "train.dropout=0",
    "train.learning_rate=0.001",
    "train.early_stopping_patience=0",
    "export.warmup_requests=0",
    "bless.lower_bounds=species_accuracy>=0.5",
]
STAGES = ("imports", "ingest+preprocess", "train", "evaluate", "export", "smoke-query")
PROFILES = {True: {"images": (2000,), "styles": ("small", "photo"), "repeats": 1},
            False: {"images": (2000, 10000), "styles": ("small", "photo"), "repeats": 3}}  # fmt: skip
# The targets: current / baseline at 10,000 images (≤), and peak RSS not above the baseline's.
TARGETS = {"cold wall": 0.5, "ingest+preprocess": 0.35, "train": 0.6, "start-up and teardown (with imports)": 0.5,
           "nothing-to-do re-run": 0.3, "peak RSS": 1.0}  # fmt: skip
TIMEOUT = 3600


def generated_data(images: int, style: str) -> str:
    """The embedded data set of about `images` images (37 breeds) in `style`, generated once per machine."""
    per_breed = max(2, round(images / 37))
    path = os.path.join(DATA_CACHE, f"pets-{per_breed}-{style}")
    if not os.path.exists(os.path.join(path, ".complete")):
        shutil.rmtree(path, ignore_errors=True)
        log(NAME, f"generating {per_breed * 37} {style} images into {path}")
        argv = [sys.executable, "-m", "pipeline.cli", "make-data", "--out", path, "--per-breed", str(per_breed)]
        subprocess.run(argv + ["--photo"] * (style == "photo"), cwd=REPO, check=True, capture_output=True)
        open(os.path.join(path, ".complete"), "w").close()
    return path


def baseline_tree(ref: str) -> str:
    """A detached worktree of `ref` in a temp directory (removed by remove_tree)."""
    path = tempfile.mkdtemp(prefix=f"petpipe-{ref[:12]}-")
    subprocess.run(["git", "worktree", "add", "--detach", "--force", path, ref], cwd=REPO, check=True,
                   capture_output=True)  # fmt: skip
    return path


def remove_tree(path: str) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", path], cwd=REPO, check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def run_once(tree: str, data_dir: str, work_dir: str) -> dict:
    """One `petpipe run` of the job with the code in `tree`: wall, stage seconds, peak RSS, outcome, accuracies."""
    argv = [sys.executable, "-m", "pipeline.cli", "run", "--data-dir", data_dir, "--work-dir", work_dir]
    argv += [part for setting in JOB for part in ("--set", setting)]
    env = {**os.environ, "PYTHONPATH": tree, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        process = subprocess.Popen(argv, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if process.returncode not in (0, 5):  # 5: not blessed, still a whole run
        raise SystemExit(f"{' '.join(argv)} (in {tree}) exited {process.returncode}:\n{text[-3000:]}")
    seconds = {}
    for line in text.splitlines():
        if line.startswith("seconds:"):
            seconds = {stage: float(s) for stage, s in re.findall(r"(\S+) (\d+(?:\.\d+)?)", line[len("seconds:") :])}
    accuracy = re.search(r"species accuracy ([\d.]+), breed top-1 accuracy ([\d.]+)", text)
    return {
        "wall": wall,
        "seconds": seconds,
        # Comparable with a baseline that printed no "imports" entry: the imports count as start-up.
        "startup": wall - sum(value for stage, value in seconds.items() if stage != "imports"),
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "nothing_to_do": "petpipe run: nothing to do" in text,
        "species_accuracy": float(accuracy.group(1)) if accuracy else None,
        "breed_accuracy": float(accuracy.group(2)) if accuracy else None,
    }


def measure(profile: dict, repeats: int, ref: str) -> dict:
    trees = {"baseline": baseline_tree(ref), "current": REPO}
    results: dict = {}
    try:
        for style in profile["styles"]:
            for images in profile["images"]:
                data_dir = generated_data(images, style)
                runs = results.setdefault((style, images), {name: [] for name in trees})
                for repeat in range(repeats):
                    for name, tree in trees.items():
                        work_dir = tempfile.mkdtemp(prefix=f"petpipe-vs-{name}-")
                        try:
                            cold, again = run_once(tree, data_dir, work_dir), run_once(tree, data_dir, work_dir)
                        finally:
                            shutil.rmtree(work_dir, ignore_errors=True)
                        runs[name].append({"cold": cold, "again": again})
                        log(NAME, f"{style} {images}: {name} #{repeat + 1}: cold {cold['wall']:.1f} s "
                                  f"{cold['seconds']}, re-run {again['wall']:.1f} s")  # fmt: skip
    finally:
        remove_tree(trees["baseline"])
    return results


def _measures(run: dict) -> dict[str, float | None]:
    cold, again = run["cold"], run["again"]
    values = {"cold wall": cold["wall"], "start-up and teardown (with imports)": cold["startup"]}
    values.update({stage: cold["seconds"].get(stage) for stage in STAGES})
    values.update({"nothing-to-do re-run": again["wall"], "peak RSS": cold["peak_rss_mb"]})
    values.update({"species accuracy": cold["species_accuracy"], "breed top-1 accuracy": cold["breed_accuracy"]})
    return values


def _summary(values: list[float | None]) -> tuple[float | None, str]:
    present = [v for v in values if v is not None]
    if not present:
        return None, "–"
    return statistics.median(present), f"{statistics.median(present):.2f} ({min(present):.2f}–{max(present):.2f})"


def table(style: str, images: int, runs: dict) -> str:
    rows = []
    names = list(_measures(runs["baseline"][0]))
    for measure_name in names:
        base, base_text = _summary([_measures(r)[measure_name] for r in runs["baseline"]])
        cur, cur_text = _summary([_measures(r)[measure_name] for r in runs["current"]])
        ratio = f"{cur / base:.2f}×" if base and cur is not None else "–"
        target = TARGETS.get(measure_name)
        verdict = "–"
        if target is not None and base and cur is not None and images >= 10000:
            verdict = f"≤ {target}×: {'met' if cur / base <= target else 'MISSED'}"
        unit = " MB" if measure_name == "peak RSS" else ("" if "accuracy" in measure_name else " s")
        rows.append([measure_name + unit, base_text, cur_text, ratio, verdict])
    ok = all(r["again"]["nothing_to_do"] for name in runs for r in runs[name])
    header = ["measure", "baseline median (min–max)", "current median (min–max)", "current / baseline", "target"]
    return (
        f"### {images:,} images, {style} style\n\n{markdown_table(header, rows)}\n\n"
        f"Every re-run ended with 'nothing to do': {'yes' if ok else 'NO'}."
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 images of each style, one repetition")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions (default 3; quick 1)")
    parser.add_argument("--baseline", default="ac92d88", help="git ref of the baseline (default ac92d88)")
    parser.add_argument("--out", default=OUT, help=f"markdown report (default {os.path.relpath(OUT, REPO)})")
    args = parser.parse_args(argv)
    profile = PROFILES[args.quick]
    repeats = args.repeats or profile["repeats"]
    info, start = machine_info(), time.perf_counter()
    results = measure(profile, repeats, args.baseline)
    wall = time.perf_counter() - start
    tables = "\n\n".join(table(style, images, runs) for (style, images), runs in results.items())
    print(tables)
    command = "python -m benchmarks.versus_baseline" + " --quick" * args.quick
    text = f"""# The issue-15 job: current code against {args.baseline}

`{command}` — {info["date"]}, wall time {wall / 60:.0f} min, {repeats} repetition(s), baseline then current in each.
Job: `petpipe run --data-dir D --work-dir FRESH` {" ".join(f"`--set {s}`" for s in JOB)}, then the same command
again on the same work dir (nothing to do). Stage seconds are the CLI's (0.1 s resolution); start-up and teardown
= wall − the stages other than "imports" (the current code times TensorFlow's and Beam's imports as an entry of
their own, "imports", which the baseline counted outside its stages); peak RSS is the run process's (wait4).
Targets (issue 15) apply to the 10,000-image job.

{tables}

## Setup

{chr(10).join(f"- {k}: {v}" for k, v in info.items())}
"""
    write_markdown_report(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
