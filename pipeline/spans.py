"""Spans (TFX's {SPAN} convention): which `span-<N>/` inputs exist, and the record of successfully ingested spans
in `<work_dir>/spans.json` — what the trainer reads. SpanResult is the data stage's output artifact."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field

from common.errors import ConfigError, DataError
from components import fileio

SPAN_DIR = re.compile(r"^span-(\d+)$")
SPANS_FILE = "spans.json"


@dataclass
class SpanResult:
    span: int
    tfrecord_dir: str
    records: dict[str, int]  # distinct records per split
    written: dict[str, int]
    quarantined: dict[str, int]
    reasons: dict[str, int]
    unannotated_images: int = 0
    ignored_files: int = 0
    duplicate_lines: int = 0
    anomalies: list[str] = field(default_factory=list)

    @property
    def bad_fraction(self) -> float:
        return sum(self.quarantined.values()) / max(1, sum(self.records.values()))


def available_spans(input_base: str) -> list[int]:
    """Span numbers of the `span-<N>` subdirectories of `input_base`; [] when it has none (or is a file)."""
    if not fileio.isdir(input_base):
        return []
    return sorted(int(m.group(1)) for name in fileio.listdir(input_base) if (m := SPAN_DIR.match(name.rstrip("/"))))


def select_spans(available: list[int], spec: str) -> list[int]:
    """latest | all | N | N-M → the spans to ingest, checked against what exists."""
    spec = spec.strip().lower()
    if spec == "latest":
        return available[-1:]
    if spec == "all":
        return list(available)
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", spec)
    if not match:
        raise ConfigError(f"data.spans: expected latest, all, N or N-M; got {spec!r}")
    low, high = int(match.group(1)), int(match.group(2) or match.group(1))
    wanted = [s for s in available if low <= s <= high]
    if not wanted:
        raise DataError(f"data.spans={spec}: no span-<N> directory in that range (available: {available})")
    return wanted


def load_spans(work_dir: str) -> dict[int, dict]:
    path = os.path.join(work_dir, SPANS_FILE)
    if not fileio.isfile(path):
        return {}
    return {int(k): v for k, v in read_json(path).items()}


def read_json(path: str):
    return json.loads(fileio.read_bytes(path))


def _save_spans(work_dir: str, spans: dict[int, dict]) -> None:
    tmp = os.path.join(work_dir, SPANS_FILE + ".tmp")
    fileio.write_text(tmp, json.dumps({str(k): v for k, v in sorted(spans.items())}, indent=2))
    fileio.replace(tmp, os.path.join(work_dir, SPANS_FILE))


def record_span(work_dir: str, result: SpanResult, source: str) -> None:
    spans = load_spans(work_dir)
    spans[result.span] = {"source": source, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **asdict(result)}
    _save_spans(work_dir, spans)


def forget_span(work_dir: str, span: int) -> None:
    """Its output is about to be replaced: until the new one passes its checks, the span is not trainable."""
    spans = load_spans(work_dir)
    if spans.pop(span, None) is not None:
        _save_spans(work_dir, spans)


def span_window(work_dir: str, window: int) -> list[str]:
    """TFRecord directories of the last `window` successfully ingested spans (oldest first)."""
    spans = load_spans(work_dir)
    if not spans:
        raise DataError(f"{os.path.join(work_dir, SPANS_FILE)}: no ingested span to train on")
    return [spans[s]["tfrecord_dir"] for s in sorted(spans)[-window:]]
