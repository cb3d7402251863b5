"""The feature schema and the label hierarchy: data files, plus the small loader that reads them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
HIERARCHY_PATH = SCHEMA_DIR / "hierarchy.json"
SCHEMA_PATH = SCHEMA_DIR / "schema.pbtxt"

# Feature keys of the tf.train.Example records; the per-species breed key is built by breed_feature().
IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_FILENAME = "image/filename"
LABEL_SPECIES = "label/species"
LABEL_BREED = "label/breed"
NOT_THIS_SPECIES = -1
# The splits a span is written in (<span>/<split>/*.tfrecord.gz).
TRAIN, EVAL, TEST = "train", "eval", "test"
SPLITS = (TRAIN, EVAL, TEST)


def breed_feature(species: str) -> str:
    """Feature key of a species' breed label, e.g. 'label/cat_breed'."""
    return f"label/{species}_breed"


@dataclass(frozen=True)
class Breed:
    name: str
    species: str
    global_index: int  # 0-based; the Oxford CLASS-ID is global_index + 1
    species_index: int  # 0-based; the Oxford SPECIES is species_index + 1
    index_in_species: int  # 0-based; the Oxford BREED-ID is index_in_species + 1


@dataclass(frozen=True)
class Hierarchy:
    """Species → ordered breeds. Global breed order is the Oxford CLASS-ID order (alphabetical, species mixed)."""

    species: tuple[str, ...]
    breeds: tuple[Breed, ...]

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> Hierarchy:
        try:
            species = tuple(data["species"])
            entries = [(b["name"], b["species"]) for b in data["breeds"]]
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"{source}: expected keys 'species' and 'breeds' with name/species entries ({exc})"
            ) from exc
        if len(set(species)) != len(species) or not species:
            raise ValueError(f"{source}: species must be a non-empty list of distinct names, got {list(species)}")
        names = [name.lower() for name, _ in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"{source}: breed names must be distinct (ignoring case)")
        seen_per_species = {s: 0 for s in species}
        breeds = []
        for global_index, (name, sp) in enumerate(entries):
            if sp not in seen_per_species:
                raise ValueError(f"{source}: breed {name!r} has unknown species {sp!r}; known: {list(species)}")
            breeds.append(Breed(name, sp, global_index, species.index(sp), seen_per_species[sp]))
            seen_per_species[sp] += 1
        empty = [s for s, n in seen_per_species.items() if n == 0]
        if empty:
            raise ValueError(f"{source}: species without breeds: {empty}")
        return cls(species, tuple(breeds))

    @cached_property
    def breeds_of(self) -> dict[str, tuple[Breed, ...]]:
        """Each species' breeds in BREED-ID order."""
        return {s: tuple(b for b in self.breeds if b.species == s) for s in self.species}

    @cached_property
    def by_name(self) -> dict[str, Breed]:
        return {b.name: b for b in self.breeds}

    @cached_property
    def by_lower_name(self) -> dict[str, Breed]:
        """Case-insensitive lookup, for sources that spell names their own way (folders, CSV, TFDS)."""
        return {b.name.lower(): b for b in self.breeds}

    @cached_property
    def species_by_lower_name(self) -> dict[str, str]:
        return {s.lower(): s for s in self.species}

    @property
    def breed_names(self) -> list[str]:
        return [b.name for b in self.breeds]

    def breed_by_ids(self, species_index: int, index_in_species: int) -> Breed:
        return self.breeds_of[self.species[species_index]][index_in_species]


def load_hierarchy(path: str | Path = HIERARCHY_PATH) -> Hierarchy:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    return Hierarchy.from_dict(data, source=str(path))


def load_schema(path: str | Path = SCHEMA_PATH):
    """The TFMD Schema proto (tensorflow_metadata.proto.v0.schema_pb2.Schema) stored at `path`."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    with open(path, encoding="utf-8") as f:
        try:
            return text_format.Parse(f.read(), schema_pb2.Schema())
        except text_format.ParseError as exc:
            raise ValueError(f"{path}:{exc.GetLine()}:{exc.GetColumn()}: invalid Schema text proto: {exc}") from None


def schema_for(hierarchy: Hierarchy, base=None):
    """The schema of the records for `hierarchy`: the shipped schema's image features, label domains sized to
    the hierarchy, and one label/<species>_breed feature per species (-1 = not this species).

    For the shipped hierarchy this is exactly schemas/schema.pbtxt (a test checks it).
    """
    from tensorflow_metadata.proto.v0 import schema_pb2

    base = base if base is not None else load_schema()
    schema = schema_pb2.Schema()
    schema.CopyFrom(base)
    del schema.feature[:]
    template = None
    for feature in base.feature:
        if feature.name.startswith("label/") and feature.name.endswith("_breed"):
            template = template or feature
            continue
        added = schema.feature.add()
        added.CopyFrom(feature)
        if feature.name == LABEL_SPECIES:
            added.int_domain.max = len(hierarchy.species) - 1
        elif feature.name == LABEL_BREED:
            added.int_domain.max = len(hierarchy.breeds) - 1
    for species, breeds in hierarchy.breeds_of.items():
        added = schema.feature.add()
        if template is not None:
            added.CopyFrom(template)
        added.name = breed_feature(species)
        added.type = schema_pb2.INT
        added.int_domain.min = NOT_THIS_SPECIES
        added.int_domain.max = len(breeds) - 1
        added.int_domain.is_categorical = True
    return schema


def write_schema(schema, path: str | Path) -> None:
    from google.protobuf import text_format

    Path(path).write_text(text_format.MessageToString(schema))
