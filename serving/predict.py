"""Predict, as TF Serving runs it on one loaded version.

Ported from TF Serving's predict_util.cc (RunPredict, PreProcessPrediction) and util.cc; the error codes and
messages are theirs. Our additions, checked before anything is converted: the per-request limits (ServingLimits).
"""

from __future__ import annotations

import math
import time

import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2

from serving.inference import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    REGRESS_METHOD,
    LoadedVersion,
    RequestPolicy,
    ServingLimits,
    check_rows,
    join_names,
    make_model_spec,
    micros_since,
)
from serving.status import ServingError, invalid
from serving.tensors import ndarray, tensor_proto


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
    policy.metrics.record_runtime(request.model_spec.name, "Predict", "TF1", micros_since(started))
    for alias, array in zip(aliases, outputs, strict=True):
        response.outputs[alias].CopyFrom(tensor_proto(array))
    return response


def _verify_request_inputs_size(signature, request) -> None:
    """VerifyRequestInputsSize: more inputs than the signature's, or fewer when it has no defaults."""
    sent, expected = len(request.inputs), len(signature.inputs)
    if sent > expected or (sent < expected and not signature.defaults):
        request_inputs, signature_inputs = set(request.inputs), set(signature.inputs)
        raise invalid(
            f"input size does not match signature: {sent}!={expected} len({{{join_names(request_inputs)}}}) != "
            f"len({{{join_names(signature_inputs)}}}). "
            f"Sent extra: {{{join_names(request_inputs - signature_inputs)}}}. "
            f"Missing but required: {{{join_names(signature_inputs - request_inputs)}}}."
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
                f"value provided. Inputs expected to be in the request {{{join_names(request_inputs)}}}, or default "
                f"input alias set: {join_names(signature.defaults)}"
            )
        _check_declared_shape(alias, [d.size for d in proto.tensor_shape.dim], limits)
        array = ndarray(alias, proto)
        check_rows(alias, array, limits)
        feeds[tensor_info.name] = array
    if request_inputs and len(used) != len(request_inputs):
        raise invalid(
            f"Inputs contains invalid name. Used request inputs: {join_names(used)}, "
            f"request input: {join_names(request_inputs)}"
        )
    return feeds


def _output_aliases(signature, output_filter) -> list[str]:
    """The outputs to fetch: the output filter in its order, or every output of the signature."""
    seen = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{join_names(signature.outputs)}}}."
            )
        if alias in seen:
            raise invalid(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return list(output_filter) or list(signature.outputs)


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
