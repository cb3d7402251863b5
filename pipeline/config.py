"""One frozen, typed configuration for every stage: defaults, overridden by a TOML file, then by flags.

Each component owns the section it reads (components/*_config.py, each checking its own values); this module
composes them into PipelineConfig and loads TOML files and --set overrides. Each stage receives only its section.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError
from components.bless_config import BlessConfig
from components.data_config import DataConfig, PreprocessConfig, ValidationConfig
from components.export_config import ExportConfig
from components.train_config import TrainConfig


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
    """Every section checks its own values; the first problem is the error."""
    sections = (config.data, config.validation, config.preprocess, config.train, config.export, config.bless)
    for section in sections:
        if problems := section.problems():
            raise ConfigError(problems[0])


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
