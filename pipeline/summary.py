"""What a run did, as the one summary `petpipe run` prints (and the run store keeps the outcome of)."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas import SPLITS


@dataclass
class RunSummary:
    data_dir: str = ""
    spans: list = field(default_factory=list)  # SpanResult per span ingested by this run
    trained_on: list[str] = field(default_factory=list)
    run_dir: str = ""
    metrics: dict = field(default_factory=dict)
    baseline_metrics: dict | None = None
    baseline_version: int | None = None
    blessing: dict = field(default_factory=dict)
    report: str = ""
    model_config: str = ""
    version: int | None = None
    version_path: str = ""
    answers: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    run_id: int | None = None  # in the run store
    outcome: str = ""  # pushed | not blessed | nothing to do
    exit_code: int = 0
    outcome_message: str = ""

    def record_evaluation(self, evaluation) -> None:
        """From the evaluate stage's Evaluation."""
        self.metrics, self.baseline_metrics = evaluation.metrics, evaluation.baseline_metrics
        self.baseline_version = evaluation.baseline_version
        self.blessing, self.report = evaluation.blessing, evaluation.report

    def export_metadata(self, model_fingerprint: str | None) -> dict:
        """What the exported version records about this run (assets.extra/petpipe.json, beside the config)."""
        return {
            "trained_on": self.trained_on,
            "counts": self.counts,
            "test_metrics": {k: v for k, v in self.metrics.items() if not isinstance(v, (dict, list))},
            "blessing": self.blessing,
            "run_dir": self.run_dir,
            "model_fingerprint": model_fingerprint,
        }

    @property
    def counts(self) -> dict[str, int]:
        """Records written per split by this run's spans."""
        return {split: sum(r.written[split] for r in self.spans) for split in SPLITS}

    def lines(self) -> list[str]:
        out = [f"run:      {self.run_id} in the run store ({self.outcome}: {self.outcome_message})"]
        out.append(f"data:     {self.data_dir}")
        for r in self.spans:
            accounted = ", ".join(
                f"{split} {r.written[split]} + {r.quarantined[split]} = {r.records[split]}" for split in SPLITS
            )
            out.append(f"span {r.span}:   written + quarantined = records: {accounted}")
            if r.reasons:
                reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(r.reasons.items()))
                out.append(f"          quarantined ({reasons}): {r.tfrecord_dir}/quarantine/")
            if r.unannotated_images or r.ignored_files or r.duplicate_lines:
                out.append(
                    f"          ignored: {r.unannotated_images} images without annotation, {r.ignored_files} "
                    f"non-image files, {r.duplicate_lines} duplicate annotation lines (counted once)"
                )
            out.extend(f"          anomaly: {line}" for line in r.anomalies)
        out.append("records:  " + ", ".join(f"{split} {n}" for split, n in self.counts.items()))
        if self.metrics:
            top_k = next(
                k for k in self.metrics if k.startswith("breed_top") and k != "breed_top1_accuracy" and "_accuracy" in k
            )
            out.append(
                f"test:     species accuracy {self.metrics['species_accuracy']:.3f}, breed top-1 accuracy "
                f"{self.metrics['breed_top1_accuracy']:.3f}, {top_k.replace('_', ' ')} {self.metrics[top_k]:.3f} "
                f"({self.metrics['examples']} images)"
            )
        if self.blessing:
            verdict = "BLESSED" if self.blessing["blessed"] else "NOT BLESSED (nothing exported)"
            out.append(f"gate:     {verdict}: {self.blessing['reason']}")
        if self.report:
            out.append(f"report:   {self.report}")
        if self.version is not None:
            out.append(
                f"exported: version {self.version} at {self.version_path} (TF Serving config {self.model_config})"
            )
        out.extend(f"gRPC:     {answer}" for answer in self.answers)
        out.append("seconds:  " + ", ".join(f"{stage} {s:.1f}" for stage, s in self.seconds.items()))
        return out
