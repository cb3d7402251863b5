"""The blessing gate's config section (components/bless.py reads it). pipeline/config.py composes the sections."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError


@dataclass(frozen=True)
class BlessConfig:
    """The gate between a trained candidate and the serving directory (TFX's Evaluator blessing)."""

    # Absolute lower bounds, "metric>=value", on evaluator metric names (dotted for nested ones).
    lower_bounds: tuple[str, ...] = ("species_accuracy>=0.9", "breed_top1_accuracy>=0.5")
    # Metrics that must not drop by more than max_regression against the served model on the same test data.
    no_regression: tuple[str, ...] = ("species_accuracy", "breed_top1_accuracy")
    max_regression: float = 0.01

    def problems(self) -> list[str]:
        for bound in self.lower_bounds:
            parse_lower_bound(bound)  # raises ConfigError naming the entry
        return [] if self.max_regression >= 0 else ["bless.max_regression must be >= 0"]


def parse_lower_bound(text: str) -> tuple[str, float]:
    """'species_accuracy>=0.9' → ('species_accuracy', 0.9); ConfigError naming the entry otherwise."""
    name, sep, value = text.partition(">=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise ConfigError(f"bless.lower_bounds: expected 'metric>=number', got {text!r}") from None
