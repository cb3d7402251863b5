import json

import numpy as np
import pytest

from components.model import build_backbone, build_multihead_model, with_augmentation
from components.train import balanced_class_weights, prepare_checkpoints


def test_mobilenet_backbone_loads_weights_from_a_local_file(tmp_path):
    source = build_backbone(32, (8,), "mobilenet_v3_small")
    path = str(tmp_path / "mobilenet.weights.h5")
    source.save_weights(path)
    loaded = build_backbone(32, (8,), "mobilenet_v3_small", path)
    assert len(loaded.weights) == len(source.weights) > 50
    for a, b in zip(source.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="cannot load mobilenet_v3_small backbone weights"):
        build_backbone(32, (8,), "mobilenet_v3_small", str(tmp_path / "missing.weights.h5"))


def test_augmentation_only_when_training(hierarchy):
    model = build_multihead_model(hierarchy, 32, (4, 8))
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype("float32")
    first = model(images, training=False)["species"].numpy()
    np.testing.assert_array_equal(first, model(images, training=False)["species"].numpy())
    augmented = with_augmentation(model, 32, seed=1)
    assert model.get_layer("backbone") is augmented.layers[-1].get_layer("backbone")  # shared weights
    assert not np.allclose(augmented(images, training=True)["species"].numpy(), first)


def test_balanced_class_weights_from_train_statistics(hierarchy, tmp_path):
    breeds = {name: 10 for name in hierarchy.breed_names}
    breeds["Bengal"], breeds["pug"] = 40, 0
    span = tmp_path / "span-0"
    span.mkdir()
    (span / "statistics.json").write_text(json.dumps({"train": {"breeds": breeds}}))
    weights = balanced_class_weights([str(span)], hierarchy)
    cats = {b.name: w for b, w in zip(hierarchy.breeds_of["cat"], weights["cat"], strict=True)}
    assert cats["Bengal"] == pytest.approx(150 / (12 * 40))  # n_species / (n_breeds · n_breed)
    assert cats["Abyssinian"] == pytest.approx(150 / (12 * 10))
    dogs = {b.name: w for b, w in zip(hierarchy.breeds_of["dog"], weights["dog"], strict=True)}
    assert dogs["pug"] == 1.0  # no examples: neutral, not infinite


def test_checkpoint_of_other_settings_is_discarded(tmp_path):
    messages = []
    directory = tmp_path / "checkpoints"
    prepare_checkpoints(str(directory), "a", True, messages.append)
    (directory / "latest.weights.h5").write_bytes(b"x")
    prepare_checkpoints(str(directory), "a", True, messages.append)
    assert (directory / "latest.weights.h5").exists() and "resuming" in messages[-1]
    prepare_checkpoints(str(directory), "b", True, messages.append)
    assert not (directory / "latest.weights.h5").exists() and "made for other data or settings" in messages[-1]
