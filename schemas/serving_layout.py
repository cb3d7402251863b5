"""What TF Serving reads from a model base path: which children are versions (as its FileSystemStoragePathSource
decides), and where in a version the warmup requests lie.

A child is a version when its whole name parses with absl::SimpleAtoi into an int64: ASCII whitespace around the
number and one leading sign are allowed, leading zeros too ("00000123" is version 123), nothing else ("1.5", "v2",
"12abc", "0x10" and names past int64 are not versions and are skipped without an error). The version is loaded from
the directory as named. When two names give one number, TF Serving indexes the listing in sorted order and the
later name wins ("123" over "0123"), logging a warning; so do we.
"""

from __future__ import annotations

import logging
import os
import re

log = logging.getLogger("petpipe.serve")
# Replayed before a version takes traffic: a TFRecord file of PredictionLog records (saved_model_warmup_util.cc).
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

# absl::ascii_isspace: space, \t, \n, \v, \f, \r.
_SIMPLE_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def parse_version(name: str) -> int | None:
    """The version number a directory name stands for, or None when it is not a version."""
    match = _SIMPLE_ATOI.fullmatch(name.rstrip("/"))
    if not match:
        return None
    number = int(match[1])
    return number if INT64_MIN <= number <= INT64_MAX else None


def version_dirs(names) -> dict[int, str]:
    """version → directory name, for the names of a base path's children (duplicates resolved as TF Serving)."""
    found: dict[int, str] = {}
    for name in sorted(n.rstrip("/") for n in names):
        version = parse_version(name)
        if version is None:
            continue
        if version in found:
            log.warning(
                "Duplicate version directories detected. Version %d will be loaded from %s, %s will be ignored.",
                version,
                name,
                found[version],
            )
        found[version] = name
    return dict(sorted(found.items()))
