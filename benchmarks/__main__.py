"""Every benchmark in one run: `python -m benchmarks [--quick] [--only NAME ...]` (`make bench` is --quick).

Each benchmark runs in its own interpreter (fresh TensorFlow state, its own peak memory) and returns rows
{measurement, value, unit, ratio, target, holds}; this prints one table and writes benchmarks/RESULTS.md with the
machine, the versions, the date, every figure with its ratio and each target's verdict, and the rows themselves
to benchmarks/RESULTS.json (`--render-only` writes the markdown again from them). Quick mode aims at < 5 min,
full mode at < 30 min on 2 cores. Ratios measured side by side in one run are what to compare across machines:
absolute times on a shared 2-core VM drift from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.common import machine_info

BENCHMARKS = {  # name → (module, what it answers)
    "preprocess": ("benchmarks.preprocess", "Beam data stage vs a plain Python loop, and how cost grows with size"),
    "input": ("benchmarks.input_pipeline", "is training input-bound? tf.data vs cached batches"),
    "compare": ("benchmarks.compare", "multi-head vs cascade: training time, memory, latency, accuracy"),
    "serving": ("benchmarks.serving", "gRPC/REST vs in-process latency; QPS with batching off and on"),
    "end_to_end": ("benchmarks.end_to_end", "petpipe run wall time per stage at two data sizes"),
    "scale_out": ("benchmarks.scale_out", "data stage and infer in-process, on 2 Beam workers and on Dask vs serve"),
}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "RESULTS.md")


def run_one(module: str, quick: bool) -> tuple[list[dict], float, str]:
    """(rows, seconds, error) of one benchmark, run in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        code = (
            "import json, sys; from importlib import import_module; "
            f"rows = import_module({module!r}).run({quick}); json.dump(rows, open({out!r}, 'w'), default=str)"
        )
        started = time.monotonic()
        env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, stdout=sys.stderr, check=False)
        seconds = time.monotonic() - started
        if done.returncode != 0 or not os.path.exists(out):
            return [], seconds, f"failed with exit code {done.returncode} (its output is above)"
        with open(out) as f:
            return json.load(f), seconds, ""


def _value(row: dict) -> str:
    value = row.get("value")
    if value is None:
        return "–"
    if not isinstance(value, float):
        return f"{value} {row.get('unit') or ''}".strip()
    text = f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return f"{text} {row.get('unit') or ''}".strip()


def _ratio(row: dict) -> str:
    ratio = row.get("ratio")
    if isinstance(ratio, float):
        return f"{ratio:.3g}×"
    return "" if ratio is None else str(ratio)


def _verdict(row: dict) -> str:
    if row.get("holds") is None:
        return ""
    return "holds" if row["holds"] else "MISSED"


def render(results: dict, info: dict, quick: bool, wall: float) -> tuple[str, str]:
    """(text table for the terminal, markdown for RESULTS.md)."""
    lines, md = (
        [],
        [
            "# Benchmark results",
            "",
            f"`python -m benchmarks{' --quick' if quick else ''}` — {'quick' if quick else 'full'} mode, "
            f"wall time {wall / 60:.1f} min. Medians of repetitions; ratios are measured side by side in the same run.",
            *(
                [
                    "",
                    "Quick mode runs small data sets (no 20k-image preprocess run, 3 training epochs): its verdicts "
                    "are indicative; the targets are judged in full mode (`make bench-full`).",
                ]
                if quick
                else []
            ),
            "",
            *[f"- {key}: {value}" for key, value in info.items()],
            "",
        ],
    )
    targets = [(name, row) for name, (rows, _, _) in results.items() for row in rows if row.get("holds") is not None]
    if targets:
        md += ["## Targets", "", "| benchmark | target | measured | ratio | verdict |", "|---|---|---|---|---|"]
        lines.append("TARGETS")
        for name, row in targets:
            target = row.get("target") or row["measurement"]
            md.append(f"| {name} | {target} | {row['measurement']}: {_value(row)} | {_ratio(row)} | {_verdict(row)} |")
            lines.append(
                f"  {_verdict(row):7} {name}: {target} — {row['measurement'][:60]}: {_value(row)} {_ratio(row)}"
            )
        md.append("")
    for name, (rows, seconds, error) in results.items():
        module, question = BENCHMARKS[name]
        md += [f"## {name}: {question}", "", f"`python -m {module}` — {seconds:.0f} s", ""]
        lines.append(f"\n{name} ({seconds:.0f} s): {question}")
        if error:
            md += [f"**{error}**", ""]
            lines.append(f"  {error}")
            continue
        md += ["| measurement | value | ratio | verdict |", "|---|---:|---|---|"]
        for row in rows:
            md.append(f"| {row['measurement']} | {_value(row)} | {_ratio(row)} | {_verdict(row)} |")
            lines.append(f"  {row['measurement'][:70]:70} {_value(row):>16}  {_ratio(row)} {_verdict(row)}")
        md.append("")
    return "\n".join(lines), "\n".join(md)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer repetitions (< 5 min)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--out", default=RESULTS, help=f"markdown output (default {os.path.relpath(RESULTS)})")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: write the markdown again from the rows saved next to it (<out>.json)",
    )
    args = parser.parse_args(argv)
    rows_file = os.path.splitext(args.out)[0] + ".json"
    if args.render_only:
        try:
            with open(rows_file) as f:
                saved = json.load(f)
            info, quick, wall = saved["info"], saved["quick"], saved["wall_s"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error(f"--render-only: cannot read the saved rows {rows_file} ({exc!r}); run the benchmarks first")
        results = {name: tuple(result) for name, result in saved["results"].items()}
    else:
        started = time.monotonic()
        info, quick = machine_info("grpcio"), args.quick
        results = {}
        for name in args.only or BENCHMARKS:
            print(f"== {name} ==", file=sys.stderr, flush=True)
            results[name] = run_one(BENCHMARKS[name][0], quick)
        wall = time.monotonic() - started
        with open(rows_file, "w") as f:  # every figure, machine-readable: for comparing runs, and --render-only
            json.dump({"info": info, "quick": quick, "wall_s": wall, "results": results}, f, indent=1)
    text, markdown = render(results, info, quick, wall)
    print(text)
    with open(args.out, "w") as f:
        f.write(markdown + "\n")
    print(f"\nwrote {args.out} and {rows_file} ({wall / 60:.1f} min)")
    return 1 if any(error for _, _, error in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
