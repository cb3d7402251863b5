"""The train stage's config section (components/train.py, components/cascade.py, components/model.py read it).
Light on purpose: names are checked without importing TensorFlow; pipeline/config.py composes the sections."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from components.architectures import ARCHITECTURES

BACKBONES = ("simple", "mobilenet_v3_small")
DISTRIBUTE = ("none", "mirrored", "multiworker", "auto")


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
    # TF_CONFIG lists more than one worker). With multiworker, petpipe run runs on every task (pipeline/workers.py).
    distribute: str = "none"
    warm_start: bool = True  # start from the blessed model's weights when its architecture matches

    def problems(self) -> list[str]:
        rules = [
            (self.epochs >= 1, "train.epochs must be at least 1"),
            (self.span_window >= 1, "train.span_window must be at least 1"),
            (
                self.distribute in DISTRIBUTE,
                f"train.distribute must be none, mirrored, multiworker or auto, got {self.distribute!r}",
            ),
            (self.batch_size >= 1, "train.batch_size must be at least 1"),
            (self.learning_rate > 0, "train.learning_rate must be positive"),
            (len(self.filters) >= 1, "train.filters needs at least one width"),
            (0.0 <= self.dropout < 1.0, "train.dropout must be in [0, 1)"),
            (self.architecture in ARCHITECTURES, f"train.architecture must be one of {', '.join(ARCHITECTURES)}"),
            (self.backbone in BACKBONES, f"train.backbone must be one of {', '.join(BACKBONES)}"),
            (self.early_stopping_patience >= 0, "train.early_stopping_patience must be >= 0"),
        ]
        return [message for ok, message in rules if not ok]


@dataclass(frozen=True)
class TrainingJob:
    """One training's typed input (every architecture's train entry takes it): the config section, the data, and
    where checkpoints go."""

    config: TrainConfig
    tfrecord_dirs: list[str]  # span directories holding train/ and eval/ TFRecords
    schema: object  # the data's tensorflow_metadata Schema (parses the records)
    hierarchy: object  # schemas.Hierarchy
    image_size: int
    run_dir: str | None = None  # epoch checkpoints (resume) and TensorBoard logs; None: neither
    warm_start_weights: str | None = None  # a .weights.h5 of the same architecture to start from
    strategy: object = None  # a tf.distribute.Strategy, a name (none | mirrored | multiworker | auto), None: config's
    log: Callable[[str], None] = print
