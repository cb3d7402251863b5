"""`petpipe run` end to end: wall time per stage on the embedded data set at two sizes, and the "nothing to do"
re-run.

Each size runs the real CLI (`petpipe run`, the console script of this interpreter's environment) in a subprocess
on a fresh temp work dir, so the total includes interpreter start, imports and teardown:

    petpipe run --work-dir TMP --set data.per_breed=N [--set train.epochs=2] --set bless.lower_bounds=

The absolute lower bounds of the gate are switched off (bless.lower_bounds empty) so that every stage runs even
when a small, briefly trained model would not pass them: the benchmark measures cost, not accuracy (the first run
in a fresh work dir has no served model to regress against, so it is blessed and exported). Per stage, the seconds
are RunSummary.seconds as the CLI prints them ("seconds:" line, 0.1 s resolution): make-data, ingest+preprocess,
train, evaluate, export, smoke-query. "in run_pipeline" is the run's own start-to-finish time from the run store
(<work dir>/metadata.sqlite, runs.started/finished); "outside the stages" = total wall − sum of the stages (process
start, imports, config, lock, run store, the nothing-to-do check, teardown).

Then the same command again on the same work dir: it must end quickly with "petpipe run: nothing to do"
(RunSummary.outcome): data and settings are unchanged and the pushed version is still serving.

Sizes: quick per_breed 10 and 20 with train.epochs=2; full per_breed 30 and 60 (the default) with the default
epochs. The ratio column is the larger size over the smaller (twice the images): how each stage's cost grows.

    python -m benchmarks.end_to_end [--quick] [--out benchmarks/results/end_to_end.md] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

from benchmarks.common import (
    CpuMeter,
    log,
    machine_info,
    markdown_table,
    result_row,
    result_rows_markdown,
    result_rows_text,
    text_table,
    write_markdown_report,
)

NAME = "end_to_end"
STAGES = ("make-data", "imports", "ingest+preprocess", "train", "evaluate", "export", "smoke-query")
SIZES = {"quick": ((10, 20), ["train.epochs=2"]), "full": ((30, 60), [])}
COMMON = ["bless.lower_bounds="]  # every stage runs, whatever a small model's accuracy
NOTHING_TO_DO = "petpipe run: nothing to do"
TIMEOUT = 1800
RESOLUTION = 0.3  # stage seconds (six, and "imports" when something is computed), each printed rounded to 0.1 s


def petpipe_command() -> list[str]:
    """The `petpipe` console script next to this interpreter, or the same entry point through -m."""
    script = os.path.join(os.path.dirname(sys.executable), "petpipe")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "pipeline.cli"]


def run_cli(work_dir: str, overrides: list[str]) -> dict:
    """One `petpipe run` in a subprocess: wall seconds, exit code, stage seconds, outcome line, run-store time."""
    command = [*petpipe_command(), "run", "--work-dir", work_dir]
    command += [part for override in overrides for part in ("--set", override)]
    with CpuMeter() as meter:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-20:])
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}):\n{tail}\n{done.stdout}")
    seconds = {}
    for line in done.stdout.splitlines():
        if line.startswith("seconds:"):
            seconds = {stage: float(s) for stage, s in re.findall(r"(\S+) (\d+(?:\.\d+)?)", line[len("seconds:") :])}
    outcome = next((line for line in done.stdout.splitlines() if line.startswith("petpipe run:")), "")
    epochs = len(re.findall(r"epoch \d+/\d+:", done.stderr))
    return {
        "wall": meter.seconds,
        "cpu": meter.children_cpu,
        "others": meter.other_cores,
        "epochs": epochs,
        "seconds": seconds,
        "outcome": outcome,
        "in_run": last_run_seconds(work_dir),
    }


def last_run_seconds(work_dir: str) -> float | None:
    """finished − started of the newest run in the work dir's run store."""
    path = os.path.join(work_dir, "metadata.sqlite")
    if not os.path.exists(path):
        return None
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT started, finished FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    return row[1] - row[0] if row and row[1] is not None else None


def measure(quick: bool, keep: bool = False) -> dict:
    sizes, extra = SIZES["quick" if quick else "full"]
    overrides_base = [*extra, *COMMON]
    results = {}
    for per_breed in sizes:
        work_dir = tempfile.mkdtemp(prefix=f"petpipe-e2e-{per_breed}-")
        try:
            overrides = [f"data.per_breed={per_breed}", *overrides_base]
            log(NAME, f"per_breed {per_breed}: petpipe run in {work_dir}")
            first = run_cli(work_dir, overrides)
            log(
                NAME,
                f"per_breed {per_breed}: {first['wall']:.1f} s, {first['outcome']}, {first['epochs']} epochs, "
                f"others {first['others']:.2f} cores; again on the same work dir",
            )
            again = run_cli(work_dir, overrides)
            log(NAME, f"per_breed {per_breed}: re-run {again['wall']:.1f} s, {again['outcome']}")
            results[per_breed] = {"first": first, "again": again, "work_dir": work_dir}
        finally:
            if not keep:
                shutil.rmtree(work_dir, ignore_errors=True)
    return {"sizes": sizes, "overrides": overrides_base, "results": results}


def rows_of(m: dict) -> list[dict]:
    small, large = m["sizes"]
    a, b = m["results"][small], m["results"][large]
    rows = []

    def pair(name: str, unit: str, get) -> None:
        x, y = get(a), get(b)
        rows.append(result_row(f"{name}, per_breed {small}", x, unit))
        rows.append(result_row(f"{name}, per_breed {large}", y, unit, _ratio(x, y)))

    pair("total wall time", "s", lambda r: r["first"]["wall"])
    pair("CPU time of the run", "CPU s", lambda r: r["first"]["cpu"])
    pair("in run_pipeline (run store)", "s", lambda r: r["first"]["in_run"])
    for stage in STAGES:
        pair(stage, "s", lambda r, stage=stage: r["first"]["seconds"].get(stage))
    pair("in the run, between the stages (± 0.3)", "s", lambda r: _between(r["first"]))
    pair("process start, imports, exit", "s", lambda r: _process(r["first"]))
    for per_breed, r in ((small, a), (large, b)):
        again = r["again"]
        ok = again["outcome"].startswith(NOTHING_TO_DO)
        rows.append(
            result_row(
                f"re-run (nothing to do), per_breed {per_breed}",
                again["wall"],
                "s",
                again["wall"] / r["first"]["wall"],
                "outcome 'nothing to do'",
                ok,
            )
        )
        rows.append(result_row(f"re-run: in run_pipeline, per_breed {per_breed}", again["in_run"], "s"))
    others = max(r[k]["others"] for r in (a, b) for k in ("first", "again"))
    rows.append(
        result_row(
            "other processes' CPU during the runs (max)", others, "cores", None, "≤ 0.3 (undisturbed)", others <= 0.3
        )
    )
    return rows


def _ratio(x: float | None, y: float | None) -> float | None:
    """y / x, or None when either is missing or x is within the stage seconds' rounding (0.3 s) of zero."""
    return y / x if x is not None and y is not None and abs(x) >= RESOLUTION else None


def _between(result: dict) -> float | None:
    """Run-store time not in any timed stage: fingerprints, the nothing-to-do check, picking test images, ...
    (± 0.3 s: the six stage seconds are printed rounded to 0.1 s)"""
    return result["in_run"] - sum(result["seconds"].values()) if result["in_run"] is not None else None


def _process(result: dict) -> float | None:
    """Wall time outside run_pipeline: interpreter start, imports, config, lock, exit."""
    return result["wall"] - result["in_run"] if result["in_run"] is not None else None


def run(quick: bool) -> list[dict]:
    """Rows for `python -m benchmarks`."""
    return rows_of(measure(quick))


def stage_table(m: dict, markdown: bool) -> str:
    """One line per stage: seconds at each size and the larger / smaller ratio."""
    small, large = m["sizes"]
    a, b = m["results"][small]["first"], m["results"][large]["first"]
    images = {n: n * 37 for n in m["sizes"]}
    header = ["stage", f"per_breed {small} (s)", f"per_breed {large} (s)", f"{large} / {small}"]
    lines = []
    for stage in STAGES:
        x, y = a["seconds"].get(stage), b["seconds"].get(stage)
        lines.append(
            [stage, _seconds_text(x), _seconds_text(y), "–" if _ratio(x, y) is None else f"{_ratio(x, y):.2f}×"]
        )
    ra, rb = m["results"][small]["again"], m["results"][large]["again"]
    for name, x, y in (
        ("in the run, between the stages (± 0.3)", _between(a), _between(b)),
        ("process start, imports, exit", _process(a), _process(b)),
        ("total wall", a["wall"], b["wall"]),
        ("re-run (nothing to do): total wall", ra["wall"], rb["wall"]),
        ("re-run: in run_pipeline", ra["in_run"], rb["in_run"]),
        ("CPU seconds of the run (all threads)", a["cpu"], b["cpu"]),
    ):
        lines.append(
            [name, _seconds_text(x), _seconds_text(y), "–" if _ratio(x, y) is None else f"{_ratio(x, y):.2f}×"]
        )
    lines.append(["(images generated)", str(images[small]), str(images[large]), f"{large / small:.2f}×"])
    lines.append(["(epochs trained)", str(a["epochs"]), str(b["epochs"]), "–"])
    lines.append(["(others' CPU during the run, cores)", f"{a['others']:.2f}", f"{b['others']:.2f}", "–"])
    return (markdown_table if markdown else text_table)(header, lines)


def _seconds_text(value) -> str:
    return "–" if value is None or value != value else f"{value:.1f}"


def write_markdown(path: str, m: dict, rows: list[dict], info: dict, wall: float, command: str) -> None:
    small, large = m["sizes"]
    outcomes = "; ".join(
        f"per_breed {n}: `{r['first']['outcome']}` then `{r['again']['outcome'][:90]}`" for n, r in m["results"].items()
    )
    text = f"""# `petpipe run` end-to-end benchmark

`{command}` — {info["date"]}, wall time {wall:.0f} s.

Per stage (RunSummary.seconds), per_breed {small} vs {large}:

{stage_table(m, markdown=True)}

All rows (the ratio of a per_breed {large} row is over its per_breed {small} row; of a re-run row, over that size's
first run):

{result_rows_markdown(rows)}

Outcomes: {outcomes}.

## Setup

{chr(10).join(f"- {k}: {v}" for k, v in info.items())}
- command: `{" ".join(os.path.basename(c) for c in petpipe_command())} run --work-dir TMP --set data.per_breed=N`
  {" ".join(f"`--set {o}`" for o in m["overrides"])}, each size on a fresh temp work dir (Beam DirectRunner,
  in-process FnApiRunner; no Beam flags), then the same command again on the same work dir
- bless.lower_bounds is empty so every stage runs whatever the accuracy (the first run in a fresh work dir has
  no served model, so the no-regression check passes); stage seconds are the CLI's printed RunSummary.seconds
  (0.1 s resolution); "in run_pipeline" is runs.finished − runs.started in the work dir's run store; "in the
  run, between the stages" = in run_pipeline − the six stages (± 0.3 s from the rounding), "process start,
  imports, exit" = total wall − in run_pipeline
- CPU seconds: the subprocess's user + system time, and its children's (psutil); others' CPU: the machine's
  busy time during the run minus ours, per wall second
"""
    write_markdown_report(path, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="per_breed 10 and 20, train.epochs=2 (< 2 min)")
    parser.add_argument("--out", default=f"benchmarks/results/{NAME}.md", help="markdown output file")
    parser.add_argument("--keep", action="store_true", help="keep the temp work dirs (their paths are logged)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    info = machine_info()
    measured = measure(args.quick, args.keep)
    rows = rows_of(measured)
    wall = time.perf_counter() - start
    print(stage_table(measured, markdown=False))
    print()
    print(result_rows_text(rows))
    print(f"\nwall time {wall:.0f} s")
    command = "python -m benchmarks.end_to_end" + " --quick" * args.quick
    command += f" --out {args.out}" if args.out != parser.get_default("out") else ""
    write_markdown(args.out, measured, rows, info, wall, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
