import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.export import EXAMPLES_SIGNATURE, STAGING_PREFIX, existing_versions, export_model
from components.export_config import ExportConfig
from components.preprocess import make_example
from tests.conftest import TEST_EXPORT, TINY_TRAIN


def _png(color, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_layout_and_versions_increase(small_model, hierarchy, tmp_path):
    base = str(tmp_path / "pets")
    os.makedirs(os.path.join(base, f"{STAGING_PREFIX}leftover"))  # a killed export's staging dir
    os.makedirs(os.path.join(base, "7"))
    assert existing_versions(base) == [7]
    version, path = export_model(small_model, hierarchy, base, 32, TEST_EXPORT)
    assert (version, path) == (8, os.path.join(base, "8"))
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert os.path.isfile(os.path.join(path, "assets.extra", "petpipe.json"))
    with open(os.path.join(path, "assets", "breeds.txt")) as f:
        assert f.read().splitlines() == hierarchy.breed_names
    assert export_model(small_model, hierarchy, base, 32, TEST_EXPORT)[0] == 9
    assert not [n for n in os.listdir(base) if n.startswith(STAGING_PREFIX) and n != f"{STAGING_PREFIX}leftover"]


def test_serving_signature_outputs(exported_model, hierarchy):
    _, _, path = exported_model
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["image_bytes"]
    images = [_png((200, 30, 30)), _png((20, 200, 30), size=(80, 20)), _png((10, 10, 10), size=(5, 90))]
    out = {k: v.numpy() for k, v in serve(image_bytes=tf.constant(images)).items()}
    assert out["species_probs"].shape == (3, 2) and out["breed_probs"].shape == (3, 37)
    assert out["cat_breed_probs"].shape == (3, 12) and out["dog_breed_probs"].shape == (3, 25)
    np.testing.assert_allclose(out["breed_probs"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["species_probs"].sum(axis=1), 1.0, rtol=1e-5)
    assert out["top_k_breeds"].shape == (3, 5) and out["top_k_scores"].shape == (3, 5)
    for i in range(3):
        breed = hierarchy.by_name[out["breed"][i].decode()]
        assert out["top_k_breeds"][i][0].decode() == breed.name
        assert out["top_k_scores"][i][0] == pytest.approx(out["breed_probs"][i][breed.global_index])
        species = out["species"][i].decode()
        assert species == hierarchy.species[int(np.argmax(out["species_probs"][i]))]
        assert all(hierarchy.by_name[b.decode()].species == species for b in out["top_k_breeds"][i])


def test_examples_signature_matches_image_signature(exported_model, hierarchy):
    _, _, path = exported_model
    loaded = tf.saved_model.load(path)
    image = _png((120, 80, 40))
    example = make_example("Bengal_1", 5, 0, 1, image, hierarchy).SerializeToString()
    from_examples = loaded.signatures[EXAMPLES_SIGNATURE](examples=tf.constant([example]))
    from_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant([image]))
    np.testing.assert_allclose(from_examples["breed_probs"].numpy(), from_bytes["breed_probs"].numpy(), rtol=1e-6)


def test_uncertain_species_is_flagged_and_widens_the_candidates(small_model, hierarchy, tmp_path):
    _, path = export_model(
        small_model, hierarchy, str(tmp_path / "pets"), 32, ExportConfig(species_uncertainty_threshold=1.0)
    )
    out = tf.saved_model.load(path).signatures["serving_default"](image_bytes=tf.constant([_png((90, 120, 30))]))
    assert out["species_uncertain"].numpy().tolist() == [True]  # no species reaches probability 1.0
    probs = out["breed_probs"].numpy()[0]
    expected = [hierarchy.breeds[i].name for i in np.argsort(-probs)[:5]]  # the joint top-5, any species
    assert [b.decode() for b in out["top_k_breeds"].numpy()[0]] == expected
    answered = out["species"].numpy()[0].decode()
    assert hierarchy.by_name[out["breed"].numpy()[0].decode()].species == answered  # the answer stays consistent


def test_warmup_file_holds_real_predict_requests(small_model, hierarchy, tmp_path):
    from tensorflow_serving.apis import prediction_log_pb2

    images = [_png((10, 20, 30)), _png((200, 100, 0))]
    _, path = export_model(small_model, hierarchy, str(tmp_path / "pets"), 32, TEST_EXPORT, warmup_images=images)
    records = list(tf.data.TFRecordDataset(os.path.join(path, "assets.extra", "tf_serving_warmup_requests")))
    assert len(records) == 2
    loaded = tf.saved_model.load(path).signatures["serving_default"]
    for record, image in zip(records, images, strict=True):
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        assert (request.model_spec.name, request.model_spec.signature_name) == ("pets", "serving_default")
        assert tf.make_ndarray(request.inputs["image_bytes"]).tolist() == [image]
        assert loaded(image_bytes=tf.make_ndarray(request.inputs["image_bytes"]))["breed_probs"].shape == (1, 37)


def test_models_config_is_tf_servings_and_keeps_other_entries(tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from components.export import read_model_config, write_model_config

    serving = tmp_path / "serving"
    serving.mkdir()
    (serving / "models.config").write_text(
        'model_config_list { config { name: "other" base_path: "/models/other" model_platform: "tensorflow" }\n'
        ' config { name: "pets" base_path: "/old" version_labels { key: "stable" value: 2 } } }'
    )
    path = write_model_config(str(serving), "pets", str(serving / "pets"))
    parsed = text_format.Parse((serving / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    entries = {c.name: c for c in parsed.model_config_list.config}
    assert path == str(serving / "models.config") and set(entries) == {"other", "pets"}
    assert entries["pets"].base_path == str((serving / "pets").resolve())
    assert dict(entries["pets"].version_labels) == {"stable": 2}  # labels survive a re-export
    assert entries["other"].base_path == "/models/other"
    (serving / "models.config").write_text("model_config_list {")
    with pytest.raises(ValueError, match="models.config: not a ModelServerConfig"):
        read_model_config(str(serving))


def test_retention_keeps_the_newest_and_labelled_versions(tmp_path):
    from components.export import apply_retention

    serving = tmp_path / "serving"
    for version in range(1, 8):
        (serving / "pets" / str(version)).mkdir(parents=True)
    (serving / "models.config").write_text(
        'model_config_list { config { name: "pets" base_path: "x" version_labels { key: "stable" value: 2 } } }'
    )
    deleted = apply_retention(str(serving), "pets", str(serving / "pets"), keep=3)
    assert deleted == [1, 3, 4]
    assert existing_versions(str(serving / "pets")) == [2, 5, 6, 7]
    assert apply_retention(str(serving), "pets", str(serving / "pets"), keep=0) == []


def test_versions_are_read_as_tf_serving_reads_them(tmp_path):
    """Zero-padded names count (TF Serving's own fixtures use "00000123"); retention deletes them by their name."""
    from components.export import apply_retention

    serving = tmp_path / "serving"
    for name in ("00000003", "7", "0008", "v9", "_staging-x"):
        (serving / "pets" / name).mkdir(parents=True)
    assert existing_versions(str(serving / "pets")) == [3, 7, 8]
    assert apply_retention(str(serving), "pets", str(serving / "pets"), keep=1) == [3, 7]
    assert sorted(os.listdir(serving / "pets")) == ["0008", "_staging-x", "v9"]


def test_a_session_loader_like_tf_servings_runs_the_export_with_the_trained_weights(hierarchy, tmp_path):
    """TF Serving loads a SavedModel into a TF1 session (variables restored by the saver) and runs signatures by
    tensor name. Keras 3 variables reach tf.saved_model.save twice; without tracking the ones the functions
    capture, that loader fails with "Could not find variable ..." (tensorflow/serving#2226), although
    tf.saved_model.load works."""
    from components.model import build_multihead_model

    model = build_multihead_model(hierarchy, 32, TINY_TRAIN)
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(w.dtype) for w in model.get_weights()])  # not the init
    _, path = export_model(model, hierarchy, str(tmp_path / "pets"), 32, TEST_EXPORT)
    images = np.array([_png((200, 30, 30)), _png((20, 200, 30), size=(80, 20))], dtype=object)
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        signature = meta_graph.signature_def["serving_default"]
        fetches = {alias: info.name for alias, info in signature.outputs.items()}
        served = session.run(fetches, {signature.inputs["image_bytes"].name: images})
    expected = tf.saved_model.load(path).signatures["serving_default"](image_bytes=tf.constant(images))
    np.testing.assert_allclose(served["species_probs"], expected["species_probs"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(served["breed_probs"], expected["breed_probs"].numpy(), rtol=1e-5)
    assert not np.allclose(served["species_probs"], 0.5)  # the random weights, not a blank model, answered
