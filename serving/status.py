"""Status codes as TF Serving answers them: an error carries a gRPC (= absl) code and TF Serving's message."""

from __future__ import annotations

import grpc

_CODES = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """An error answered to the client with a gRPC status code, as TF Serving would."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def code_from_number(number: int) -> grpc.StatusCode:
    """TensorFlow's error codes are absl's, which are gRPC's."""
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


def from_tf_error(exc) -> ServingError:
    """A tf.errors.OpError as TF Serving passes a failed Session::Run on: same code, same message."""
    return ServingError(code_from_number(exc.error_code), exc.message)
