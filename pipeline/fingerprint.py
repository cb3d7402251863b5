"""Fingerprints that key the cache: of input trees (names, sizes, modification times), of output trees (names and
sizes: they are written once, atomically), of single files (content), and of configuration sections.
Everything goes through tf.io.gfile, so gs:// and s3:// paths work."""

from __future__ import annotations

import hashlib
import json
import posixpath

import tensorflow as tf


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def of_value(value) -> str:
    """A configuration section (a dict), a list of fingerprints, ...: anything JSON can write."""
    return _digest(value)


def of_tree(root: str, with_times: bool = True) -> str:
    """Every file under `root`: relative name, size and (for inputs) modification time. A file or an absent path
    is fingerprinted as such."""
    if not tf.io.gfile.exists(root):
        return _digest(["absent", root])
    if not tf.io.gfile.isdir(root):
        stat = tf.io.gfile.stat(root)
        return _digest([posixpath.basename(root), stat.length, stat.mtime_nsec if with_times else 0])
    entries = []
    for directory, _, files in tf.io.gfile.walk(root):
        for name in files:
            path = posixpath.join(directory, name)
            stat = tf.io.gfile.stat(path)
            relative = path[len(root) :].lstrip("/")
            entries.append((relative, stat.length, stat.mtime_nsec if with_times else 0))
    return _digest(sorted(entries))


def of_file(path: str) -> str:
    """The content of one file (a model's weights)."""
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
