"""The export stage's config section (components/export.py reads it; the serving directory layout is in
schemas/serving_layout.py). pipeline/config.py composes the sections."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExportConfig:
    serving_dir: str | None = None  # None: work_dir/serving
    model_name: str = "pets"
    top_k: int = 5
    species_uncertainty_threshold: float = 0.6  # below: species_uncertain, top-k from every species
    keep_versions: int = 5  # newest versions kept in the serving directory (labelled ones always); 0 = all
    warmup_requests: int = 3  # real requests in each version's assets.extra/tf_serving_warmup_requests

    def problems(self) -> list[str]:
        rules = [
            (self.top_k >= 1, "export.top_k must be at least 1"),
            (0.0 <= self.species_uncertainty_threshold <= 1.0, "export.species_uncertainty_threshold: [0, 1]"),
            (self.keep_versions >= 0, "export.keep_versions must be >= 0 (0 keeps every version)"),
            (self.warmup_requests >= 0, "export.warmup_requests must be >= 0"),
            (
                self.model_name.replace("_", "").replace("-", "").isalnum(),
                "export.model_name: letters, digits, - and _ only",
            ),
        ]
        return [message for ok, message in rules if not ok]
