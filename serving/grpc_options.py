"""gRPC options the server and its clients share. A leaf: the client imports it without the server."""

from __future__ import annotations

# Both ways: a batch of encoded images is far over gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def message_size_options(max_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Channel or server options that let messages of up to `max_bytes` through, sent and received."""
    return [("grpc.max_send_message_length", max_bytes), ("grpc.max_receive_message_length", max_bytes)]
