"""One frozen, typed configuration for every stage: defaults here, overridden by a TOML file, then by flags.

Each stage receives only its own section (DataConfig, PreprocessConfig, ...).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError

SOURCES = ("oxford", "folders", "csv", "tfds")
ARCHITECTURES = ("multihead", "cascade")
BACKBONES = ("simple", "mobilenet_v3_small")


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
    seed: int = 0
    eval_fraction: float = 0.1  # share of trainval that goes to the eval split, chosen by a hash of the name
    test_fraction: float = 0.3  # for sources without a test list (folders, csv): share hashed into test
    max_bad_fraction: float = 0.05  # quarantined / records above this fails the run (after writing the quarantine)
    min_image_side: int = 32  # images whose shorter side is smaller are quarantined
    max_image_pixels: int = 50_000_000  # larger declared sizes are rejected from the header (decompression bombs)


@dataclass(frozen=True)
class ValidationConfig:
    """Statistics are always computed; these say what counts as an anomaly and which anomalies stop the run."""

    drift_linf_threshold: float = 0.02  # L-infinity distance of breed distributions vs the previous run
    severe: tuple[str, ...] = ("schema_violation", "missing_feature", "empty_split", "missing_class")


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: int = 64  # square side in pixels; aspect is kept by letterboxing (see components/preprocess.py)
    jpeg_quality: int = 95
    num_shards: int = 2  # TFRecord shards per split


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 18
    span_window: int = 1  # train (and evaluate) on the last K successfully ingested spans
    batch_size: int = 32
    learning_rate: float = 2e-3
    shuffle_buffer: int = 2048
    seed: int = 0
    filters: tuple[int, ...] = (24, 48, 96, 192)  # backbone widths: strided stem, then conv + max-pool each
    dropout: float = 0.2
    breed_loss_weight: float = 1.0
    architecture: str = "multihead"  # multihead (one backbone, three heads) | cascade (the seed's baseline)
    backbone: str = "simple"  # simple | mobilenet_v3_small (keras.applications)
    backbone_weights: str | None = None  # local .weights.h5 for the backbone; nothing is ever downloaded
    augment: bool = True  # in-graph flip, shift and colour jitter, training only
    class_weights: bool = True  # balanced per-breed weights in the breed losses, from the train statistics
    early_stopping_patience: int = 5  # epochs without val_loss improvement before stopping; 0 = off
    resume: bool = True  # continue an interrupted training from its last epoch checkpoint
    # tf.distribute: none | mirrored (all local GPUs, or logical CPUs) | multiworker | auto (multiworker when
    # TF_CONFIG lists more than one worker). petpipe run trains with none or mirrored; see the README for multiworker.
    distribute: str = "none"
    warm_start: bool = True  # start from the blessed model's weights when its architecture matches


@dataclass(frozen=True)
class ExportConfig:
    serving_dir: str | None = None  # None: work_dir/serving
    model_name: str = "pets"
    top_k: int = 5
    species_uncertainty_threshold: float = 0.6  # below: species_uncertain, top-k from every species
    keep_versions: int = 5  # newest versions kept in the serving directory (labelled ones always); 0 = all
    warmup_requests: int = 3  # real requests in each version's assets.extra/tf_serving_warmup_requests


@dataclass(frozen=True)
class BlessConfig:
    """The gate between a trained candidate and the serving directory (TFX's Evaluator blessing)."""

    # Absolute lower bounds, "metric>=value", on evaluator metric names (dotted for nested ones).
    lower_bounds: tuple[str, ...] = ("species_accuracy>=0.9", "breed_top1_accuracy>=0.5")
    # Metrics that must not drop by more than max_regression against the served model on the same test data.
    no_regression: tuple[str, ...] = ("species_accuracy", "breed_top1_accuracy")
    max_regression: float = 0.01


@dataclass(frozen=True)
class PipelineConfig:
    work_dir: str = "petpipe-work"
    store_path: str = ""  # the run store (SQLite); default <work_dir>/metadata.sqlite — keep it on a local disk
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bless: BlessConfig = field(default_factory=BlessConfig)

    @property
    def tfrecord_root(self) -> str:
        """Holds span-<N>/ per ingested span: <split>/ TFRecords, quarantine/, statistics.json, schema.pbtxt."""
        return str(Path(self.work_dir) / "tfrecords")

    @property
    def run_store_path(self) -> str:
        return self.store_path or str(Path(self.work_dir) / "metadata.sqlite")

    @property
    def serving_dir(self) -> str:
        return self.export.serving_dir or str(Path(self.work_dir) / "serving")

    @property
    def model_base_path(self) -> str:
        return str(Path(self.serving_dir) / self.export.model_name)


def _coerce(value, annotation, where: str):
    """Convert a TOML or flag value to the field's declared type, or raise ConfigError naming the field."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
            return None
        hint = options[0]
        origin = typing.get_origin(hint)
    if origin is tuple:
        (item_type, _) = typing.get_args(hint)
        # "a,b" → two items; "" → an empty tuple (e.g. bless.lower_bounds= to switch the bounds off)
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_type, where) for v in items)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}") from None


def _apply(obj, updates: dict, where: str):
    """A copy of dataclass `obj` with nested `updates` applied; unknown keys are errors."""
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for key, value in updates.items():
        path = f"{where}.{key}" if where else key
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(obj))
            raise ConfigError(f"unknown config key {path!r} (known here: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: is a section; set its keys, e.g. {path}.<key>=...")
            changes[key] = _apply(current, value, path)
        else:
            changes[key] = _coerce(value, hints[key], path)
    return dataclasses.replace(obj, **changes)


def _parse_assignment(text: str) -> dict:
    """'train.epochs=3' → {'train': {'epochs': '3'}}."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs=3), got {text!r}")
    dotted, value = text.split("=", 1)
    nested: dict = {}
    node = nested
    *parents, leaf = dotted.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value.strip()
    return nested


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | None = None, overrides: typing.Iterable[str] = ()) -> PipelineConfig:
    """Defaults, then the TOML file at `path` (if any), then `overrides` like 'train.epochs=3'."""
    updates: dict = {}
    if path:
        try:
            with open(path, "rb") as f:
                updates = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for assignment in overrides:
        updates = _merge(updates, _parse_assignment(assignment))
    config = _apply(PipelineConfig(), updates, "")
    validate(config)
    return config


def validate(config: PipelineConfig) -> None:
    checks = [
        (config.data.source in SOURCES, f"data.source must be one of {', '.join(SOURCES)}; got {config.data.source!r}"),
        (config.data.source != "tfds" or bool(config.data.tfds_data_dir), "data.source=tfds needs --tfds-data-dir"),
        (config.data.source in ("oxford", "tfds") or bool(config.data.data_dir), "this data.source needs --data-dir"),
        (config.data.per_breed >= 2, "data.per_breed must be at least 2"),
        (0.0 <= config.data.eval_fraction < 1.0, "data.eval_fraction must be in [0, 1)"),
        (0.0 <= config.data.test_fraction < 1.0, "data.test_fraction must be in [0, 1)"),
        (config.data.eval_fraction + config.data.test_fraction < 1.0, "data.eval_fraction + test_fraction must be < 1"),
        (0.0 <= config.data.max_bad_fraction <= 1.0, "data.max_bad_fraction must be in [0, 1]"),
        (config.data.min_image_side >= 1, "data.min_image_side must be at least 1"),
        (config.data.max_image_pixels >= 1, "data.max_image_pixels must be at least 1"),
        (config.validation.drift_linf_threshold > 0, "validation.drift_linf_threshold must be positive"),
        (8 <= config.preprocess.image_size <= 1024, "preprocess.image_size must be in [8, 1024]"),
        (1 <= config.preprocess.jpeg_quality <= 100, "preprocess.jpeg_quality must be in [1, 100]"),
        (config.preprocess.num_shards >= 1, "preprocess.num_shards must be at least 1"),
        (config.train.epochs >= 1, "train.epochs must be at least 1"),
        (config.train.span_window >= 1, "train.span_window must be at least 1"),
        (
            config.train.distribute in ("none", "mirrored", "multiworker", "auto"),
            f"train.distribute must be none, mirrored, multiworker or auto, got {config.train.distribute!r}",
        ),
        (config.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (config.train.learning_rate > 0, "train.learning_rate must be positive"),
        (len(config.train.filters) >= 1, "train.filters needs at least one width"),
        (0.0 <= config.train.dropout < 1.0, "train.dropout must be in [0, 1)"),
        (config.export.top_k >= 1, "export.top_k must be at least 1"),
        (0.0 <= config.export.species_uncertainty_threshold <= 1.0, "export.species_uncertainty_threshold: [0, 1]"),
        (config.train.architecture in ARCHITECTURES, f"train.architecture must be one of {', '.join(ARCHITECTURES)}"),
        (config.train.backbone in BACKBONES, f"train.backbone must be one of {', '.join(BACKBONES)}"),
        (config.train.early_stopping_patience >= 0, "train.early_stopping_patience must be >= 0"),
        (config.bless.max_regression >= 0, "bless.max_regression must be >= 0"),
        (config.export.keep_versions >= 0, "export.keep_versions must be >= 0 (0 keeps every version)"),
        (config.export.warmup_requests >= 0, "export.warmup_requests must be >= 0"),
        (
            config.export.model_name.replace("_", "").replace("-", "").isalnum(),
            "export.model_name: letters, digits, - and _ only",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for bound in config.bless.lower_bounds:
        parse_lower_bound(bound)


def parse_lower_bound(text: str) -> tuple[str, float]:
    """'species_accuracy>=0.9' → ('species_accuracy', 0.9); ConfigError naming the entry otherwise."""
    name, sep, value = text.partition(">=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise ConfigError(f"bless.lower_bounds: expected 'metric>=number', got {text!r}") from None


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
