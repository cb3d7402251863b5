"""The data stage's config sections: where the data comes from (ingest, sources), what counts as an anomaly
(statistics validation), and how images become TFRecords (preprocess). Light on purpose: the CLI validates a
config without importing Beam or TensorFlow; pipeline/config.py composes the sections."""

from __future__ import annotations

from dataclasses import dataclass

SOURCES = ("oxford", "folders", "csv", "tfds")
IMAGE_STYLES = ("small", "photo")  # of the generated data set: datasources/synthetic_pets.py, photo_pets.py


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from, how it is split, and how much bad data a run tolerates."""

    source: str = "oxford"  # oxford (raw layout) | folders (root/<species>/<breed>/*) | csv (path,species,breed) | tfds
    data_dir: str | None = None  # oxford/folders: a directory; csv: the manifest; None: the embedded data set
    tfds_name: str = "oxford_iiit_pet"
    tfds_data_dir: str | None = None  # a TFDS data_dir where tfds_name has been prepared (never downloaded here)
    tfds_splits: tuple[str, ...] = ("train", "test")  # TFDS train → our train/eval, TFDS test → our test
    spans: str = "latest"  # with span-<N>/ subdirectories: latest | all | N | N-M
    hierarchy: str | None = None  # label hierarchy JSON; None: schemas/hierarchy.json (Oxford-IIIT Pet)
    per_breed: int = 60  # images per breed when generating
    image_style: str = "small"  # when generating: small (about 150 px) | photo (about 500×375, 20–100 KB JPEGs)
    seed: int = 0
    eval_fraction: float = 0.1  # share of trainval that goes to the eval split, chosen by a hash of the name
    test_fraction: float = 0.3  # for sources without a test list (folders, csv): share hashed into test
    max_bad_fraction: float = 0.05  # quarantined / records above this fails the run (after writing the quarantine)
    min_image_side: int = 32  # images whose shorter side is smaller are quarantined
    max_image_pixels: int = 50_000_000  # larger declared sizes are rejected from the header (decompression bombs)

    def problems(self) -> list[str]:
        rules = [
            (self.source in SOURCES, f"data.source must be one of {', '.join(SOURCES)}; got {self.source!r}"),
            (self.source != "tfds" or bool(self.tfds_data_dir), "data.source=tfds needs --tfds-data-dir"),
            (self.source in ("oxford", "tfds") or bool(self.data_dir), "this data.source needs --data-dir"),
            (self.per_breed >= 2, "data.per_breed must be at least 2"),
            (
                self.image_style in IMAGE_STYLES,
                f"data.image_style must be one of {', '.join(IMAGE_STYLES)}; got {self.image_style!r}",
            ),
            (0.0 <= self.eval_fraction < 1.0, "data.eval_fraction must be in [0, 1)"),
            (0.0 <= self.test_fraction < 1.0, "data.test_fraction must be in [0, 1)"),
            (self.eval_fraction + self.test_fraction < 1.0, "data.eval_fraction + test_fraction must be < 1"),
            (0.0 <= self.max_bad_fraction <= 1.0, "data.max_bad_fraction must be in [0, 1]"),
            (self.min_image_side >= 1, "data.min_image_side must be at least 1"),
            (self.max_image_pixels >= 1, "data.max_image_pixels must be at least 1"),
        ]
        return [message for ok, message in rules if not ok]


@dataclass(frozen=True)
class ValidationConfig:
    """Statistics are always computed; these say what counts as an anomaly and which anomalies stop the run."""

    drift_linf_threshold: float = 0.02  # L-infinity distance of breed distributions vs the previous run
    severe: tuple[str, ...] = ("schema_violation", "missing_feature", "empty_split", "missing_class")

    def problems(self) -> list[str]:
        return [] if self.drift_linf_threshold > 0 else ["validation.drift_linf_threshold must be positive"]


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: int = 64  # square side in pixels; aspect is kept by letterboxing (see components/preprocess.py)
    jpeg_quality: int = 95
    num_shards: int = 2  # TFRecord shards per split

    def problems(self) -> list[str]:
        rules = [
            (8 <= self.image_size <= 1024, "preprocess.image_size must be in [8, 1024]"),
            (1 <= self.jpeg_quality <= 100, "preprocess.jpeg_quality must be in [1, 100]"),
            (self.num_shards >= 1, "preprocess.num_shards must be at least 1"),
        ]
        return [message for ok, message in rules if not ok]
