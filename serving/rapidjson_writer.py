"""JSON written as rapidjson 1.1.0's PrettyWriter<StringBuffer> writes it, for serving/json_tensor.py: TF Serving's
response bodies, and the DOM written back into its error messages (JsonValueToDebugString)."""

from __future__ import annotations

import itertools
import math
import re

from serving.rapidjson_numbers import dtoa
from serving.rapidjson_reader import JsonObject, utf8

_ESCAPE_TABLE = {c: f"\\u{c:04X}" for c in range(0x20)} | {
    0x08: "\\b",
    0x09: "\\t",
    0x0A: "\\n",
    0x0C: "\\f",
    0x0D: "\\r",
    0x22: '\\"',
    0x5C: "\\\\",
}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def quote(text: str) -> str:
    """Writer::WriteString(): escapes quote, backslash and control characters only; the rest goes out as is."""
    return '"' + (text.translate(_ESCAPE_TABLE) if _NEEDS_ESCAPE.search(text) else text) + '"'


class PrettyWriter:
    """PrettyWriter<StringBuffer> with its default 4-space indent. `single_line_arrays` is kFormatSingleLineArray
    and, as SetFormatOptions(), may be switched in the middle of a document. Events return False where
    rapidjson's do (a NaN or infinite double)."""

    def __init__(self, single_line_arrays: bool = False, count_bytes: bool = False):
        self.single_line_arrays = single_line_arrays
        self.size = 0  # bytes written, if count_bytes (JsonWriterWithLimit needs them)
        self._count_bytes = count_bytes
        self._parts: list[str] = []
        self._levels: list[list] = []  # Writer::Level per open container: [in_array, value_count]

    def text(self) -> str:
        return "".join(self._parts)

    def _put(self, text: str) -> None:
        self._parts.append(text)
        if self._count_bytes:
            self.size += len(text) if text.isascii() else len(utf8(text))

    def _indent(self) -> str:
        return " " * (4 * len(self._levels))

    def _prefix(self) -> None:
        """PrettyPrefix(): the separator, newline and indent before a value or key."""
        if not self._levels:
            return
        level = self._levels[-1]
        if level[0]:
            if level[1] > 0:
                self._put(", " if self.single_line_arrays else ",")
            if not self.single_line_arrays:
                self._put("\n" + self._indent())
        else:
            if level[1] > 0:
                self._put(",\n" if level[1] % 2 == 0 else ": ")
            else:
                self._put("\n")
            if level[1] % 2 == 0:
                self._put(self._indent())
        level[1] += 1

    def null(self) -> bool:
        self._prefix()
        self._put("null")
        return True

    def bool(self, value: bool) -> bool:
        self._prefix()
        self._put("true" if value else "false")
        return True

    def raw(self, token: str) -> bool:
        """A value already in JSON form: Int/Uint/Int64/Uint64, or RawValue() as WriteDecimal() uses it."""
        self._prefix()
        self._put(token)
        return True

    def double(self, value: float) -> bool:
        self._prefix()
        if not math.isfinite(value):
            return False  # without kWriteNanAndInfFlag the writer refuses, after the prefix
        self._put(dtoa(value))
        return True

    def string(self, text: str) -> bool:
        self._prefix()
        self._put(quote(text))
        return True

    key = string

    def start_object(self) -> bool:
        self._prefix()
        self._levels.append([False, 0])
        self._put("{")
        return True

    def end_object(self) -> bool:
        if self._levels.pop()[1]:
            self._put("\n" + self._indent())
        self._put("}")
        return True

    def start_array(self) -> bool:
        self._prefix()
        self._levels.append([True, 0])
        self._put("[")
        return True

    def end_array(self) -> bool:
        if self._levels.pop()[1] and not self.single_line_arrays:
            self._put("\n" + self._indent())
        self._put("]")
        return True

    def raw_arrays(self, tokens: list[str], dims: list[int]) -> None:
        """Nested arrays of shape `dims` holding raw tokens, as start_array()/raw()/end_array() events would
        write them, built in one pass for large tensors."""
        self._prefix()
        single_line = self.single_line_arrays

        def render(start: int, dims: list[int], depth: int) -> str:
            count = max(dims[0], 0)
            if not count:
                return "[]"
            if len(dims) == 1:
                items = tokens[start : start + count]
            else:
                step = math.prod(max(d, 0) for d in dims[1:])
                items = [render(start + i * step, dims[1:], depth + 1) for i in range(count)]
            if single_line:
                return "[" + ", ".join(items) + "]"
            inner = "\n" + " " * (4 * depth + 4)
            return "[" + inner + ("," + inner).join(items) + "\n" + " " * (4 * depth) + "]"

        self._put(render(0, dims, len(self._levels)))

    def base64_object(self, encoded: str) -> None:
        """{ "b64": <encoded> }, as AddSingleValueAndAdvance() writes bytes."""
        self.start_object()
        self.key("b64")
        self.string(encoded)
        self.end_object()


class _Key(str):
    """An object member's name among the values _accept_events() walks."""


_END = object()


def _accept_events(value):
    """The handler calls of GenericValue::Accept(), in order, without recursion."""
    stack = [(iter((value,)), None)]
    while stack:
        items, closing = stack[-1]
        item = next(items, _END)
        if item is _END:
            stack.pop()
            if closing:
                yield closing, ()
        elif isinstance(item, JsonObject):
            yield "start_object", ()
            members = itertools.chain.from_iterable((_Key(name), member) for name, member in item.members)
            stack.append((members, "end_object"))
        elif isinstance(item, list):
            yield "start_array", ()
            stack.append((iter(item), "end_array"))
        elif isinstance(item, _Key):
            yield "key", (str(item),)
        elif item is None:
            yield "null", ()
        elif isinstance(item, bool):
            yield "bool", (item,)
        elif isinstance(item, int):
            yield "raw", (str(item),)
        elif isinstance(item, float):
            yield "double", (item,)
        else:
            yield "string", (item,)


_MAX_DEBUG_BYTES = 256  # kMaxJsonDebugStringBytes


def debug_string(value) -> str:
    """JsonValueToDebugString(): single-line arrays, cut at the first event that starts past 256 bytes
    (JsonWriterWithLimit) or at a NaN/Infinity, which the writer refuses."""
    writer = PrettyWriter(single_line_arrays=True, count_bytes=True)
    for method, args in _accept_events(value):
        if writer.size >= _MAX_DEBUG_BYTES or not getattr(writer, method)(*args):
            break
    return writer.text()
