"""Where a model's base path may point: plain local paths and file:// URLs, or URLs of other file systems
(gs://, s3://, ram://, ...), and the check that a configured base path stays under the allowed roots.

Local paths are compared with symlinks and '..' resolved; other URLs as written, their '..' segments collapsed.
(components/fileio.is_remote asks another question — is it a URL at all, file:// included.)
"""

from __future__ import annotations

import os
import posixpath

from serving.status import invalid


def is_non_local_url(path: str) -> bool:
    """True for a URL of a file system other than the local one (gs://, s3://, ram://, ...); False for a local
    path or a file:// URL, which os.path can resolve."""
    return "://" in path and not path.startswith("file://")


def resolved(path: str) -> str:
    """A path as the file system will reach it: local paths (and file:// URLs) with symlinks and '..' resolved;
    remote URLs (gs://, s3://, ...) as written, their '..' segments collapsed."""
    if "\x00" in path:
        raise ValueError("path contains a NUL byte")
    if path.startswith("file://"):
        path = path[len("file://") :]
    if is_non_local_url(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}"
    return os.path.realpath(path)


def parent(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_non_local_url(path) else os.path.dirname(os.path.abspath(path))


def is_inside(path: str, root: str) -> bool:
    path, root = resolved(path), resolved(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def absolute_base_path(path: str) -> str:
    """A `--model_base_path` as the config keeps it: other file systems' URLs as given, the rest made absolute."""
    return path if is_non_local_url(path) else os.path.abspath(path)


def check_base_path(name: str, base_path: str, allowed_roots: tuple[str, ...]) -> None:
    """INVALID_ARGUMENT unless a model's base path is absolute (or another file system's URL), free of NUL bytes
    and under one of the allowed roots."""
    if "\x00" in base_path:
        raise invalid(f"model {name}: base_path contains a NUL byte")
    if not is_non_local_url(base_path) and not os.path.isabs(base_path.removeprefix("file://")):
        raise invalid(f"model {name}: base_path must be absolute, got {base_path!r}")
    if not any(is_inside(base_path, root) for root in allowed_roots):
        raise invalid(
            f"model {name}: base_path {base_path} is outside the allowed roots "
            f"{list(allowed_roots)} (--allowed_base_path_roots)"
        )
