"""Classify, Regress and MultiInference, as TF Serving runs them on one loaded version.

Ported from TF Serving's classifier.cc / regressor.cc (PreProcessClassification / PreProcessRegression and their
PostProcess checks), multi_inference.cc and util.cc (InputToSerializedExampleTensor); the error codes and
messages are theirs. Every method feeds the request's tf.Examples, serialized, as one string tensor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

from serving.inference import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    REGRESS_METHOD,
    LoadedVersion,
    RequestPolicy,
    check_rows,
    make_model_spec,
    micros_since,
)
from serving.status import ServingError, invalid
from serving.tensors import datatype_of


@dataclass(frozen=True)
class _ExamplesSignature:
    """The parts of a classification or regression signature a run needs (PreProcessClassification/Regression)."""

    input_name: str
    output_names: list[str]
    signature: object


def _classification_signature(signature, policy: RequestPolicy) -> _ExamplesSignature:
    if policy.method_name_check and signature.method_name != CLASSIFY_METHOD:
        raise invalid(
            f"Expected classification signature method_name to be {CLASSIFY_METHOD}. Was: {signature.method_name}"
        )
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if "inputs" not in signature.inputs:
        raise invalid(f"No classification inputs found in SignatureDef: {signature}")
    names = [signature.outputs[key].name for key in ("classes", "scores") if key in signature.outputs]
    if not names:
        raise invalid(
            'Expected classification signature outputs to contain at least one of "classes" or "scores". '
            f"Signature was: {signature}"
        )
    return _ExamplesSignature(signature.inputs["inputs"].name, names, signature)


def _regression_signature(signature, policy: RequestPolicy) -> _ExamplesSignature:
    if policy.method_name_check and signature.method_name != REGRESS_METHOD:
        raise invalid(f"Expected regression signature method_name to be {REGRESS_METHOD}. Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid("Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise invalid(f"No regression inputs found in SignatureDef: {signature}")
    if "outputs" not in signature.outputs:
        raise invalid(f"No regression outputs found in SignatureDef: {signature}")
    return _ExamplesSignature(signature.inputs["inputs"].name, [signature.outputs["outputs"].name], signature)


def _signature(loaded: LoadedVersion, spec) -> object:
    name = spec.signature_name or DEFAULT_SIGNATURE
    signature = loaded.signature_defs.get(name)
    if signature is None:
        raise invalid(f"No signature was found with the name: {name}")
    return signature


def run_classify(loaded: LoadedVersion, request, policy: RequestPolicy) -> classification_pb2.ClassificationResponse:
    return _run_examples_method(loaded, request, policy, CLASSIFY_METHOD)


def run_regress(loaded: LoadedVersion, request, policy: RequestPolicy) -> regression_pb2.RegressionResponse:
    return _run_examples_method(loaded, request, policy, REGRESS_METHOD)


def _run_examples_method(loaded: LoadedVersion, request, policy: RequestPolicy, method: str):
    """RunClassify / RunRegress: check the signature, run the examples, check and convert what it returns."""
    kind = _EXAMPLES_METHODS[method]
    prepared = kind.prepare(_signature(loaded, request.model_spec), policy)
    response = kind.response()
    make_model_spec(response.model_spec, request.model_spec.name, request.model_spec.signature_name, loaded.version)
    outputs, count, runtime = _run_examples(loaded, request.input, [prepared.input_name], prepared.output_names, policy)
    policy.metrics.record_runtime(request.model_spec.name, kind.api, "TF1", runtime)
    response.result.CopyFrom(kind.result(prepared.signature, count, outputs))
    return response


def run_multi_inference(loaded: LoadedVersion, request, policy: RequestPolicy) -> inference_pb2.MultiInferenceResponse:
    """TensorFlowMultiInferenceRunner::Infer: one Session::Run for every task's outputs."""
    model_name, signature_names, input_names, output_names = "", set(), set(), set()
    prepared = []
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid("Found ModelSpec with an empty model name.")
        if model_name and task.model_spec.name != model_name:
            raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        model_name = task.model_spec.name
        signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature_name in signature_names:
            raise invalid(f"Duplicate evaluation of signature: {signature_name}")
        signature_names.add(signature_name)
        signature = loaded.signature_defs.get(signature_name)
        if signature is None:
            raise invalid(f"Requested signature not found in model graph: {signature_name}")
        if task.method_name not in _EXAMPLES_METHODS:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}")
        one = _EXAMPLES_METHODS[task.method_name].prepare(signature, policy)
        input_names.add(one.input_name)
        output_names.update(one.output_names)
        prepared.append(one)
    outputs, count, _ = _run_examples(loaded, request.input, sorted(input_names), sorted(output_names), policy)
    policy.metrics.record_examples(model_name, count)
    response = inference_pb2.MultiInferenceResponse()
    for task, one in zip(request.tasks, prepared, strict=True):
        result = response.results.add()
        kind = _EXAMPLES_METHODS[task.method_name]
        getattr(result, kind.inference_field).CopyFrom(kind.result(one.signature, count, outputs))
        make_model_spec(result.model_spec, task.model_spec.name, task.model_spec.signature_name, loaded.version)
    return response


def _run_examples(loaded, input_proto, input_names: list[str], output_names: list[str], policy: RequestPolicy):
    """PerformOneShotTensorComputation: the Input's examples as one string tensor, fed to every input tensor name
    (MultiInference's signatures may name different ones).
    Returns ({output tensor name: array}, number of examples, Session::Run µs)."""
    examples = serialized_examples(input_proto)
    if not len(examples):
        raise invalid("Input is empty.")
    check_rows("inputs", examples, policy.limits)
    started = time.perf_counter()
    arrays = loaded.run(dict.fromkeys(input_names, examples), output_names)
    return dict(zip(output_names, arrays, strict=True)), len(examples), micros_since(started)


def serialized_examples(input_proto) -> np.ndarray:
    """An Input proto → serialized tf.Example strings. With a context, each example is the context's bytes followed
    by the example's — proto merge semantics, so the example's own features win, as in TF Serving."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        serialized = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context.SerializeToString()
        serialized = [context + e.SerializeToString() for e in input_proto.example_list_with_context.examples]
    else:
        serialized = []
    return np.array(serialized, dtype=object)


def _shape(array: np.ndarray) -> str:
    """TensorShape::DebugString: [2,3]."""
    return "[" + ",".join(str(n) for n in array.shape) + "]"


def _dtype_enum_name(array: np.ndarray) -> str:
    """DataType_Name of an output: DT_FLOAT, DT_STRING, ..."""
    return "DT_STRING" if array.dtype == object else types_pb2.DataType.Name(datatype_of(array))


def classification_result(signature, count: int, outputs: dict) -> classification_pb2.ClassificationResult:
    """PostProcessClassificationResult."""
    classes = outputs.get(signature.outputs["classes"].name) if "classes" in signature.outputs else None
    scores = outputs.get(signature.outputs["scores"].name) if "scores" in signature.outputs else None
    for name, array, dtype in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
        if array is None:
            continue
        if array.ndim != 2:
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {_shape(array)}")
        if _dtype_enum_name(array) != dtype:
            raise invalid(f"Expected {name} Tensor of {dtype}. Got: {_dtype_enum_name(array)}")
        if array.shape[0] != count:
            raise invalid(f"Expected {name} output batch size of {count}. Got: {array.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    num_classes = (classes if classes is not None else scores).shape[1]
    result = classification_pb2.ClassificationResult()
    for row in range(count):
        classifications = result.classifications.add()
        for column in range(num_classes):
            entry = classifications.classes.add()
            if classes is not None:
                entry.label = classes[row, column].decode("utf-8", "replace")
            if scores is not None:
                entry.score = float(scores[row, column])
    return result


def regression_result(signature, count: int, outputs: dict) -> regression_pb2.RegressionResult:
    """PostProcessRegressionResult."""
    values = outputs[signature.outputs["outputs"].name]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {_shape(values)}"
        )
    if values.shape[0] != count:
        raise invalid(f"Input batch size did not match output batch size: {count} vs. {values.shape[0]}")
    if _dtype_enum_name(values) != "DT_FLOAT":
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_enum_name(values)}")
    result = regression_pb2.RegressionResult()
    for value in values.reshape(-1):
        result.regressions.add(value=float(value))
    return result


class _ExamplesMethod(NamedTuple):
    api: str  # the metrics' API label
    prepare: Callable  # signature, policy → _ExamplesSignature
    response: type
    result: Callable  # signature, number of examples, outputs → ClassificationResult / RegressionResult
    inference_field: str  # where MultiInference puts that result


_EXAMPLES_METHODS = {
    CLASSIFY_METHOD: _ExamplesMethod(
        "Classify",
        _classification_signature,
        classification_pb2.ClassificationResponse,
        classification_result,
        "classification_result",
    ),
    REGRESS_METHOD: _ExamplesMethod(
        "Regress", _regression_signature, regression_pb2.RegressionResponse, regression_result, "regression_result"
    ),
}
