"""File access for the components through tf.io.gfile, so that data, model and output roots can be local paths or
URLs of any filesystem TensorFlow has: gs://, s3:// (with tensorflow-io), hdfs://, and ram:// (in memory, which
the tests use to prove nothing goes around gfile).

Local paths behave exactly as with the os functions these replace:
  * gfile's tf.errors are re-raised as the OSError open() would raise (FileNotFoundError, PermissionError,
    IsADirectoryError, ... with the same strerror), so callers keep catching OSError;
  * listdir() and walk() use os.listdir / os.walk for local paths: gfile decodes names as UTF-8 (one file name
    that is not UTF-8 would make the whole listing fail instead of being reported), follows symlinked
    directories, and reports unlistable directories to walk's onerror only when they do not exist;
  * absolute() makes only local paths absolute (os.path.abspath would turn "gs://b/x" into "<cwd>/gs:/b/x").

Object stores (gs://, s3://) have no directories and no atomic rename: see components/export.py for what that means
for claiming a model version.

TensorFlow is imported only when a URL is used (or a gfile error is handled): local paths go straight to the os
functions, so a run that only checks its caches ("nothing to do") does not spend seconds importing TensorFlow.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from collections.abc import Callable, Iterator


class _TensorFlowOnFirstUse:
    """`tf.x` imports TensorFlow at the first attribute used (an `except tf.errors.OpError` clause is evaluated only
    when an exception reaches it)."""

    def __getattr__(self, name: str):
        import tensorflow

        return getattr(tensorflow, name)


tf = _TensorFlowOnFirstUse()


def is_remote(path: str) -> bool:
    """True for a filesystem URL (gs://, s3://, ram://, file://, ...), False for a plain local path."""
    return "://" in os.fspath(path)


def absolute(path: str) -> str:
    """A local path made absolute; a URL unchanged."""
    return path if is_remote(path) else os.path.abspath(path)


def os_error(exc, path: str) -> OSError:
    """The OSError for a gfile error (a tf.errors.OpError) on `path`: FileNotFoundError, PermissionError,
    FileExistsError or IsADirectoryError with the usual strerror, else OSError(EIO) carrying gfile's message."""
    errnos = {
        tf.errors.NotFoundError: errno.ENOENT,
        tf.errors.PermissionDeniedError: errno.EACCES,
        tf.errors.AlreadyExistsError: errno.EEXIST,
    }
    code = errnos.get(type(exc))
    message = exc.message
    prefix = f"{path}; "
    detail = message[len(prefix) :] if message.startswith(prefix) else message
    if code is None and detail == os.strerror(errno.EISDIR):
        code = errno.EISDIR
    if code is None:
        return OSError(errno.EIO, detail, path)
    return OSError(code, os.strerror(code), path)  # OSError(errno, ...) builds the matching subclass


@contextlib.contextmanager
def os_errors(path: str):
    """Re-raise gfile's tf.errors.OpError inside the block as the matching OSError (see os_error)."""
    try:
        yield
    except tf.errors.OpError as exc:
        raise os_error(exc, path) from exc


def read_bytes(path: str) -> bytes:
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    with os_errors(path), tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    if not is_remote(path):
        with open(path, "wb") as f:
            f.write(data)
        return
    with os_errors(path), tf.io.gfile.GFile(path, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    """`text` as UTF-8 at `path`."""
    write_bytes(path, text.encode("utf-8"))


def replace(src: str, dst: str) -> None:
    """os.replace, through gfile for URLs: atomic for local paths (rename(2)); a copy then delete on object stores."""
    if not is_remote(src) and not is_remote(dst):
        os.replace(src, dst)
        return
    with os_errors(src):
        tf.io.gfile.rename(src, dst, overwrite=True)


class _GFileReader(io.RawIOBase):
    """A gfile file as a raw binary stream, so io.BufferedReader / io.TextIOWrapper can wrap it like open()."""

    def __init__(self, path: str):
        super().__init__()
        self.name = path
        with os_errors(path):
            if tf.io.gfile.isdir(path):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            self._file = tf.io.gfile.GFile(path, "rb")
            self._file.read(0)  # opens now: a missing file fails here, as open() would, not at the first read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with os_errors(self.name):
            data = self._file.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed and hasattr(self, "_file"):
            self._file.close()
        super().close()


def open_binary(path: str) -> io.BufferedIOBase:
    """open(path, "rb"), through gfile for URLs."""
    return open(path, "rb") if not is_remote(path) else io.BufferedReader(_GFileReader(path))


def open_text(path: str, encoding: str = "utf-8", errors: str = "strict", newline: str | None = None) -> io.TextIOBase:
    """open(path, encoding=..., errors=..., newline=...) for reading, through gfile; streams (decodes in chunks
    as open() does), and raises OSError at once when the file cannot be opened."""
    return io.TextIOWrapper(io.BufferedReader(_GFileReader(path)), encoding=encoding, errors=errors, newline=newline)


def makedirs(path: str) -> None:
    """os.makedirs(path, exist_ok=True), through gfile for URLs."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
        return
    with os_errors(path):
        tf.io.gfile.makedirs(path)


def exists(path: str) -> bool:
    return os.path.exists(path) if not is_remote(path) else tf.io.gfile.exists(path)


def isdir(path: str) -> bool:
    return os.path.isdir(path) if not is_remote(path) else tf.io.gfile.isdir(path)


def isfile(path: str) -> bool:
    return exists(path) and not isdir(path)


def getsize(path: str) -> int:
    return size_and_mtime(path)[0]


def size_and_mtime(path: str) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of a file, as gfile's stat gives them: for local files gfile keeps
    whole seconds of the modification time, and so does this (fingerprints made either way stay equal)."""
    if not is_remote(path):
        stat = os.stat(path)
        return stat.st_size, stat.st_mtime_ns // 10**9 * 10**9
    with os_errors(path):
        stat = tf.io.gfile.stat(path)
    return stat.length, stat.mtime_nsec


def rmtree(path: str, ignore_errors: bool = False) -> None:
    try:
        with os_errors(path):
            tf.io.gfile.rmtree(path)
    except OSError:
        if not ignore_errors:
            raise


def listdir(path: str) -> list[str]:
    """Entry names of a directory (os.listdir for local paths, whose names need not be UTF-8); OSError if it
    cannot be listed."""
    if not is_remote(path):
        return os.listdir(path)
    with os_errors(path):
        return [name.rstrip("/") for name in tf.io.gfile.listdir(path)]


def walk(
    top: str, onerror: Callable[[OSError], None] | None = None, followlinks: bool = False
) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk (top-down; sorting the yielded directory list in place orders the descent); URLs through gfile,
    with an unlistable directory passed to `onerror` as an OSError and skipped (gfile always follows links)."""
    if not is_remote(top):
        yield from os.walk(top, onerror=onerror, followlinks=followlinks)
        return
    try:
        names = listdir(top)
        with os_errors(top):
            dirnames = [name for name in names if tf.io.gfile.isdir(os.path.join(top, name))]
            # Some filesystems (ram://) list by bare name prefix: "a" also lists "a.b/x" as ".b"; drop those.
            filenames = [n for n in names if n not in dirnames and tf.io.gfile.exists(os.path.join(top, n))]
    except OSError as exc:
        if onerror is not None:
            onerror(exc)
        return
    yield top, dirnames, filenames
    for name in dirnames:
        yield from walk(os.path.join(top, name), onerror, followlinks)
