"""What data validation costs: the Beam data stage with and without it, in one run on the same images.

"With" is the real stage: header checks of every image (components.image_check) and the statistics combiner
(components.statistics). "Without" swaps those two for pass-throughs — what the walking skeleton did.
Runs alternate, so machine noise hits both alike; the median images/s of each is reported with their ratio.

    python -m benchmarks.validation_cost [--per-breed 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import time
from unittest import mock

import apache_beam as beam

from benchmarks.common import markdown_table


class _NoStatistics(beam.PTransform):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def expand(self, items):
        return items | beam.Filter(lambda _: False)


def _unchecked(data, *limits):
    from components.image_check import ImageInfo

    return data, ImageInfo("JPEG", 0, 0, "RGB", False)


def _time_stage(config, data_dir, hierarchy, schema, validate: bool) -> tuple[float, int]:
    from pipeline.stages.data import run_span_job

    patches = contextlib.ExitStack()
    if not validate:
        patches.enter_context(mock.patch("components.preprocess.check_image", _unchecked))
        patches.enter_context(mock.patch("components.statistics.ComputeStatistics", _NoStatistics))
    with patches:
        start = time.perf_counter()
        result = run_span_job(config, data_dir, 0, hierarchy, schema, [])
        seconds = time.perf_counter() - start
    return seconds, sum(result.written.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-breed", type=int, default=60, help="images per breed to generate (37 breeds)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from datasources.synthetic_pets import write_synthetic_pets
    from pipeline.config import load_config
    from schemas import load_hierarchy, schema_for

    hierarchy = load_hierarchy()
    schema = schema_for(hierarchy)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_pets(f"{tmp}/data", per_breed=args.per_breed, seed=0)
        config = load_config(None, [f"work_dir={tmp}/work"])
        _time_stage(config, f"{tmp}/data", hierarchy, schema, True)  # warm-up: imports, TF graph building
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):
            for validate in (False, True):
                seconds, images = _time_stage(config, f"{tmp}/data", hierarchy, schema, validate)
                rates[validate].append(images / seconds)
    with_v, without_v = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"images: {images}, repeats: {args.repeats} (alternating), Beam FnApiRunner in-memory")
    lines = [
        ["without validation", f"{without_v:.0f}"],
        ["with validation (image checks + statistics)", f"{with_v:.0f}"],
    ]
    print(markdown_table(["data stage", "images/s (median)"], lines))
    print(f"ratio with/without: {with_v / without_v:.3f} (target ≥ 0.9)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
