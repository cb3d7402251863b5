"""Scripts that measure; never run by the test suite."""

from __future__ import annotations


def machine_info(*packages: str) -> dict[str, str]:
    """What every benchmark report states about where it ran: date, CPUs, load, platform, Python, and the
    installed versions of `packages` (distribution names, e.g. "tensorflow", "apache-beam")."""
    import contextlib
    import datetime
    import importlib.metadata as metadata
    import os
    import platform

    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": f"{os.cpu_count()} logical CPUs ({len(os.sched_getaffinity(0))} usable), {model}",
        "load average (1/5/15 min)": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    for package in packages:
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "not installed"
    return info


def write_report(path: str, text: str) -> None:
    """Write a benchmark's markdown report, creating its directory (benchmarks/results/ on a fresh clone)."""
    import os

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
