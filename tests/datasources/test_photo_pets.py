import hashlib
import io
import statistics

import numpy as np
import pytest
from PIL import Image

from datasources.photo_pets import photo_jpeg
from datasources.synthetic_pets import breed_looks, image_rng, plan, write_synthetic_pets
from pipeline.cli import main
from schemas import Hierarchy
from tests.datasources.test_synthetic_pets import _digest


@pytest.fixture(scope="module")
def photos(hierarchy):
    """40 photo-style JPEGs: the first two images of 20 breeds, cats and dogs."""
    looks = breed_looks(hierarchy)
    trainval, test = plan(hierarchy, per_breed=2, test_fraction=0.5)
    annotations = sorted(trainval + test, key=lambda a: a.class_id)[:40]
    return [
        photo_jpeg(breed, looks[breed.name], image_rng(0, a))
        for a in annotations
        for breed in [hierarchy.breeds[a.class_id - 1]]
    ]


def test_photos_have_real_photo_sizes(photos):
    sizes = [Image.open(io.BytesIO(jpeg)).size for jpeg in photos]
    long_sides = [max(size) for size in sizes]
    assert min(long_sides) >= 300 and max(long_sides) == 500
    assert len({round(w / h, 2) for w, h in sizes}) >= 4  # 4:3, 3:4, 3:2, 1:1, ...
    kb = [len(jpeg) / 1024 for jpeg in photos]
    assert min(kb) >= 20 and max(kb) <= 100
    assert 35 <= statistics.median(kb) <= 60


def test_breed_cues_survive_a_resize_to_64_px(photos):
    # The first two photos are Abyssinians, a solid black cat: at 64 px the head is still a large dark area.
    for jpeg in photos[:2]:
        grey = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L").resize((64, 64)), np.float32)
        assert (grey < 70).mean() > 0.05


def _two_species():
    breeds = [("Alpha", "cat"), ("Bravo", "cat"), ("charlie", "dog"), ("delta", "dog")]
    return Hierarchy.from_dict({"species": ["cat", "dog"], "breeds": [{"name": n, "species": s} for n, s in breeds]})


def test_photo_bytes_depend_on_the_seed_only_not_on_the_processes(tmp_path):
    hierarchy = _two_species()
    write_synthetic_pets(tmp_path / "a", per_breed=3, seed=4, hierarchy=hierarchy, style="photo", processes=1)
    write_synthetic_pets(tmp_path / "b", per_breed=3, seed=4, hierarchy=hierarchy, style="photo", processes=2)
    write_synthetic_pets(tmp_path / "c", per_breed=3, seed=5, hierarchy=hierarchy, style="photo", processes=1)
    assert len(list((tmp_path / "a" / "images").iterdir())) == 12
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_small_style_is_unchanged_by_the_photo_style(tmp_path):
    # Digests of files written before the photo style existed: the default output must not move.
    write_synthetic_pets(tmp_path, per_breed=4, seed=3, processes=2)
    assert {
        name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        for name in ("images/Abyssinian_1.jpg", "images/yorkshire_terrier_4.jpg", "annotations/list.txt")
    } == {
        "images/Abyssinian_1.jpg": "d25509d36b3cbc89b983d270a8de16d624d0fb160789917f6c87f9593d34e48c",
        "images/yorkshire_terrier_4.jpg": "a101ae063a197217411a91c08520ca21562f5aa376e00b7ee6d6f851946e2162",
        "annotations/list.txt": "badc70696f6d09e23103864abe920a08da47f774a0f50f9298259e9eebb90ed3",
    }
    with Image.open(tmp_path / "images" / "Abyssinian_1.jpg") as img:
        assert max(img.size) < 208


def test_unknown_style_is_refused(tmp_path):
    with pytest.raises(ValueError, match="image style must be one of small, photo; got 'huge'"):
        write_synthetic_pets(tmp_path, per_breed=2, style="huge")


def test_make_data_photo_writes_the_raw_layout(tmp_path, capsys):
    out = tmp_path / "pets"
    assert main(["make-data", "--out", str(out), "--per-breed", "2", "--photo", "--processes", "2"]) == 0
    assert "wrote 37 trainval and 37 test images" in capsys.readouterr().out
    assert len((out / "annotations" / "list.txt").read_text().splitlines()) == 6 + 74
    assert len((out / "annotations" / "trainval.txt").read_text().splitlines()) == 37
    with Image.open(out / "images" / "Abyssinian_1.jpg") as img:
        assert img.format == "JPEG" and img.mode == "RGB" and 300 <= max(img.size) <= 500


def test_ensure_data_generates_the_configured_style_and_regenerates_on_a_change(tmp_path):
    from components.data_config import DataConfig
    from pipeline.stages.data import ensure_data

    hierarchy = _two_species()
    photo_dir = ensure_data(DataConfig(per_breed=2, image_style="photo"), str(tmp_path), hierarchy)
    with Image.open(f"{photo_dir}/images/Alpha_1.jpg") as img:
        assert 300 <= max(img.size) <= 500
    small_dir = ensure_data(DataConfig(per_breed=2), str(tmp_path), hierarchy)
    assert small_dir == photo_dir
    with Image.open(f"{small_dir}/images/Alpha_1.jpg") as img:
        assert max(img.size) < 208
