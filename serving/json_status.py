"""The status json_tensor.cc returns, for serving/json_tensor.py: a code and TF Serving's exact message."""

from __future__ import annotations

import grpc


class JsonError(ValueError):
    """A status json_tensor.cc returns: `code` is its absl (= gRPC) code, `message` its exact text."""

    def __init__(self, code: grpc.StatusCode, message: str):
        message = printable(message)
        super().__init__(message)
        self.code = code
        self.message = message

    def status_string(self) -> str:
        """absl::Status::ToString(), as the row-format errors quote an inner error: "INVALID_ARGUMENT: ..."."""
        return f"{self.code.name}: {self.message}"


def printable(text: str) -> str:
    """Request bytes that are not UTF-8 reach C++ messages raw; here they become U+FFFD, so the text encodes."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate that did not come from a request's bytes
        return text.encode("utf-8", "replace").decode("utf-8")


def invalid(message: str) -> JsonError:
    return JsonError(grpc.StatusCode.INVALID_ARGUMENT, message)
