"""One run at a time per pipeline root: an exclusive flock on `<work_dir>/.petpipe.lock`.

flock is released by the kernel when its holder dies, however it dies (SIGKILL, OOM, power loss of a local disk),
so a lock left by a dead process never blocks the next run: stale-lock detection comes for free, and the file's
contents (pid, host, start time) only serve the messages. The lock needs a POSIX file system under the work dir;
for a gs:// or s3:// root, point `lock_path` at a local or NFS path, or let the scheduler forbid overlap (a
Kubernetes CronJob's concurrencyPolicy: Forbid).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from common.errors import PetpipeError

LOCK_FILE = ".petpipe.lock"


class LockedError(PetpipeError):
    """Another run holds the pipeline root."""

    exit_code = 6


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PipelineLock:
    def __init__(self, path: str):
        self.path = path
        self._file = None
        self.previous: dict | None = None  # what the last holder wrote, if it never released the file cleanly

    def acquire(self) -> PipelineLock:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 — held open for the lock's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(handle)
            handle.close()
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
            raise LockedError(
                f"{self.path}: another petpipe run holds this pipeline root (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, since {since}); not starting a second one"
            ) from None
        self.previous = self._read(handle) or None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}))
        handle.flush()
        self._file = handle
        return self

    @staticmethod
    def _read(handle) -> dict:
        handle.seek(0)
        try:
            return json.loads(handle.read() or "{}")
        except ValueError:
            return {}

    def stale_holder(self) -> str | None:
        """A message about the previous holder if it died holding the lock (it never cleared the file)."""
        previous = self.previous
        if not previous or previous.get("host") != socket.gethostname():
            return None
        pid = previous.get("pid")
        if pid and pid != os.getpid() and not _pid_alive(pid):
            return f"the previous run (pid {pid}) ended without releasing {self.path}; recovered its lock"
        return None

    def release(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()  # a clean release leaves an empty file: no "stale" report next time
            self._file.flush()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> PipelineLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
