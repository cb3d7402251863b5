"""The run store: what every run did, on SQLite (the standard library's sqlite3), readable by people.

Tables (TFX's ML Metadata, reduced to what a person asks of a retraining job):
  runs        one row per `petpipe run`: start, end, outcome, exit code, message, config hash
  executions  one row per component execution: component, cache key, inputs, config hash, outputs, status,
              timings; status 'cached' when a run reused an earlier execution's outputs
  artifacts   URI, kind (span_tfrecords, model, blessing, pushed_version), content fingerprint, span, record
              counts, metrics
  events      lineage: execution → artifact, as input or output

A completed execution's cache key (its inputs' fingerprints + its config) is how a later run finds outputs it can
reuse. The store is a local file (SQLite needs POSIX locking; with a gs:// or s3:// pipeline root, keep the store
on a local or network disk: `store_path`). A corrupt store is moved aside with a warning and a new one begins:
the data, models and serving directory are the truth, the store only saves work and tells the story.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import time
from dataclasses import dataclass

log = logging.getLogger("petpipe")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL, outcome TEXT NOT NULL, exit_code INTEGER,
  message TEXT, config_hash TEXT, host TEXT, pid INTEGER);
CREATE TABLE IF NOT EXISTS executions (
  id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id), component TEXT NOT NULL,
  cache_key TEXT NOT NULL, inputs TEXT, config_hash TEXT, outputs TEXT, status TEXT NOT NULL,
  started REAL NOT NULL, finished REAL, reused_execution INTEGER REFERENCES executions(id));
CREATE INDEX IF NOT EXISTS executions_by_key ON executions(component, cache_key, status);
CREATE TABLE IF NOT EXISTS artifacts (
  id INTEGER PRIMARY KEY, kind TEXT NOT NULL, uri TEXT NOT NULL, fingerprint TEXT, span INTEGER,
  record_counts TEXT, metrics TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  execution_id INTEGER NOT NULL REFERENCES executions(id), artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
  direction TEXT NOT NULL CHECK (direction IN ('input', 'output')));
"""


@dataclass(frozen=True)
class Artifact:
    id: int
    kind: str
    uri: str
    fingerprint: str | None
    span: int | None
    record_counts: dict | None
    metrics: dict | None


def _json(value) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def _load(text: str | None):
    return None if text is None else json.loads(text)


class RunStore:
    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            self.db = self._open(path)
        except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
            aside = f"{path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(path, aside)
            log.warning("run store %s is unreadable (%s); moved aside to %s, starting a new store", path, exc, aside)
            self.db = self._open(path)

    @staticmethod
    def _open(path: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=30, isolation_level=None)  # autocommit; explicit transactions below
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys = ON")
        db.executescript(SCHEMA)
        db.execute("SELECT count(*) FROM runs").fetchone()  # reads a page: a damaged file fails here
        return db

    def close(self) -> None:
        self.db.close()

    # --- runs -------------------------------------------------------------------------------------------------
    def start_run(self, config_hash: str) -> int:
        cursor = self.db.execute(
            "INSERT INTO runs (started, outcome, config_hash, host, pid) VALUES (?, 'running', ?, ?, ?)",
            (time.time(), config_hash, socket.gethostname(), os.getpid()),
        )
        return cursor.lastrowid

    def finish_run(self, run_id: int, outcome: str, exit_code: int, message: str = "") -> None:
        self.db.execute(
            "UPDATE runs SET finished = ?, outcome = ?, exit_code = ?, message = ? WHERE id = ?",
            (time.time(), outcome, exit_code, message, run_id),
        )

    def close_abandoned_runs(self) -> list[int]:
        """Runs still 'running' belong to processes that died (the caller holds the pipeline lock): mark them."""
        rows = self.db.execute("SELECT id FROM runs WHERE outcome = 'running'").fetchall()
        for row in rows:
            self.db.execute(
                "UPDATE runs SET outcome = 'killed', message = 'ended without finishing (killed or crashed)' "
                "WHERE id = ?",
                (row["id"],),
            )
            self.db.execute(
                "UPDATE executions SET status = 'killed' WHERE run_id = ? AND status = 'running'", (row["id"],)
            )
        return [row["id"] for row in rows]

    # --- executions and artifacts -------------------------------------------------------------------------------
    def start_execution(self, run_id: int, component: str, cache_key: str, inputs: dict, config_hash: str) -> int:
        cursor = self.db.execute(
            "INSERT INTO executions (run_id, component, cache_key, inputs, config_hash, status, started) "
            "VALUES (?, ?, ?, ?, ?, 'running', ?)",
            (run_id, component, cache_key, _json(inputs), config_hash, time.time()),
        )
        return cursor.lastrowid

    def finish_execution(
        self, execution_id: int, status: str, outputs: dict | None = None, reused: int | None = None
    ) -> None:
        self.db.execute(
            "UPDATE executions SET status = ?, outputs = ?, finished = ?, reused_execution = ? WHERE id = ?",
            (status, _json(outputs), time.time(), reused, execution_id),
        )

    def completed(self, component: str, cache_key: str) -> sqlite3.Row | None:
        """The latest completed execution of `component` with this cache key (its outputs are reusable)."""
        return self.db.execute(
            "SELECT * FROM executions WHERE component = ? AND cache_key = ? AND status = 'complete' "
            "ORDER BY id DESC LIMIT 1",
            (component, cache_key),
        ).fetchone()

    def add_artifact(
        self,
        kind: str,
        uri: str,
        fingerprint: str | None = None,
        span: int | None = None,
        record_counts: dict | None = None,
        metrics: dict | None = None,
    ) -> int:
        """The artifact with this kind, URI and fingerprint (created once, found again by later runs)."""
        row = self.db.execute(
            "SELECT id FROM artifacts WHERE kind = ? AND uri = ? AND fingerprint IS ?", (kind, uri, fingerprint)
        ).fetchone()
        if row is not None:
            return row["id"]
        cursor = self.db.execute(
            "INSERT INTO artifacts (kind, uri, fingerprint, span, record_counts, metrics, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, uri, fingerprint, span, _json(record_counts), _json(metrics), time.time()),
        )
        return cursor.lastrowid

    def link(self, execution_id: int, artifact_id: int, direction: str) -> None:
        self.db.execute(
            "INSERT INTO events (execution_id, artifact_id, direction) VALUES (?, ?, ?)",
            (execution_id, artifact_id, direction),
        )

    def artifact(self, artifact_id: int) -> Artifact:
        row = self.db.execute("SELECT * FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()
        return Artifact(
            row["id"], row["kind"], row["uri"], row["fingerprint"], row["span"],
            _load(row["record_counts"]), _load(row["metrics"]),
        )  # fmt: skip

    # --- reading, for people ------------------------------------------------------------------------------------
    def runs(self, limit: int = 50) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()[::-1]

    def executions_of(self, run_id: int) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM executions WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()

    def pushed_version(self, version: int, model_base_path: str) -> Artifact | None:
        uri = os.path.join(model_base_path, str(version))
        row = self.db.execute(
            "SELECT id FROM artifacts WHERE kind = 'pushed_version' AND uri = ? ORDER BY id DESC LIMIT 1", (uri,)
        ).fetchone()
        return self.artifact(row["id"]) if row else None

    def producer(self, artifact_id: int) -> sqlite3.Row | None:
        """The execution that output this artifact first (later cached executions only reused it)."""
        return self.db.execute(
            "SELECT e.* FROM executions e JOIN events v ON v.execution_id = e.id "
            "WHERE v.artifact_id = ? AND v.direction = 'output' ORDER BY e.id LIMIT 1",
            (artifact_id,),
        ).fetchone()

    def inputs_of(self, execution_id: int) -> list[Artifact]:
        rows = self.db.execute(
            "SELECT artifact_id FROM events WHERE execution_id = ? AND direction = 'input' ORDER BY artifact_id",
            (execution_id,),
        ).fetchall()
        return [self.artifact(r["artifact_id"]) for r in rows]

    def lineage(self, version: int, model_base_path: str) -> list[tuple[int, Artifact, sqlite3.Row | None]]:
        """The pushed version and, walking back through producers, every artifact it came from:
        [(depth, artifact, producing execution)], depth 0 = the pushed version."""
        pushed = self.pushed_version(version, model_base_path)
        if pushed is None:
            return []
        out, seen, frontier = [], set(), [(0, pushed)]
        while frontier:
            depth, artifact = frontier.pop(0)
            if artifact.id in seen:
                continue
            seen.add(artifact.id)
            execution = self.producer(artifact.id)
            out.append((depth, artifact, execution))
            if execution is not None:
                frontier.extend((depth + 1, a) for a in self.inputs_of(execution["id"]))
        return out


def format_history(store: RunStore, limit: int = 20) -> str:
    """Runs as a table, each with its component executions."""
    lines = [f"{'run':>4}  {'started':19}  {'seconds':>7}  {'outcome':14}  {'exit':>4}  message"]
    for run in store.runs(limit):
        seconds = f"{run['finished'] - run['started']:.1f}" if run["finished"] else "-"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["started"]))
        exit_code = "" if run["exit_code"] is None else str(run["exit_code"])
        lines.append(
            f"{run['id']:>4}  {started}  {seconds:>7}  {run['outcome']:14}  {exit_code:>4}  {run['message'] or ''}"
        )
        for execution in store.executions_of(run["id"]):
            outputs = _load(execution["outputs"]) or {}
            summary = outputs.get("summary", "")
            lines.append(f"{'':>6}{execution['component']:10} {execution['status']:9} {summary}")
    return "\n".join(lines)


def format_lineage(store: RunStore, version: int, model_base_path: str) -> str:
    chain = store.lineage(version, model_base_path)
    if not chain:
        return ""
    lines = [f"{'artifact':16}  {'uri':60}  {'made by':24}  details"]
    for depth, artifact, execution in chain:
        made_by = f"run {execution['run_id']} {execution['component']}" if execution else "-"
        details = []
        if artifact.span is not None:
            details.append(f"span {artifact.span}")
        if artifact.record_counts:
            details.append("records " + ", ".join(f"{k} {v}" for k, v in artifact.record_counts.items()))
        if artifact.metrics:
            details.append(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in artifact.metrics.items()))  # fmt: skip
        name = "  " * depth + artifact.kind
        lines.append(f"{name:16}  {artifact.uri:60}  {made_by:24}  {'; '.join(details)}")
    return "\n".join(lines)


class Execution:
    """What a component execution produced, filled in by the component while it runs."""

    def __init__(self, execution_id: int | None):
        self.id = execution_id
        self.status = "complete"
        self.outputs: dict = {}
        self.output_artifacts: list[int] = []
        self.reused: int | None = None

    def reuse(self, previous: sqlite3.Row) -> dict:
        """Mark this execution as served from `previous` (a completed one with the same cache key)."""
        self.status, self.reused = "cached", previous["id"]
        self.outputs = _load(previous["outputs"]) or {}
        return self.outputs


class Tracker:
    """Records one run's component executions and lineage in a RunStore (or nothing, with store=None)."""

    def __init__(self, store: RunStore | None = None, run_id: int | None = None):
        self.store, self.run_id = store, run_id

    def completed(self, component: str, cache_key: str) -> sqlite3.Row | None:
        return self.store.completed(component, cache_key) if self.store else None

    def artifact(self, kind: str, uri: str, **fields) -> int | None:
        return self.store.add_artifact(kind, uri, **fields) if self.store else None

    @contextlib.contextmanager
    def execution(self, component: str, cache_key: str, inputs: dict, config_hash: str, input_artifacts=()):
        if self.store is None:
            yield Execution(None)
            return
        execution = Execution(self.store.start_execution(self.run_id, component, cache_key, inputs, config_hash))
        for artifact_id in input_artifacts:
            if artifact_id is not None:
                self.store.link(execution.id, artifact_id, "input")
        try:
            yield execution
        except BaseException as exc:
            summary = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            self.store.finish_execution(execution.id, "failed", {"summary": summary})
            raise
        self.store.finish_execution(execution.id, execution.status, execution.outputs, execution.reused)
        for artifact_id in execution.output_artifacts:
            if artifact_id is not None:
                self.store.link(execution.id, artifact_id, "output")
