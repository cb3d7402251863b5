"""Fingerprints that key the cache: of input trees (names, sizes, modification times), of output trees (names and
sizes: they are written once, atomically), of single files (content), and of configuration sections.
Everything goes through components/fileio, so gs:// and s3:// paths work (and local paths need no TensorFlow)."""

from __future__ import annotations

import hashlib
import json
import posixpath

from components import fileio


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def of_value(value) -> str:
    """A configuration section (a dict), a list of fingerprints, ...: anything JSON can write."""
    return _digest(value)


def of_tree(root: str, with_times: bool = True) -> str:
    """Every file under `root`: relative name, size and (for inputs) modification time. A file or an absent path
    is fingerprinted as such."""
    if not fileio.exists(root):
        return _digest(["absent", root])
    if not fileio.isdir(root):
        size, mtime = fileio.size_and_mtime(root)
        return _digest([posixpath.basename(root), size, mtime if with_times else 0])
    entries = []
    # Symlinked directories are followed, as gfile's walk does (the fingerprints of earlier runs stay valid).
    for directory, _, files in fileio.walk(root, followlinks=True):
        for name in files:
            path = posixpath.join(directory, name)
            size, mtime = fileio.size_and_mtime(path)
            relative = path[len(root) :].lstrip("/")
            entries.append((relative, size, mtime if with_times else 0))
    return _digest(sorted(entries))


def of_file(path: str) -> str:
    """The content of one file (a model's weights)."""
    digest = hashlib.sha256()
    with fileio.open_binary(path) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
