"""Predict, Classify, Regress and MultiInference on one loaded version, as TF Serving runs them.

Ported from TF Serving's predict_util.cc (RunPredict, PreProcessPrediction), classifier.cc / regressor.cc
(PreProcessClassification / PreProcessRegression and their PostProcess checks), multi_inference.cc and
util.cc (InputToSerializedExampleTensor, MakeModelSpec); the error codes and messages are theirs. Each request
is one Session::Run of the version's SessionBundle (serving/bundle.py), through the batch scheduler when batching
is on. Warmup replays `assets.extra/tf_serving_warmup_requests` through the same functions before a version
serves (saved_model_warmup.cc).

Our additions, checked before anything is converted: the per-request limits (ServingLimits).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from schemas.serving_layout import WARMUP_FILE
from serving.batching import BatchingOptions, BatchScheduler
from serving.bundle import SessionBundle, load_bundle
from serving.metrics import ServingMetrics, status_string
from serving.status import ServingError, invalid
from serving.tensors import datatype_of, ndarray, tensor_proto

log = logging.getLogger("petpipe.serve")
DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
MAX_WARMUP_RECORDS = 1000  # WarmupConsts::kMaxNumRecords


@dataclass(frozen=True)
class ServingLimits:
    """Per-request limits, checked before anything runs (INVALID_ARGUMENT otherwise)."""

    max_request_batch: int = 1024  # rows (dimension 0) of any input
    max_string_bytes: int = 16 * 1024 * 1024  # one tf.string element, e.g. one encoded image
    max_elements: int = 16 * 1024 * 1024  # all elements of one input tensor


@dataclass(frozen=True)
class RequestPolicy:
    """How requests are checked: our limits, and TF Serving's --enable_signature_method_name_check."""

    limits: ServingLimits = ServingLimits()
    method_name_check: bool = False
    metrics: ServingMetrics = field(default_factory=ServingMetrics)  # one per server, as TF's are per process


# --- a loaded version ---------------------------------------------------------------------------------------
@dataclass
class LoadedVersion:
    version: int
    bundle: SessionBundle = field(repr=False)
    batching: BatchingOptions | None = None
    metrics: ServingMetrics = field(default_factory=ServingMetrics, repr=False)
    _batchers: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def path(self) -> str:
        return self.bundle.path

    @property
    def signature_defs(self) -> dict:
        return self.bundle.signature_defs

    def run(self, feeds: dict[str, np.ndarray], fetches: list[str]) -> list[np.ndarray]:
        """One Session::Run, through the batch scheduler when batching is on (requests with the same feed and
        fetch tensors are merged, as TF Serving's BatchingSession does per signature)."""
        if self.batching is None:
            return self.bundle.run(feeds, fetches)
        key = (tuple(sorted(feeds)), tuple(fetches))
        with self._lock:
            batcher = self._batchers.get(key)
            if batcher is None:
                batcher = BatchScheduler(
                    lambda merged: dict(zip(fetches, self.bundle.run(merged, fetches), strict=True)),
                    self.batching,
                    f"v{self.version}-batch{len(self._batchers)}",
                    metrics=self.metrics,
                )
                self._batchers[key] = batcher
        outputs = batcher.submit(feeds)
        return [outputs[name] for name in fetches]

    def unload(self) -> None:
        """Stop the batch threads; the session closes once the last request on it has finished."""
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.stop()
        self.bundle.close()


def load_version(
    path: str, version: int, batching: BatchingOptions | None = None, policy: RequestPolicy | None = None
) -> LoadedVersion:
    policy = policy or RequestPolicy()
    bundle = load_bundle(path)
    loaded = LoadedVersion(version, bundle, batching, policy.metrics)
    try:
        replayed = warm_up(loaded, policy)
    except BaseException:
        loaded.unload()
        raise
    if replayed:
        log.info("version %d: replayed %d warmup requests", version, replayed)
    return loaded


def warm_up(loaded: LoadedVersion, policy: RequestPolicy | None = None) -> int:
    """Replay the version's warmup file (PredictionLog records) through the request path, as TF Serving does before
    a version takes traffic; a failing record fails the load. Returns how many records were replayed."""
    policy = policy or RequestPolicy()
    path = os.path.join(loaded.path, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return 0
    started, count = time.perf_counter(), 0
    try:
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            try:
                entry = prediction_log_pb2.PredictionLog.FromString(record)
            except Exception:  # noqa: BLE001 — protobuf's DecodeError and friends
                raise invalid(f"Failed to parse warmup record: {record!r} from {path}") from None
            _replay(loaded, entry, policy)
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise invalid(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
    except tf.errors.DataLossError as exc:  # a damaged file is recorded; a failing request returns before that
        policy.metrics.record_warmup(
            loaded.path, status_string("DATA_LOSS", exc.message), _micros_since(started), count
        )
        raise ServingError(
            grpc.StatusCode.DATA_LOSS, f"{exc.message}. Please verify your warmup data is in TFRecord format."
        ) from None
    policy.metrics.record_warmup(loaded.path, "OK", _micros_since(started), count)
    return count


def _replay(loaded: LoadedVersion, entry, policy: RequestPolicy) -> None:
    kind = entry.WhichOneof("log_type")
    if kind == "predict_log":
        run_predict(loaded, entry.predict_log.request, policy)
    elif kind == "classify_log":
        run_classify(loaded, entry.classify_log.request, policy)
    elif kind == "regress_log":
        run_regress(loaded, entry.regress_log.request, policy)
    elif kind == "multi_inference_log":
        run_multi_inference(loaded, entry.multi_inference_log.request, policy)
    else:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported log_type for warmup: {kind}")


# --- Predict ------------------------------------------------------------------------------------------------
def run_predict(loaded: LoadedVersion, request, policy: RequestPolicy) -> predict_pb2.PredictResponse:
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = loaded.signature_defs.get(signature_name)
    if signature is None:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.')
    response = predict_pb2.PredictResponse()
    make_model_spec(response.model_spec, request.model_spec.name, signature_name, loaded.version)
    if policy.method_name_check and signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        raise ServingError(
            grpc.StatusCode.INTERNAL,
            f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, {CLASSIFY_METHOD}, "
            f"{REGRESS_METHOD}}}. Was: {signature.method_name}",
        )
    _verify_request_inputs_size(signature, request)
    feeds = _input_values(signature, request.inputs, policy.limits)
    aliases = _output_aliases(signature, request.output_filter)
    started = time.perf_counter()
    outputs = loaded.run(feeds, [signature.outputs[alias].name for alias in aliases])
    policy.metrics.record_runtime(request.model_spec.name, "Predict", "TF1", _micros_since(started))
    for alias, array in zip(aliases, outputs, strict=True):
        response.outputs[alias].CopyFrom(tensor_proto(array))
    return response


def _verify_request_inputs_size(signature, request) -> None:
    """VerifyRequestInputsSize: more inputs than the signature's, or fewer when it has no defaults."""
    sent, expected = len(request.inputs), len(signature.inputs)
    if sent > expected or (sent < expected and not signature.defaults):
        request_inputs, signature_inputs = set(request.inputs), set(signature.inputs)
        raise invalid(
            f"input size does not match signature: {sent}!={expected} len({{{_join(request_inputs)}}}) != "
            f"len({{{_join(signature_inputs)}}}). Sent extra: {{{_join(request_inputs - signature_inputs)}}}. "
            f"Missing but required: {{{_join(signature_inputs - request_inputs)}}}."
        )


def _input_values(signature, request_inputs, limits: ServingLimits) -> dict[str, np.ndarray]:
    """saved_model::GetInputValues: each signature input from the request or the signature's defaults, keyed by
    its feed (tensor) name."""
    feeds, used = {}, set()
    for alias, tensor_info in signature.inputs.items():
        if alias in request_inputs:
            proto = request_inputs[alias]
            used.add(alias)
        elif alias in signature.defaults:
            proto = signature.defaults[alias]
        else:
            raise invalid(
                f"Signature input alias: {alias}(feed name: {tensor_info.name}) not found in request and no default "
                f"value provided. Inputs expected to be in the request {{{_join(request_inputs)}}}, or default "
                f"input alias set: {_join(signature.defaults)}"
            )
        _check_declared_shape(alias, [d.size for d in proto.tensor_shape.dim], limits)
        array = ndarray(alias, proto)
        check_rows(alias, array, limits)
        feeds[tensor_info.name] = array
    if request_inputs and len(used) != len(request_inputs):
        raise invalid(
            f"Inputs contains invalid name. Used request inputs: {_join(used)}, request input: {_join(request_inputs)}"
        )
    return feeds


def _output_aliases(signature, output_filter) -> list[str]:
    """The outputs to fetch: the output filter in its order, or every output of the signature."""
    seen = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{_join(signature.outputs)}}}."
            )
        if alias in seen:
            raise invalid(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return list(output_filter) or list(signature.outputs)


# --- Classify / Regress / MultiInference ---------------------------------------------------------------------
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
    return dict(zip(output_names, arrays, strict=True)), len(examples), _micros_since(started)


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


# --- shared checks ------------------------------------------------------------------------------------------
def _check_declared_shape(name: str, dims: list[int], limits: ServingLimits) -> None:
    """Before conversion: FromProto fills a declared shape by repeating the last value, so a few bytes could
    otherwise ask for gigabytes."""
    if any(d < 0 for d in dims):
        raise invalid(f"input '{name}': negative dimension in shape {dims}")
    if dims and dims[0] > limits.max_request_batch:
        raise invalid(
            f"input '{name}': batch of {dims[0]} exceeds this server's limit of {limits.max_request_batch} "
            "(--max_request_batch)"
        )
    if math.prod(dims) > limits.max_elements:
        raise invalid(
            f"input '{name}': shape {dims} declares {math.prod(dims)} elements, over this server's limit of "
            f"{limits.max_elements}"
        )


def check_rows(name: str, array: np.ndarray, limits: ServingLimits) -> None:
    if array.ndim and array.shape[0] > limits.max_request_batch:
        raise invalid(
            f"input '{name}': batch of {array.shape[0]} exceeds this server's limit of {limits.max_request_batch} "
            "(--max_request_batch)"
        )
    if array.dtype == object:
        for index, value in enumerate(array.flat):
            if len(value) > limits.max_string_bytes:
                raise invalid(
                    f"input '{name}': element {index} is {len(value)} bytes, over this server's limit of "
                    f"{limits.max_string_bytes} (--max_string_bytes)"
                )


def make_model_spec(spec: model_pb2.ModelSpec, name: str, signature_name: str | None, version: int | None) -> None:
    """util.cc MakeModelSpec: an empty signature name is answered as serving_default."""
    spec.Clear()
    spec.name = name
    if signature_name is not None:
        spec.signature_name = signature_name or DEFAULT_SIGNATURE
    if version is not None:
        spec.version.value = version


def _join(names) -> str:
    return ",".join(sorted(names))


def _micros_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1e6)
