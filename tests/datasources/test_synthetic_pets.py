import hashlib
import io

from PIL import Image

from datasources.synthetic_pets import LIST_HEADER, breed_looks, write_synthetic_pets


def _digest(directory):
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(directory).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_layout_is_the_oxford_raw_layout(tmp_path, hierarchy):
    counts = write_synthetic_pets(tmp_path, per_breed=4, seed=3)
    assert counts == {"trainval": 37 * 3, "test": 37}
    listing = (tmp_path / "annotations" / "list.txt").read_text()
    assert listing.startswith(LIST_HEADER) and LIST_HEADER.count("\n") == 6
    rows = [line.split() for line in listing.splitlines()[6:]]
    assert len(rows) == 148 and all(len(r) == 4 for r in rows)
    trainval = (tmp_path / "annotations" / "trainval.txt").read_text().splitlines()
    test = (tmp_path / "annotations" / "test.txt").read_text().splitlines()
    assert sorted(trainval + test) == sorted(" ".join(r) for r in rows)
    for image, class_id, species, breed_id in rows:
        breed = hierarchy.breeds[int(class_id) - 1]
        assert image.rsplit("_", 1)[0] == breed.name
        assert (int(species), int(breed_id)) == (breed.species_index + 1, breed.index_in_species + 1)
        assert (tmp_path / "images" / f"{image}.jpg").is_file()
    sizes = set()
    for path in list((tmp_path / "images").iterdir())[:40]:
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            sizes.add(img.size)
    assert len({w / h for w, h in sizes}) > 10  # varying size and aspect ratio


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    write_synthetic_pets(tmp_path / "a", per_breed=2, seed=5)
    write_synthetic_pets(tmp_path / "b", per_breed=2, seed=5)
    write_synthetic_pets(tmp_path / "c", per_breed=2, seed=6)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_looks_are_unique_per_species_and_shared_across_species(hierarchy):
    looks = breed_looks(hierarchy)
    for breeds in hierarchy.breeds_of.values():
        assert len({(looks[b.name].coat, looks[b.name].pattern) for b in breeds}) == len(breeds)
    cat_looks = {(looks[b.name].coat, looks[b.name].pattern) for b in hierarchy.breeds_of["cat"]}
    dog_looks = {(looks[b.name].coat, looks[b.name].pattern) for b in hierarchy.breeds_of["dog"]}
    assert cat_looks & dog_looks  # some cats and dogs look alike but for their shape
