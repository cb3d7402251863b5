"""What the statistics are laid out by: the splits in order, and each schema feature's value type and domain.

Shared by the accumulator (components/statistics.py) and the checks of its output (components/validation.py),
which reads statistics dicts and never needs the accumulator.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from components.ingest import SPLITS
from schemas import LABEL_BREED, LABEL_SPECIES, Hierarchy, breed_feature

INT, FLOAT, BYTES = "INT", "FLOAT", "BYTES"  # the names of the schema's FeatureType values


def ordered_splits(names) -> list[str]:
    """The known splits first (always present, so that an empty one is visible), then any other, sorted."""
    return list(SPLITS) + sorted(set(names) - set(SPLITS))


def feature_type(schema_feature) -> str:
    """INT, FLOAT or BYTES (or TYPE_UNKNOWN / STRUCT, which the statistics count as FLOAT)."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    return schema_pb2.FeatureType.Name(schema_feature.type)


def feature_domain(schema, feature):
    """The feature's IntDomain / StringDomain / FloatDomain (inline or referenced by name), or None."""
    which = feature.WhichOneof("domain_info")
    if which in ("int_domain", "string_domain", "float_domain"):
        return getattr(feature, which)
    if which == "domain":
        for domain in itertools.chain(schema.string_domain, schema.int_domain, schema.float_domain):
            if domain.name == feature.domain:
                return domain
    return None


def is_domain(domain, proto_name: str) -> bool:
    """Whether `domain` (from feature_domain) is of the proto message `proto_name`, e.g. "IntDomain"."""
    return domain is not None and domain.DESCRIPTOR.name == proto_name


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    kind: str  # INT | FLOAT | BYTES
    count_values: bool  # keep {value: count}: categorical INT, or BYTES with a string domain


@dataclass(frozen=True)
class StatisticsLayout:
    """What an accumulator needs from the schema and the hierarchy: plain tuples, cheap to pickle for Beam."""

    features: tuple[FeatureSpec, ...]
    species: tuple[str, ...]
    breeds: tuple[str, ...]

    @classmethod
    def build(cls, schema, hierarchy: Hierarchy) -> StatisticsLayout:
        labels = {LABEL_SPECIES, LABEL_BREED, *(breed_feature(s) for s in hierarchy.species)}
        specs = []
        for feature in schema.feature:
            kind = feature_type(feature)
            domain = feature_domain(schema, feature)
            if kind == INT:
                # Label counts give the species/breed tables, so labels are counted even if not marked categorical.
                categorical = feature.name in labels or (is_domain(domain, "IntDomain") and domain.is_categorical)
                specs.append(FeatureSpec(feature.name, INT, categorical))
            elif kind == BYTES:
                specs.append(FeatureSpec(feature.name, BYTES, is_domain(domain, "StringDomain")))
            else:
                specs.append(FeatureSpec(feature.name, FLOAT, False))
        return cls(tuple(specs), tuple(hierarchy.species), tuple(hierarchy.breed_names))
