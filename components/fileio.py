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
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from collections.abc import Callable, Iterator

import tensorflow as tf


def is_remote(path: str) -> bool:
    """True for a filesystem URL (gs://, s3://, ram://, file://, ...), False for a plain local path."""
    return "://" in os.fspath(path)


def absolute(path: str) -> str:
    """A local path made absolute; a URL unchanged."""
    return path if is_remote(path) else os.path.abspath(path)


_ERRNO = {
    tf.errors.NotFoundError: errno.ENOENT,
    tf.errors.PermissionDeniedError: errno.EACCES,
    tf.errors.AlreadyExistsError: errno.EEXIST,
}


def os_error(exc: tf.errors.OpError, path: str) -> OSError:
    """The OSError for a gfile error on `path`: FileNotFoundError, PermissionError, FileExistsError or
    IsADirectoryError with the usual strerror, else OSError(EIO) carrying gfile's message."""
    code = _ERRNO.get(type(exc))
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
    with os_errors(path), tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    with os_errors(path), tf.io.gfile.GFile(path, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    """`text` as UTF-8 at `path`."""
    write_bytes(path, text.encode("utf-8"))


def replace(src: str, dst: str) -> None:
    """os.replace through gfile: atomic for local paths (rename(2)); a copy then delete on object stores."""
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


def open_text(path: str, encoding: str = "utf-8", errors: str = "strict", newline: str | None = None) -> io.TextIOBase:
    """open(path, encoding=..., errors=..., newline=...) for reading, through gfile; streams (decodes in chunks
    as open() does), and raises OSError at once when the file cannot be opened."""
    return io.TextIOWrapper(io.BufferedReader(_GFileReader(path)), encoding=encoding, errors=errors, newline=newline)


def isfile(path: str) -> bool:
    return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def getsize(path: str) -> int:
    with os_errors(path):
        return tf.io.gfile.stat(path).length


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


def walk(top: str, onerror: Callable[[OSError], None] | None = None) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk (top-down; sorting the yielded directory list in place orders the descent); URLs through gfile,
    with an unlistable directory passed to `onerror` as an OSError and skipped."""
    if not is_remote(top):
        yield from os.walk(top, onerror=onerror)
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
        yield from walk(os.path.join(top, name), onerror)
