"""SavedModels equivalent to TF Serving's own test fixtures (tensorflow_serving/servables/tensorflow/testdata),
made here so the tests need nothing from outside the repo.

half_plus_two (TF1 graph, as TF Serving's saved_model_half_plus_two.py builds it): variables a=0.5, b=2, c=3;
a placeholder `tf_example` of serialized tf.Examples with features x and x2 (default 0), and
  serving_default   (predict)   x [-1,1] float → y = a·x + b        (x, y are graph tensors "x:0", "y:0")
  regress_x_to_y    (regress)   tf_example → y
  regress_x_to_y2   (regress)   tf_example → y2 = a·x + c
  regress_x2_to_y3  (regress)   x2 → y3 = a·x2 + c
  classify_x_to_y   (classify)  tf_example → scores = y
  classify_x2_to_y3 (classify)  x2 → scores = y3
plus an asset file foo.txt whose name an init op assigns to a variable, and version directories named as TF
Serving's fixtures name them ("00000123"). half_plus_three is the same graph with b=3, predict and regress
signatures only, and a warmup file. The TF2 model is TF Serving's HalfPlusTwoModel: a tf.Module saved with
tf.saved_model.save.
"""

from __future__ import annotations

import os
import tempfile

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2, regression_pb2

REGRESS = "tensorflow/serving/regress"
CLASSIFY = "tensorflow/serving/classify"
PREDICT = "tensorflow/serving/predict"


def _features():
    return {
        "x": tf.io.FixedLenFeature([1], tf.float32),
        "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
    }


def _signature(inputs: dict, outputs: dict, method: str):
    build = tf.compat.v1.saved_model.utils.build_tensor_info
    return tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
        {k: build(v) for k, v in inputs.items()}, {k: build(v) for k, v in outputs.items()}, method
    )


def half_plus_two_tf1(export_dir: str, b: float = 2.0, full: bool = True) -> str:
    """The TF1 graph of TF Serving's half_plus_two (full=False: half_plus_three's two signatures)."""
    with tempfile.TemporaryDirectory() as scratch:
        return _half_plus_two_tf1(export_dir, b, full, os.path.join(scratch, "foo.txt"))


def _half_plus_two_tf1(export_dir: str, b: float, full: bool, asset_source: str) -> str:
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        a = tf.compat.v1.Variable(0.5, name="a")
        b_var = tf.compat.v1.Variable(b, name="b")
        c = tf.compat.v1.Variable(3.0, name="c")
        serialized = tf.compat.v1.placeholder(tf.string, name="tf_example", shape=[None])
        parsed = tf.io.parse_example(serialized, _features())
        x = tf.identity(parsed["x"], name="x")
        y = tf.identity(a * x + b_var, name="y")
        y2 = tf.identity(a * x + c, name="y2")
        x2 = tf.identity(parsed["x2"], name="x2")
        y3 = tf.identity(tf.compat.v1.Variable(0.5, name="a2") * x2 + tf.compat.v1.Variable(3.0, name="c2"), "y3")
        # An asset whose file name an init op writes into a variable, as TF Serving's fixture does.
        with open(asset_source, "w") as f:
            f.write("asset-file-contents")
        asset_path = tf.constant(asset_source)
        tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.ASSET_FILEPATHS, asset_path)
        filename = tf.compat.v1.Variable("foo.txt", name="filename_tensor", trainable=False, collections=[])
        assign_filename = filename.assign("foo.txt")
        signatures = {"serving_default": _signature({"x": x}, {"y": y}, PREDICT)}
        if full:
            signatures.update(
                {
                    "regress_x_to_y": _signature({"inputs": serialized}, {"outputs": y}, REGRESS),
                    "regress_x_to_y2": _signature({"inputs": serialized}, {"outputs": y2}, REGRESS),
                    "regress_x2_to_y3": _signature({"inputs": x2}, {"outputs": y3}, REGRESS),
                    "classify_x_to_y": _signature({"inputs": serialized}, {"scores": y}, CLASSIFY),
                    "classify_x2_to_y3": _signature({"inputs": x2}, {"scores": y3}, CLASSIFY),
                }
            )
        else:
            signatures[REGRESS] = _signature({"inputs": serialized}, {"outputs": y}, REGRESS)
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(export_dir)
        builder.add_meta_graph_and_variables(
            session,
            ["serve"],
            signature_def_map=signatures,
            assets_collection=tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.ASSET_FILEPATHS),
            main_op=tf.group(assign_filename),
        )
        builder.save()
    return export_dir


def half_plus_three_tf1(export_dir: str) -> str:
    """TF Serving's saved_model_half_plus_three: b=3, with a warmup file of one Regress request."""
    half_plus_two_tf1(export_dir, b=3.0, full=False)
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "half_plus_three"
    request.model_spec.signature_name = REGRESS
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.0)
    entry = prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(request=request))
    os.makedirs(os.path.join(export_dir, "assets.extra"))
    with tf.io.TFRecordWriter(os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests")) as writer:
        for _ in range(3):
            writer.write(entry.SerializeToString())
    return export_dir


class HalfPlusTwoModule(tf.Module):
    """TF Serving's native TF2 HalfPlusTwoModel."""

    def __init__(self):
        super().__init__()
        self.a = tf.Variable(0.5, name="a")
        self.b = tf.Variable(2.0, name="b")
        self.c = tf.Variable(3.0, name="c")

    def _compute(self, x, inc):
        return self.a * x + inc

    @tf.function(input_signature=[tf.TensorSpec(shape=[1], dtype=tf.float32)])
    def predict(self, x):
        return {"y": self._compute(x, self.b)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_xy(self, serialized):
        return {"outputs": self._compute(tf.io.parse_example(serialized, _features())["x"], self.b)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_xy2(self, serialized):
        return {"outputs": self._compute(tf.io.parse_example(serialized, _features())["x"], self.c)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify_xy(self, serialized):
        return {"scores": self._compute(tf.io.parse_example(serialized, _features())["x"], self.b)}


def half_plus_two_tf2(export_dir: str) -> str:
    """TF Serving's saved_model_half_plus_two_tf2_cpu (method names set as its fixture has them)."""
    module = HalfPlusTwoModule()
    signatures = {
        "serving_default": module.predict,
        "regress_x_to_y": module.regress_xy,
        "regress_x_to_y2": module.regress_xy2,
        "classify_x_to_y": module.classify_xy,
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    return export_dir


def model_base(root: str, name: str, make, versions=("00000123",)) -> str:
    """A model base path holding `make(<base>/<dir>)` for each version directory name."""
    base = os.path.join(root, name)
    for directory in versions:
        make(os.path.join(base, directory))
    return base
