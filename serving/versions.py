"""Version discovery and policy, as TF Serving's file system storage path source and its version policies decide.

Under a model's base path a child is a version when its name parses as an int64, "00000123" included
(schemas/serving_layout.py); anything else, e.g. an exporter's staging directory, is skipped. The model's
version policy picks the aspired versions among them; a version that failed to load is retried as
--max_num_load_retries and --load_retry_interval_micros say.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import tensorflow as tf

from schemas.serving_layout import version_dirs


@dataclass(frozen=True)
class LoadRetry:
    """TF Serving's --max_num_load_retries and --load_retry_interval_micros (defaults 5 and one minute)."""

    max_num_load_retries: int = 5
    interval_seconds: float = 60.0
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)  # a seam: tests advance their own

    def allows(self, failed_attempts: int, last_failure: float) -> bool:
        """Whether a version may be loaded (again) after `failed_attempts` failed loads, the last at clock()
        `last_failure`: it may have been half-written, so it is retried up to max_num_load_retries times,
        interval_seconds apart; then it stays END until a config reload."""
        if failed_attempts == 0:
            return True
        return failed_attempts <= self.max_num_load_retries and self.clock() - last_failure >= self.interval_seconds


def aspired_versions(entry, versions: list[int]) -> list[int]:
    """The versions a model's version policy wants loaded, of those on disk (ascending): `latest { num_versions:
    N }` (default N=1), `all`, or `specific { versions: ... }`."""
    policy = entry.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return list(versions)
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in versions if v in wanted]
    count = policy.latest.num_versions if choice == "latest" else 1
    return list(versions[-count:])


def versions_on_disk(base_path: str) -> dict[int, str]:
    """version → directory name under a base path (schemas/serving_layout.py has TF Serving's rules)."""
    if not tf.io.gfile.isdir(base_path):
        return {}
    return version_dirs(tf.io.gfile.listdir(base_path))
