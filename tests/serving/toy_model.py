"""A tiny SavedModel with classify, regress and predict signatures over tf.Example, like TF Serving's
half_plus_two test model: the pets model only has predict signatures, and the server must serve every kind.

Every example has a float feature "x" (and optionally "offset", default 0):
  classify_x   (tensorflow/serving/classify)  classes [N,2] = ["negative", "positive"],
               scores [N,2] = softmax([-x, x])
  regress_x    (tensorflow/serving/regress)   outputs [N] = scale·x + 2 + offset
  regress_x2   (tensorflow/serving/regress)   outputs [N,1] = x²
  serving_default (predict)                    x [N] float → y [N] = scale·x + 2
`scale` differs per version, so a test can tell which version answered.
"""

from __future__ import annotations

import os

import tensorflow as tf
from tensorflow.python.saved_model import signature_constants

FEATURES = {"x": tf.io.FixedLenFeature([], tf.float32), "offset": tf.io.FixedLenFeature([], tf.float32, 0.0)}


class ToyModule(tf.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = tf.Variable(scale)

    def _parse(self, serialized):
        return tf.io.parse_example(serialized, FEATURES)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def classify(self, inputs):
        x = self._parse(inputs)["x"]
        scores = tf.nn.softmax(tf.stack([-x, x], axis=1))
        classes = tf.tile(tf.constant([["negative", "positive"]]), [tf.shape(x)[0], 1])
        return {"classes": classes, "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def regress(self, inputs):
        features = self._parse(inputs)
        return {"outputs": self.scale * features["x"] + 2.0 + features["offset"]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def regress_square(self, inputs):
        x = self._parse(inputs)["x"]
        return {"outputs": tf.expand_dims(x * x, 1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def predict(self, x):
        return {"y": self.scale * x + 2.0}


def _with_method(signature_def, method: str) -> None:
    signature_def.method_name = method


def export_toy_model(base_path: str, version: int, scale: float = 0.5) -> str:
    """Save version `version` under base_path; classify/regress signatures get TF Serving's method names and the
    input key "inputs", as tf.estimator used to export them."""
    module = ToyModule(scale)
    path = os.path.join(base_path, str(version))
    staging = path + ".staging"
    signatures = {
        "classify_x": module.classify.get_concrete_function(),
        "regress_x": module.regress.get_concrete_function(),
        "regress_x2": module.regress_square.get_concrete_function(),
        "serving_default": module.predict.get_concrete_function(),
    }
    tf.saved_model.save(module, staging, signatures=signatures)
    _set_method_names(
        staging,
        {
            "classify_x": signature_constants.CLASSIFY_METHOD_NAME,
            "regress_x": signature_constants.REGRESS_METHOD_NAME,
            "regress_x2": signature_constants.REGRESS_METHOD_NAME,
        },
    )
    os.rename(staging, path)
    return path


def _set_method_names(path: str, methods: dict[str, str]) -> None:
    """tf.saved_model.save writes every signature as tensorflow/serving/predict with input keys named after the
    function arguments; TF Serving's Classify/Regress need their method names (the input key is already "inputs")."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb_path = os.path.join(path, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as f:
        saved_model.ParseFromString(f.read())
    signature_defs = saved_model.meta_graphs[0].signature_def
    for name, method in methods.items():
        assert list(signature_defs[name].inputs) == ["inputs"], signature_defs[name].inputs
        signature_defs[name].method_name = method
    with open(pb_path, "wb") as f:
        f.write(saved_model.SerializeToString())


def example(x: float, offset: float | None = None) -> tf.train.Example:
    feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))}
    if offset is not None:
        feature["offset"] = tf.train.Feature(float_list=tf.train.FloatList(value=[offset]))
    return tf.train.Example(features=tf.train.Features(feature=feature))
