"""What the benchmark scripts share: where they ran, CPU accounting, result rows and tables, medians, data sets.

* `machine_info(*packages)` — date, commit, CPU model and cores, memory, load, platform, Python and package versions;
* `CpuMeter` — wall time and CPU seconds of this process and of its child processes (psutil) over a block, and
  what the rest of the machine used meanwhile;
* `result_row`, `result_rows_markdown`, `result_rows_text`, `markdown_table`, `text_table`, `format_number` —
  the rows {measurement, value, unit, ratio, target, holds} every benchmark returns, and tables of them;
* `median_run`, `paired_ratio` — medians of repeated runs, keeping a real run's detail columns;
* `generated_pets`, `subset_of_pets` — data sets made by the project's own generator (datasources.synthetic_pets),
  cached on disk across runs;
* `write_markdown_report`, `log`.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata as metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_PACKAGES = ("tensorflow", "keras", "apache-beam", "numpy")


def log(name: str, text: str) -> None:
    """Progress on stderr (stdout carries the results), prefixed with the benchmark's name."""
    print(f"[{name}] {text}", file=sys.stderr, flush=True)


# --- where it ran ---------------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return platform.processor() or "?"


def _commit() -> str:
    with contextlib.suppress(OSError):
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() or "?"
    return "?"


def machine_info(*packages: str) -> dict[str, str]:
    """What every benchmark report states about where it ran: date, commit, CPU model and cores, memory, load,
    platform, Python, and the installed versions of tensorflow, keras, apache-beam, numpy and `packages`
    (distribution names, e.g. "grpcio")."""
    memory = psutil.virtual_memory()
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": _commit(),
        "cpu": f"{psutil.cpu_count()} logical CPUs ({psutil.cpu_count(logical=False) or '?'} physical, "
        f"{len(os.sched_getaffinity(0))} usable), {_cpu_model()}",
        "memory": f"{memory.total / 2**30:.1f} GiB ({memory.available / 2**30:.1f} GiB available at the start)",
        "load average (1/5/15 min)": " / ".join(f"{x:.2f}" for x in psutil.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    for package in dict.fromkeys((*BASE_PACKAGES, *packages)):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "not installed"
    return info


# --- CPU accounting -------------------------------------------------------------------------------------------------
def _tree_cpu(process: psutil.Process) -> float:
    """CPU seconds of `process` and of the children it has waited for (theirs include their own waited-for ones)."""
    t = process.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _descendants_cpu() -> dict[tuple[int, float], float]:
    """{(pid, create time): CPU seconds} of every live descendant of this process (e.g. Beam's SDK workers)."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found[child.pid, child.create_time()] = _tree_cpu(child)
    return found


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy since boot (everything but idle and iowait; steal included)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


class CpuMeter:
    """Wall time and CPU over a block: of this process (`own_cpu`), of its child processes (`children_cpu`: those
    that ended and were waited for during the block, fully, plus those still alive at its end, since its start),
    and of the whole machine; `other_cores` is what the rest of the machine used per wall second.

        with CpuMeter() as meter:
            ...
        meter.seconds, meter.our_cores, meter.other_cores

    or `meter = CpuMeter().start()` … `meter.stop()` (e.g. from a Keras callback). A child that is orphaned instead
    of being waited for is missed after the moment it is orphaned.
    """

    def start(self) -> CpuMeter:
        self._me = psutil.Process()
        self._descendants = _descendants_cpu()
        times, self._busy = self._me.cpu_times(), _machine_busy()
        self._own, self._reaped = times.user + times.system, times.children_user + times.children_system
        self._start = time.perf_counter()
        return self

    def stop(self) -> CpuMeter:
        self.seconds = time.perf_counter() - self._start
        now, busy = _descendants_cpu(), _machine_busy()
        times = self._me.cpu_times()
        self.own_cpu = times.user + times.system - self._own
        reaped = times.children_user + times.children_system - self._reaped
        # A child alive at the start and waited for since: its CPU before the start is in `reaped` too.
        reaped -= sum(cpu for key, cpu in self._descendants.items() if key not in now)
        alive = sum(cpu - self._descendants.get(key, 0.0) for key, cpu in now.items())
        self.children_cpu = max(0.0, reaped) + alive
        self.machine_cpu = busy - self._busy
        return self

    __enter__ = start

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    @property
    def cpu(self) -> float:
        """CPU seconds of this process and its children."""
        return self.own_cpu + self.children_cpu

    @property
    def our_cores(self) -> float:
        return self.cpu / self.seconds

    @property
    def children_cores(self) -> float:
        return self.children_cpu / self.seconds

    @property
    def other_cores(self) -> float:
        """Cores the rest of the machine used meanwhile (other jobs, CI): on 2 cores, what we could not have."""
        return max(0.0, self.machine_cpu - self.cpu) / self.seconds


# --- medians --------------------------------------------------------------------------------------------------------
def median_run(runs: Sequence[dict], key: str) -> dict:
    """A copy of the run whose `key` is the median (the lower middle for an even count), so its other columns are
    one real run's, with `key` set to the median over all runs and `all_<key>` listing every run's value."""
    ordered = sorted(runs, key=lambda r: r[key])
    middle = dict(ordered[(len(ordered) - 1) // 2])
    middle[key] = statistics.median(r[key] for r in runs)
    middle[f"all_{key}"] = [r[key] for r in runs]
    return middle


def paired_ratio(numerators: Iterable[float], denominators: Iterable[float]) -> float:
    """Median of a / b over pairs measured back to back (a slow phase of a shared machine hits both): steadier than
    the ratio of the two medians."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


# --- result rows and tables -----------------------------------------------------------------------------------------
def result_row(measurement: str, value, unit: str, ratio=None, target: str | None = None, holds=None) -> dict:
    """One result row as `python -m benchmarks` collects them."""
    return {"measurement": measurement, "value": value, "unit": unit, "ratio": ratio, "target": target, "holds": holds}


def format_number(value) -> str:
    """'–' for None/NaN; 1,234 from 1000 on, 123.4 from 100, 1.23 below."""
    if value is None or value != value:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, int | float):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"


RESULT_HEADER = ("measurement", "value", "unit", "ratio", "target", "verdict")


def _result_cells(row: dict) -> list[str]:
    ratio = row["ratio"]
    if isinstance(ratio, int | float):
        ratio = f"{ratio:.3f}×" if row["target"] else f"{ratio:.2f}×"
    holds = "–" if row["holds"] is None else ("holds" if row["holds"] else "MISSED")
    return [
        row["measurement"],
        format_number(row["value"]),
        row["unit"] or "",
        ratio or "–",
        row["target"] or "–",
        holds,
    ]


def markdown_table(header: Sequence[str], lines: Iterable[Sequence], align: str | None = None) -> str:
    """A markdown table; `align` one letter per column, "l" or "r" (default: first column left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join(["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(map(str, c)) + " |" for c in lines)])


def text_table(header: Sequence[str], lines: Iterable[Sequence], align: str | None = None) -> str:
    """The same as plain text for a terminal: padded columns and a rule under the header."""
    cells = [list(map(str, header)), *(list(map(str, c)) for c in lines)]
    align = align or "l" + "r" * (len(header) - 1)
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    out = [
        "  ".join(c[i].rjust(widths[i]) if align[i] == "r" else c[i].ljust(widths[i]) for i in range(len(header)))
        for c in cells
    ]
    out.insert(1, "-" * max(map(len, out)))
    return "\n".join(line.rstrip() for line in out)


def result_rows_markdown(rows: Iterable[dict]) -> str:
    return markdown_table(RESULT_HEADER, (_result_cells(r) for r in rows), "lrlrll")


def result_rows_text(rows: Iterable[dict]) -> str:
    return text_table(RESULT_HEADER, (_result_cells(r) for r in rows), "lrlrll")


def write_markdown_report(path: str, text: str) -> None:
    """Write a benchmark's markdown report to `path`, creating its directory (benchmarks/results/ on a fresh clone)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# --- data sets ------------------------------------------------------------------------------------------------------
def _pets_dir(cache_dir: Path, per_breed: int, seed: int) -> Path:
    return Path(cache_dir) / f"pets-{per_breed}-per-breed-seed{seed}"


def _make_pets(job: tuple[str, int, int]) -> dict[str, int]:
    from datasources.synthetic_pets import write_synthetic_pets

    out, per_breed, seed = job
    return write_synthetic_pets(out, per_breed=per_breed, seed=seed)


def generated_pets(cache_dir: Path, per_breeds: Iterable[int], seed: int = 0, processes: int = 2) -> dict[int, Path]:
    """{per_breed: data dir} of the project's generated data set (datasources.synthetic_pets.write_synthetic_pets)
    at each size, kept under `cache_dir` and reused when a previous call completed it; missing sets are generated
    in `processes` processes, one set each (the biggest first)."""
    import multiprocessing

    dirs = {n: _pets_dir(cache_dir, n, seed) for n in sorted(set(per_breeds), reverse=True)}
    missing = [n for n, d in dirs.items() if not (d / ".complete").exists()]
    for n in missing:
        shutil.rmtree(dirs[n], ignore_errors=True)
    if missing:
        start = time.perf_counter()
        jobs = [(str(dirs[n]), n, seed) for n in missing]
        if len(jobs) == 1 or processes <= 1:
            counts = [_make_pets(job) for job in jobs]
        else:
            with multiprocessing.get_context("spawn").Pool(min(processes, len(jobs))) as pool:
                counts = pool.map(_make_pets, jobs, chunksize=1)
        for n, count in zip(missing, counts, strict=True):
            (dirs[n] / ".complete").write_text(json.dumps(count))
        log("data", f"generated per_breed {missing} in {time.perf_counter() - start:.0f} s under {cache_dir}")
    return dirs


def subset_of_pets(source: Path, out: Path, trainval: int, test: int) -> Path:
    """A smaller Oxford-layout set holding the first `trainval` and `test` lines of a generated set's annotation
    files (the images hard-linked); kept like generated_pets'."""
    from datasources.synthetic_pets import LIST_HEADER

    if (out / ".complete").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    (out / "annotations").mkdir()
    kept = {}
    for name, count in (("trainval.txt", trainval), ("test.txt", test)):
        kept[name] = (source / "annotations" / name).read_text().splitlines(keepends=True)[:count]
        (out / "annotations" / name).write_text("".join(kept[name]))
    lines = sorted(kept["trainval.txt"] + kept["test.txt"], key=lambda line: (int(line.split()[1]), line))
    (out / "annotations" / "list.txt").write_text(LIST_HEADER + "".join(lines))
    for line in lines:
        image = line.split()[0] + ".jpg"
        os.link(source / "images" / image, out / "images" / image)
    (out / ".complete").write_text(json.dumps({"trainval": trainval, "test": test}))
    return out
