import json

import pytest

from schemas import Hierarchy, breed_feature, load_hierarchy


def test_hierarchy_is_the_oxford_pet_one(hierarchy):
    assert hierarchy.species == ("cat", "dog")
    cats, dogs = hierarchy.breeds_of["cat"], hierarchy.breeds_of["dog"]
    assert len(cats) == 12 and len(dogs) == 25
    assert all(b.name[0].isupper() for b in cats) and all(b.name[0].islower() for b in dogs)
    # CLASS-ID order is the case-insensitive alphabetical order of the 37 names
    assert hierarchy.breed_names == sorted(hierarchy.breed_names, key=str.lower)
    assert hierarchy.breeds[0].name == "Abyssinian" and hierarchy.breeds[36].name == "yorkshire_terrier"
    assert hierarchy.by_name["Sphynx"].index_in_species == 11
    assert hierarchy.breed_by_ids(1, 24).name == "yorkshire_terrier"


def test_schema_agrees_with_hierarchy(schema, hierarchy):
    features = {f.name: f for f in schema.feature}
    assert set(features) == {
        "image/encoded",
        "image/format",
        "image/filename",
        "label/species",
        "label/breed",
        *(breed_feature(s) for s in hierarchy.species),
    }
    assert features["label/breed"].int_domain.max == len(hierarchy.breeds) - 1
    assert features["label/species"].int_domain.max == len(hierarchy.species) - 1
    for species, breeds in hierarchy.breeds_of.items():
        domain = features[breed_feature(species)].int_domain
        assert (domain.min, domain.max) == (-1, len(breeds) - 1)


def test_bad_hierarchy_files_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="unknown species 'bird'"):
        Hierarchy.from_dict({"species": ["cat"], "breeds": [{"name": "x", "species": "bird"}]})
    with pytest.raises(ValueError, match="species without breeds"):
        Hierarchy.from_dict({"species": ["cat", "dog"], "breeds": [{"name": "x", "species": "cat"}]})
    path = tmp_path / "h.json"
    path.write_text('{"species": ["cat"],\n "breeds": [}')
    with pytest.raises(ValueError, match=r"h.json:2: not valid JSON"):
        load_hierarchy(path)
    path.write_text(json.dumps({"species": ["cat"], "breeds": [{"name": "A", "species": "cat"}]}))
    assert load_hierarchy(path).breed_names == ["A"]
