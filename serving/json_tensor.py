"""TF Serving's REST JSON codec, ported from tensorflow_serving/util/json_tensor.{h,cc}.

Requests are read the way TF Serving reads them, with rapidjson 1.1.0 (`kParseIterativeFlag |
kParseNanAndInfFlag | kParseStopWhenDoneFlag`), and responses are written the way its `PrettyWriter` writes
them, so status messages and response bodies match TF Serving's byte for byte. Python's json module parses a
body when it provably agrees with rapidjson (same values, same acceptance); anything else, and every
malformed body, goes to a port of rapidjson's iterative reader, which gives rapidjson's error texts and offsets.

Strings keep the bytes rapidjson keeps: text is decoded with "surrogateescape", so bytes that are not UTF-8
survive into `string_val` unchanged.

Where this differs from the C++ on purpose: several named tensors are taken in name order (C++ follows a
protobuf Map's unspecified order); responses read `tensor_content` too, and a tensor with fewer values than its
shape needs is an INVALID_ARGUMENT (C++ reads past the end); bytes that are not UTF-8 in a response string or a
message become U+FFFD (C++ writes them raw).
"""

from __future__ import annotations

import base64
import binascii
import enum
import itertools
import json
import math
import re
import struct
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import NamedTuple

import grpc
import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, predict_pb2, regression_pb2

from serving.tensors import dtype_name

_T = types_pb2


class JsonPredictRequestFormat(enum.Enum):
    """JsonPredictRequestFormat: which key held the request's tensors, and so which key answers."""

    INVALID = 0
    ROW = 1  # "instances" in, "predictions" out
    COLUMNAR = 2  # "inputs" in, "outputs" out


class JsonError(ValueError):
    """A status json_tensor.cc returns: `code` is its absl (= gRPC) code, `message` its exact text."""

    def __init__(self, code: grpc.StatusCode, message: str):
        message = _printable(message)
        super().__init__(message)
        self.code = code
        self.message = message

    def status_string(self) -> str:
        """absl::Status::ToString(), as the row-format errors quote an inner error: "INVALID_ARGUMENT: ..."."""
        return f"{self.code.name}: {self.message}"


def _printable(text: str) -> str:
    """Request bytes that are not UTF-8 reach C++ messages raw; here they become U+FFFD, so the text encodes."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate that did not come from a request's bytes
        return text.encode("utf-8", "replace").decode("utf-8")


def _invalid(message: str) -> JsonError:
    return JsonError(grpc.StatusCode.INVALID_ARGUMENT, message)


# ---------------------------------------------------------------------------------------------------------------
# Reading JSON as rapidjson 1.1.0 does.


class _JsonObject:
    """A JSON object as rapidjson's DOM keeps it: (name, value) members in order, duplicate names kept."""

    __slots__ = ("members",)

    def __init__(self, members: list | None = None):
        self.members = members if members is not None else []

    def find(self, name: str):
        """GenericValue::FindMember(): the first member with this name, or _MISSING."""
        for key, value in self.members:
            if key == name:
                return value
        return _MISSING


_MISSING = object()


def _utf8(text: str) -> bytes:
    """The bytes rapidjson holds for a string of the DOM."""
    return text.encode("utf-8", "surrogateescape")


class _ParseError(Exception):
    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.message, self.offset = message, offset


class _NeedsReader(Exception):
    """Python's json met something only the rapidjson port can judge."""


# GetParseError_En() texts of the errors the iterative reader can raise.
_DOCUMENT_EMPTY = "The document is empty."
_VALUE_INVALID = "Invalid value."
_MISS_NAME = "Missing a name for object member."
_MISS_COLON = "Missing a colon after a name of object member."
_MISS_COMMA_OR_CURLY = "Missing a comma or '}' after an object member."
_MISS_COMMA_OR_SQUARE = "Missing a comma or ']' after an array element."
_INVALID_HEX = "Incorrect hex digit after \\u escape in string."
_SURROGATE_INVALID = "The surrogate pair in string is invalid."
_ESCAPE_INVALID = "Invalid escape character in string."
_MISS_QUOTATION_MARK = "Missing a closing quotation mark in string."
_NUMBER_TOO_BIG = "Number too big to be stored in double."
_MISS_FRACTION = "Miss fraction part in number."
_MISS_EXPONENT = "Miss exponent in number."

_POW10 = [float(f"1e{n}") for n in range(309)]  # internal::Pow10(): the compiler's correctly rounded literals


def _strtod_normal_precision(d: float, p: int) -> float:
    """internal::StrtodNormalPrecision(): rapidjson's default (not correctly rounded) decimal scaling."""

    def fast_path(significand: float, exp: int) -> float:
        if exp < -308:
            return 0.0
        return significand * _POW10[exp] if exp >= 0 else significand / _POW10[-exp]

    if p < -308:
        return fast_path(fast_path(d, -308), p + 308)
    return fast_path(d, p)


def _read_number(buf: bytes, pos: int) -> tuple[int | float, int]:
    """GenericReader::ParseNumber() with kParseNanAndInfFlag on a 64-bit build: (value, end position).

    Integers in int64/uint64 range stay ints (rapidjson's Int/Uint/Int64/Uint64); everything else is a double
    computed exactly as rapidjson computes it, quirks included ("NaN.5" reads as 0.5)."""
    end = len(buf)

    def peek() -> int:
        return buf[pos] if pos < end else 0

    def consume(char: str) -> bool:
        nonlocal pos
        if peek() == ord(char):
            pos += 1
            return True
        return False

    def is_digit() -> bool:
        return 0x30 <= peek() <= 0x39

    def take_digit() -> int:
        nonlocal pos
        pos += 1
        return buf[pos - 1] - 0x30

    start = pos
    minus = consume("-")
    i = i64 = 0
    use64 = use_double = nan_or_inf = False
    significant = 0
    d = 0.0
    if peek() == 0x30:
        pos += 1
    elif 0x31 <= peek() <= 0x39:
        i = take_digit()
        limit, last = (214748364, 0x38) if minus else (429496729, 0x35)
        while is_digit():
            if i >= limit and (i != limit or peek() > last):
                i64, use64 = i, True
                break
            i = i * 10 + take_digit()
            significant += 1
    elif peek() in (0x49, 0x4E):  # 'I', 'N'
        nan_or_inf = True
        if consume("N") and consume("a") and consume("N"):
            d = math.nan
        elif consume("I") and consume("n") and consume("f"):
            d = -math.inf if minus else math.inf
            if peek() == 0x69 and not all(consume(c) for c in "inity"):
                raise _ParseError(_VALUE_INVALID, pos)
        else:
            raise _ParseError(_VALUE_INVALID, pos)
    else:
        raise _ParseError(_VALUE_INVALID, pos)

    if use64:
        limit, last = (0x0CCCCCCCCCCCCCCC, 0x38) if minus else (0x1999999999999999, 0x35)
        while is_digit():
            if i64 >= limit and (i64 != limit or peek() > last):
                d, use_double = float(i64), True
                break
            i64 = i64 * 10 + take_digit()
            significant += 1
    if use_double:  # an integer past 64 bits continues as a double
        while is_digit():
            if d >= 1.7976931348623157e307:
                raise _ParseError(_NUMBER_TOO_BIG, start)
            d = d * 10 + take_digit()

    exp_frac = 0
    if consume("."):
        if not is_digit():
            raise _ParseError(_MISS_FRACTION, pos)
        if not use_double:
            if not use64:
                i64 = i
            while is_digit() and i64 <= 0x1FFFFFFFFFFFFF:  # 2^53 - 1: the exact fast path
                i64 = i64 * 10 + take_digit()
                exp_frac -= 1
                if i64:
                    significant += 1
            d, use_double = float(i64), True
        while is_digit():
            digit = take_digit()
            if significant < 17:
                d = d * 10.0 + digit
                exp_frac -= 1
                if d > 0.0:
                    significant += 1

    exp = 0
    if consume("e") or consume("E"):
        if not use_double:
            d, use_double = float(i64 if use64 else i), True
        exp_minus = False
        if not consume("+"):
            exp_minus = consume("-")
        if not is_digit():
            raise _ParseError(_MISS_EXPONENT, pos)
        exp = take_digit()
        if exp_minus:
            while is_digit():
                exp = exp * 10 + take_digit()
                if exp >= 214748364:  # rapidjson issue #313: swallow the rest rather than overflow
                    while is_digit():
                        pos += 1
            exp = -exp
        else:
            max_exp = 308 - exp_frac
            while is_digit():
                exp = exp * 10 + take_digit()
                if exp > max_exp:
                    raise _ParseError(_NUMBER_TOO_BIG, start)

    if use_double:
        d = _strtod_normal_precision(d, exp + exp_frac)
        return (-d if minus else d), pos
    if nan_or_inf:
        return d, pos
    value = i64 if use64 else i
    return (-value if minus else value), pos


# Iterative reader states (reader.h IterativeParsingState); the first four are where a value may start.
_START, _KEY_VALUE_DELIMITER, _ARRAY_INITIAL, _ELEMENT_DELIMITER = range(4)
_FINISH, _OBJECT_INITIAL, _MEMBER_KEY, _MEMBER_VALUE, _MEMBER_DELIMITER, _ELEMENT = range(4, 10)
# Predict() then Transit(): the state after a value read in a value position.
_AFTER_VALUE = {
    _START: _FINISH,
    _KEY_VALUE_DELIMITER: _MEMBER_VALUE,
    _ARRAY_INITIAL: _ELEMENT,
    _ELEMENT_DELIMITER: _ELEMENT,
}
# HandleError(): what a state reports for a token it cannot take, or for the end of the input.
_STATE_ERRORS = {
    _START: _DOCUMENT_EMPTY,
    _KEY_VALUE_DELIMITER: _VALUE_INVALID,
    _ARRAY_INITIAL: _VALUE_INVALID,
    _ELEMENT_DELIMITER: _VALUE_INVALID,
    _OBJECT_INITIAL: _MISS_NAME,
    _MEMBER_DELIMITER: _MISS_NAME,
    _MEMBER_KEY: _MISS_COLON,
    _MEMBER_VALUE: _MISS_COMMA_OR_CURLY,
    _ELEMENT: _MISS_COMMA_OR_SQUARE,
}
_WHITESPACE = re.compile(rb"[ \t\n\r]*")
_PLAIN_STRING_RUN = re.compile(rb'[^"\\\x00-\x1f]+')
_STRING_ESCAPES = {ord(escape): ord(char) for escape, char in zip('"\\/bfnrt', '"\\/\b\f\n\r\t', strict=True)}
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_LITERALS = {0x6E: (b"null", None), 0x74: (b"true", True), 0x66: (b"false", False)}


class _Reader:
    """GenericReader::IterativeParse() (rapidjson 1.1.0) over an EncodedInputStream<UTF8<>, MemoryStream>,
    building the DOM a Document would. Iterative, so a 500000-deep body is fine."""

    def __init__(self, data: bytes):
        self.buf = data
        self.pos = 0

    def peek(self) -> int:
        # MemoryStream::Peek() answers '\0' past the end, so a NUL byte also reads as the end of the input.
        return self.buf[self.pos] if self.pos < len(self.buf) else 0

    def parse(self):
        buf, end = self.buf, len(self.buf)
        pos = 0
        for bom_byte in b"\xef\xbb\xbf":  # the stream skips each BOM byte on its own
            if pos < end and buf[pos] == bom_byte:
                pos += 1
        pos = _WHITESPACE.match(buf, pos).end()
        state, root, key, container, open_containers = _START, None, None, None, []

        def attach(value):
            nonlocal root
            if container is None:
                root = value
            elif isinstance(container, _JsonObject):
                container.members.append((key, value))
            else:
                container.append(value)

        # MemoryStream::Peek() answers '\0' past the end, so a NUL byte also reads as the end of the input.
        while pos < end and (char := buf[pos]) != 0:
            if state in _AFTER_VALUE:  # a value may start here
                if char == 0x7B:
                    new = _JsonObject()
                    attach(new)
                    open_containers.append((container, state))
                    container, state = new, _OBJECT_INITIAL
                    pos += 1
                elif char == 0x5B:
                    attach(new := [])
                    open_containers.append((container, state))
                    container, state = new, _ARRAY_INITIAL
                    pos += 1
                    while pos < end and buf[pos] == 0x5B:  # "[[[...": a quick loop, as bodies may nest deep
                        container.append(new := [])
                        open_containers.append((container, _ARRAY_INITIAL))
                        container = new
                        pos += 1
                elif char == 0x5D and state == _ARRAY_INITIAL:
                    container, state = open_containers.pop()
                    state = _AFTER_VALUE[state]
                    pos += 1
                elif char in b"]},:":
                    raise _ParseError(_STATE_ERRORS[state], pos)
                else:
                    self.pos = pos
                    attach(self.value())
                    pos = self.pos
                    state = _AFTER_VALUE[state]
            elif state in (_OBJECT_INITIAL, _MEMBER_DELIMITER):
                if char == 0x22:
                    self.pos = pos
                    key, state = self.string(), _MEMBER_KEY
                    pos = self.pos
                elif char == 0x7D and state == _OBJECT_INITIAL:
                    container, state = open_containers.pop()
                    state = _AFTER_VALUE[state]
                    pos += 1
                else:
                    raise _ParseError(_MISS_NAME, pos)
            elif state == _MEMBER_KEY:
                if char != 0x3A:
                    raise _ParseError(_MISS_COLON, pos)
                state = _KEY_VALUE_DELIMITER
                pos += 1
            else:  # _MEMBER_VALUE or _ELEMENT: a comma or the closing bracket
                if char == 0x2C:
                    state = _MEMBER_DELIMITER if state == _MEMBER_VALUE else _ELEMENT_DELIMITER
                elif char == (0x7D if state == _MEMBER_VALUE else 0x5D):
                    container, state = open_containers.pop()
                    state = _AFTER_VALUE[state]
                    while state == _ELEMENT and pos + 1 < end and buf[pos + 1] == 0x5D:  # "...]]]"
                        pos += 1
                        container, state = open_containers.pop()
                        state = _AFTER_VALUE[state]
                else:
                    raise _ParseError(_STATE_ERRORS[state], pos)
                pos += 1
            if state == _FINISH:  # kParseStopWhenDoneFlag: whatever follows the root is never looked at
                return root
            if pos < end and buf[pos] in b" \t\n\r":
                pos = _WHITESPACE.match(buf, pos).end()
        raise _ParseError(_STATE_ERRORS[state], pos)

    def value(self):
        """ParseValue() for anything but an array or object."""
        char = self.peek()
        if char == 0x22:
            return self.string()
        if char in _LITERALS:
            literal, value = _LITERALS[char]
            self.pos += 1
            for expected in literal[1:]:
                if self.peek() != expected:
                    raise _ParseError(_VALUE_INVALID, self.pos)
                self.pos += 1
            return value
        value, self.pos = _read_number(self.buf, self.pos)
        return value

    def string(self) -> str:
        """ParseString() without encoding validation: bytes pass through as they are."""
        buf, pos, out = self.buf, self.pos + 1, bytearray()
        while True:
            run = _PLAIN_STRING_RUN.match(buf, pos)
            if run:
                out += run.group()
                pos = run.end()
            char = buf[pos] if pos < len(buf) else 0
            if char == 0x22:
                self.pos = pos + 1
                return out.decode("utf-8", "surrogateescape")
            if char == 0:
                raise _ParseError(_MISS_QUOTATION_MARK, pos)
            if char != 0x5C:  # an unescaped control character
                raise _ParseError(_ESCAPE_INVALID, pos)
            escape_offset = pos  # errors in an escape point at its backslash
            escape = buf[pos + 1] if pos + 1 < len(buf) else 0
            if escape in _STRING_ESCAPES:
                out.append(_STRING_ESCAPES[escape])
                pos += 2
            elif escape == 0x75:  # \uXXXX
                codepoint, pos = self._hex4(pos + 2, escape_offset)
                if 0xD800 <= codepoint <= 0xDBFF:
                    if buf[pos : pos + 2] != b"\\u":
                        raise _ParseError(_SURROGATE_INVALID, escape_offset)
                    low, pos = self._hex4(pos + 2, escape_offset)
                    if not 0xDC00 <= low <= 0xDFFF:
                        raise _ParseError(_SURROGATE_INVALID, escape_offset)
                    codepoint = (((codepoint - 0xD800) << 10) | (low - 0xDC00)) + 0x10000
                # A lone low surrogate is written out as its 3 UTF-8-style bytes, as UTF8::Encode does.
                out += chr(codepoint).encode("utf-8", "surrogatepass")
            else:
                raise _ParseError(_ESCAPE_INVALID, escape_offset)

    def _hex4(self, pos: int, escape_offset: int) -> tuple[int, int]:
        digits = self.buf[pos : pos + 4]
        if len(digits) < 4 or not _HEX_DIGITS.issuperset(digits):
            raise _ParseError(_INVALID_HEX, escape_offset)
        return int(digits, 16), pos + 4


# When Python's json may decide alone: no \u escape of a surrogate (Python accepts lone ones, rapidjson does not),
# and no number rapidjson would round differently from Python -- with fewer than 16 digits and a one-digit exponent
# below 8, rapidjson's (significand * or / 10^p) is a single correctly rounded operation, the same as float().
# Otherwise the decoder below hands every number to rapidjson's arithmetic.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# (Two searches: one alternation scans a large body twice as slowly.)
_LONG_NUMBER = re.compile(r"[0-9.]{16}")
_BIG_EXPONENT = re.compile(r"[eE][-+]?(?:\d\d|[89])")
_LEADING_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _port_number(token: str) -> int | float:
    try:
        return _read_number(token.encode("ascii"), 0)[0]
    except _ParseError:
        raise _NeedsReader from None


def _rapidjson_int(token: str) -> int | float:
    """parse_int hook: past 64 bits rapidjson carries on in double arithmetic."""
    value = int(token)
    return value if -(2**63) <= value <= 2**64 - 1 else _port_number(token)


def _rapidjson_float(token: str) -> float:
    """parse_float hook: the double _read_number() gives, computed directly in the common case where every digit
    fits the 64-bit significand (converted to double once) and one multiply or divide by 10^p finishes it."""
    mantissa, exp = token, 0
    if "e" in token or "E" in token:
        mantissa, exp_text = re.split("[eE]", token)
        exp = int(exp_text)
    negative = mantissa.startswith("-")
    int_part, _, frac = mantissa.lstrip("-").partition(".")
    significand = int(int_part + frac)
    p = exp - len(frac)
    # ParseNumber() keeps taking digits into the significand while it is below 2^53.
    if -308 <= p <= 308 and (significand < 2**53 or (significand < 10**17 and significand // 10 < 2**53)):
        d = float(significand)
        d = d * _POW10[p] if p >= 0 else d / _POW10[-p]
        return -d if negative else d
    return _port_number(token)


_PLAIN_DECODER = json.JSONDecoder(object_pairs_hook=_JsonObject)
_EXACT_DECODER = json.JSONDecoder(object_pairs_hook=_JsonObject, parse_float=_rapidjson_float, parse_int=_rapidjson_int)
_BOM = b"\xef\xbb\xbf"


def _read_document(data: bytes):
    """Document::ParseStream<kParseIterativeFlag | kParseNanAndInfFlag | kParseStopWhenDoneFlag>()."""
    text = data[len(_BOM) :] if data.startswith(_BOM) else data
    text = text.decode("utf-8", "surrogateescape")
    if not _SURROGATE_ESCAPE.search(text):
        risky = _LONG_NUMBER.search(text) or _BIG_EXPONENT.search(text)
        decoder = _EXACT_DECODER if risky else _PLAIN_DECODER
        try:
            value, _ = decoder.raw_decode(text, _LEADING_WHITESPACE.match(text).end())
        except (ValueError, RecursionError, _NeedsReader):
            pass
        else:
            # A root that is not an object is an error whose message shows the value; rapidjson reads a root
            # number further than Python ("NaN.5"), so let the port read it.
            if isinstance(value, _JsonObject):
                return value
    return _Reader(data).parse()


def _parse_json(body: str | bytes):
    """ParseJson(): the body's top-level object."""
    if isinstance(body, str):
        try:
            data = body.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            data = body.encode("utf-8", "surrogatepass")
    else:
        data = bytes(body)
    if not data:
        raise _invalid("JSON Parse error: The document is empty")
    try:
        doc = _read_document(data)
    except _ParseError as exc:
        raise _invalid(f"JSON Parse error: {exc.message} at offset: {exc.offset}") from None
    if not isinstance(doc, _JsonObject):
        raise _format_error(doc, "Is not object")
    return doc


# ---------------------------------------------------------------------------------------------------------------
# Writing JSON as rapidjson 1.1.0's PrettyWriter<StringBuffer> does.

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


def _quote(text: str) -> str:
    """Writer::WriteString(): escapes quote, backslash and control characters only; the rest goes out as is."""
    return '"' + (text.translate(_ESCAPE_TABLE) if _NEEDS_ESCAPE.search(text) else text) + '"'


class _PrettyWriter:
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
            self.size += len(text) if text.isascii() else len(_utf8(text))

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
        self._put(_dtoa(value))
        return True

    def string(self, text: str) -> bool:
        self._prefix()
        self._put(_quote(text))
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


# internal::dtoa(): Grisu2 plus Prettify(), rapidjson's shortest-ish double formatting (error messages show
# request numbers this way, so it is ported rather than approximated with repr()).
_M64 = (1 << 64) - 1
_DOUBLE_BITS = struct.Struct("<d")
_UINT64_BITS = struct.Struct("<Q")


def _cached_power_table() -> list[tuple[int, int]]:
    """kCachedPowers_F/E: 10^k for k = -348, -340, ..., 340 as a 64-bit significand (rounded) and exponent."""
    table = []
    for k in range(-348, 341, 8):
        value = Fraction(10) ** k
        e = value.numerator.bit_length() - value.denominator.bit_length() - 64
        while value / Fraction(2) ** e >= 1 << 64:
            e += 1
        while value / Fraction(2) ** e < 1 << 63:
            e -= 1
        table.append((round(value / Fraction(2) ** e), e))
    return table


_CACHED_POWERS = _cached_power_table()


def _diy_multiply(f1: int, e1: int, f2: int, e2: int) -> tuple[int, int]:
    product = f1 * f2
    return (product >> 64) + ((product >> 63) & 1), e1 + e2 + 64


def _grisu2(value: float) -> tuple[list[int], int]:
    """Grisu2(): the digits and decimal exponent K of a positive finite double."""
    bits = _UINT64_BITS.unpack(_DOUBLE_BITS.pack(value))[0]
    biased_e, significand = bits >> 52, bits & ((1 << 52) - 1)
    f, e = (significand + (1 << 52), biased_e - 1075) if biased_e else (significand, -1074)

    # NormalizedBoundaries()
    plus_f, plus_e = (f << 1) + 1, e - 1
    while not plus_f & (1 << 53):
        plus_f, plus_e = plus_f << 1, plus_e - 1
    plus_f, plus_e = plus_f << 10, plus_e - 10
    minus_f, minus_e = ((f << 2) - 1, e - 2) if f == 1 << 52 else ((f << 1) - 1, e - 1)
    minus_f <<= minus_e - plus_e

    # GetCachedPower()
    dk = (-61 - plus_e) * 0.30102999566398114 + 347
    k = int(dk) + (1 if dk - int(dk) > 0.0 else 0)
    index = (k >> 3) + 1
    big_k = -(-348 + (index << 3))
    c_f, c_e = _CACHED_POWERS[index]

    shift = 64 - f.bit_length()
    w_f, _ = _diy_multiply(f << shift, e - shift, c_f, c_e)
    wp_f, wp_e = _diy_multiply(plus_f, plus_e, c_f, c_e)
    wm_f, _ = _diy_multiply(minus_f, plus_e, c_f, c_e)
    wm_f += 1
    wp_f -= 1
    return _digit_gen(w_f, wp_f, wp_e, wp_f - wm_f, big_k)


def _digit_gen(w_f: int, mp_f: int, mp_e: int, delta: int, big_k: int) -> tuple[list[int], int]:
    """DigitGen() and GrisuRound()."""
    one_shift = -mp_e
    one_f = 1 << one_shift
    wp_w = (mp_f - w_f) & _M64
    p1, p2 = mp_f >> one_shift, mp_f & (one_f - 1)
    kappa = next((n for n in range(1, 9) if p1 < 10**n), 9)  # CountDecimalDigit32()
    digits: list[int] = []

    def grisu_round(rest: int, ten_kappa: int, wp_w: int) -> None:
        while (
            rest < wp_w
            and delta - rest >= ten_kappa
            and (rest + ten_kappa < wp_w or wp_w - rest > rest + ten_kappa - wp_w)
        ):
            digits[-1] -= 1
            rest += ten_kappa

    while kappa > 0:
        digit, p1 = divmod(p1, 10 ** (kappa - 1))
        if digit or digits:
            digits.append(digit)
        kappa -= 1
        rest = (p1 << one_shift) + p2
        if rest <= delta:
            grisu_round(rest, (10**kappa) << one_shift, wp_w)
            return digits, big_k + kappa
    while True:
        p2 = (p2 * 10) & _M64
        delta = (delta * 10) & _M64
        digit = p2 >> one_shift
        if digit or digits:
            digits.append(digit)
        p2 &= one_f - 1
        kappa -= 1
        if p2 < delta:
            grisu_round(p2, one_f, (wp_w * (10**-kappa if -kappa < 9 else 0)) & _M64)
            return digits, big_k + kappa


def _dtoa(value: float) -> str:
    """internal::dtoa() with the writer's default maxDecimalPlaces (324, so nothing is truncated)."""
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    digit_list, k = _grisu2(abs(value))
    digits = "".join(map(str, digit_list))
    length = len(digits)
    kk = length + k  # 10^(kk-1) <= v < 10^kk
    if k >= 0 and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif kk < -324:
        text = "0.0"
    elif length == 1:
        text = f"{digits}e{kk - 1}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + text


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
        elif isinstance(item, _JsonObject):
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


def _debug_string(value) -> str:
    """JsonValueToDebugString(): single-line arrays, cut at the first event that starts past 256 bytes
    (JsonWriterWithLimit) or at a NaN/Infinity, which the writer refuses."""
    writer = _PrettyWriter(single_line_arrays=True, count_bytes=True)
    for method, args in _accept_events(value):
        if writer.size >= _MAX_DEBUG_BYTES or not getattr(writer, method)(*args):
            break
    return writer.text()


# ---------------------------------------------------------------------------------------------------------------
# json_tensor.cc helpers.


def _json_type(value) -> str:
    """JsonTypeString()."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, _JsonObject):
        return "Object"
    if isinstance(value, list):
        return "Array"
    return "String" if isinstance(value, str) else "Number"


def _format_error(value, message: str) -> JsonError:
    """FormatError()."""
    return _invalid(f"JSON Value: {_debug_string(value)} {message}")


def _type_error(value, dtype: int) -> JsonError:
    """TypeError()."""
    return _invalid(
        f"JSON Value: {_debug_string(value)} Type: {_json_type(value)} is not of expected type: {dtype_name(dtype)}"
    )


def _c_str(name: str) -> str:
    # json_tensor.cc copies member names with `string name = kv.name.GetString()`, which stops at a NUL.
    return name.split("\0", 1)[0]


def _int_range(low: int, high: int) -> Callable[[object], bool]:
    """rapidjson's IsInt()/IsUint()/IsInt64()/IsUint64(): an integer token within range (never a double)."""
    return lambda value: type(value) is int and low <= value <= high


_is_int32 = _int_range(-(2**31), 2**31 - 1)
_is_uint32 = _int_range(0, 2**32 - 1)
_is_int64 = _int_range(-(2**63), 2**63 - 1)
_is_uint64 = _int_range(0, 2**64 - 1)


def _is_number(value) -> bool:
    return type(value) is int or type(value) is float


class _TensorField(NamedTuple):
    """How AddValueToTensor() fills one dtype."""

    name: str  # the TensorProto field
    accepts: Callable[[object], bool]  # the rapidjson Is*() check
    convert: Callable  # the Get*() conversion
    kinds: set  # Python types a whole list of leaves may be checked against at once...
    bounds: tuple[int, int] | None  # ...and integer bounds


_INT32_BOUNDS, _INT64_BOUNDS = (-(2**31), 2**31 - 1), (-(2**63), 2**63 - 1)
_TENSOR_FIELDS = {
    _T.DT_FLOAT: _TensorField("float_val", _is_number, float, {int, float}, None),
    _T.DT_DOUBLE: _TensorField("double_val", _is_number, float, {int, float}, None),
    _T.DT_INT32: _TensorField("int_val", _is_int32, int, {int}, _INT32_BOUNDS),
    _T.DT_INT16: _TensorField("int_val", _is_int32, int, {int}, _INT32_BOUNDS),
    _T.DT_INT8: _TensorField("int_val", _is_int32, int, {int}, _INT32_BOUNDS),
    _T.DT_UINT8: _TensorField("int_val", _is_int32, int, {int}, _INT32_BOUNDS),
    _T.DT_STRING: _TensorField("string_val", lambda v: isinstance(v, str), _utf8, {str}, None),
    _T.DT_INT64: _TensorField("int64_val", _is_int64, int, {int}, _INT64_BOUNDS),
    _T.DT_BOOL: _TensorField("bool_val", lambda v: isinstance(v, bool), bool, {bool}, None),
    _T.DT_UINT32: _TensorField("uint32_val", _is_uint32, int, {int}, (0, 2**32 - 1)),
    _T.DT_UINT64: _TensorField("uint64_val", _is_uint64, int, {int}, (0, 2**64 - 1)),
}


def _is_base64_object(value) -> bool:
    """IsValBase64Object(): exactly one member, "b64", holding a string."""
    if not isinstance(value, _JsonObject) or len(value.members) != 1:
        return False
    name, member = value.members[0]
    return name == "b64" and isinstance(member, str)


_BASE64_TEXT = re.compile(rb"([A-Za-z0-9+/\s]*)([=.\s]*)")


def _base64_unescape(text: str) -> bytes | None:
    """absl::Base64Unescape(): whitespace ignored, padding ('=' or '.') optional but if present exactly right."""
    if len(text) % 4 == 0:  # the usual canonical form (padded, no whitespace) decodes alike; the rest is checked below
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass
    match = _BASE64_TEXT.fullmatch(_utf8(text))
    if match is None:
        return None
    data = re.sub(rb"\s", b"", match.group(1))
    left_over = len(data) % 4
    pads = len(re.sub(rb"\s", b"", match.group(2)))
    if left_over == 1 or pads not in (0, {0: 0, 2: 2, 3: 1}[left_over]):
        return None
    return base64.b64decode(data + b"=" * (-len(data) % 4))


def _decode_base64_object(value) -> bytes:
    """JsonDecodeBase64Object()."""
    if not _is_base64_object(value):
        raise _invalid(f"JSON Value: {_debug_string(value)} not formatted correctly for base64 data")
    decoded = _base64_unescape(value.members[0][1])
    if decoded is None:
        raise _invalid("Unable to base64 decode")
    return decoded


def _tensor_value(value, dtype: int):
    """One leaf: a base64 object for strings, else AddValueToTensor()'s checked conversion."""
    if isinstance(value, _JsonObject):
        if dtype == _T.DT_STRING:
            return _decode_base64_object(value)
        raise _type_error(value, dtype)
    field = _TENSOR_FIELDS.get(dtype)
    if field is None:
        raise JsonError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"Conversion of JSON Value: {_debug_string(value)} to type: {dtype_name(dtype)}",
        )
    if not field.accepts(value):
        raise _type_error(value, dtype)
    return field.convert(value)


def _leaf_list(values: list, dtype: int) -> list | None:
    """The converted values of a list of plain leaves all of the dtype's kind, or None to check one by one."""
    if not values:
        return []
    field = _TENSOR_FIELDS.get(dtype)
    if field is None or not set(map(type, values)) <= field.kinds:
        return None
    if field.bounds and (min(values) < field.bounds[0] or max(values) > field.bounds[1]):
        return None
    return list(map(field.convert, values))


def _dense_shape(value) -> list[int]:
    """GetDenseTensorShape(): list sizes down the chain of first elements."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _tensor_values(value, shape: list[int], dtype: int) -> list:
    """FillTensorProto(): the leaves of `value` in row-major order, checked against `shape` and converted."""
    # Fast path: flatten level by level, then check all leaves at once. Anything irregular (and base64 objects)
    # takes the walk below, which finds the first problem in document order as the C++ recursion does.
    items = [value]
    for size in shape:
        if not all(type(item) is list and len(item) == size for item in items):
            break
        items = list(itertools.chain.from_iterable(items))
    else:
        leaves = _leaf_list(items, dtype)
        if leaves is not None:
            return leaves

    rank = len(shape)
    out: list = []
    pending = [(value, 0)]
    while pending:
        item, level = pending.pop()
        if not isinstance(item, list):
            # A dense tensor's DOM has every value at the same (leaf) level, the rank.
            if level != rank:
                raise _invalid(
                    f"JSON Value: {_debug_string(item)} found at incorrect level: {level + 1} in the JSON DOM."
                    f" Expected at level: {rank}"
                )
            out.append(_tensor_value(item, dtype))
            continue
        if level >= rank:
            raise _invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(item) != shape[level]:
            raise _invalid(
                f"Encountered list at unexpected size: {len(item)} at level: {level} expected size: {shape[level]}"
            )
        pending.extend((element, level + 1) for element in reversed(item))
    return out


def _set_tensor(tensor: tensor_pb2.TensorProto, dtype: int, shape: list[int], values: list) -> None:
    tensor.dtype = dtype
    tensor.tensor_shape.SetInParent()  # mutable_tensor_shape(): present even for a scalar
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    if values:
        getattr(tensor, _TENSOR_FIELDS[dtype].name).extend(values)


def _fill_signature(doc: _JsonObject, request) -> None:
    """FillSignature(): the optional "signature_name" into model_spec."""
    name = doc.find("signature_name")
    if name is _MISSING:
        return
    if not isinstance(name, str):
        raise _invalid(
            f"JSON Value: {_debug_string(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    request.model_spec.signature_name = _printable(name)


# ---------------------------------------------------------------------------------------------------------------
# Predict requests.

TensorInfoMap = Mapping[str, meta_graph_pb2.TensorInfo]


def fill_predict_request_from_json(
    body: str | bytes,
    get_signature_inputs: Callable[[str], TensorInfoMap],
    request: predict_pb2.PredictRequest,
) -> JsonPredictRequestFormat:
    """FillPredictRequestFromJson(): fill `request.model_spec.signature_name` and `request.inputs` from a REST
    predict body, "instances" (row) or "inputs" (columnar). `get_signature_inputs(signature_name)` returns the
    signature's input TensorInfos ("" = default signature); whatever it raises propagates."""
    doc = _parse_json(body)
    _fill_signature(doc, request)
    signature_name = request.model_spec.signature_name
    infos = get_signature_inputs(signature_name)
    if not infos:
        raise _invalid(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")

    instances, inputs = doc.find("instances"), doc.find("inputs")
    if instances is not _MISSING:
        if inputs is not _MISSING:
            raise _format_error(
                doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
            )
        if not isinstance(instances, list):
            raise _format_error(doc, "Expecting 'instances' to be an list/array")
        if not instances:
            raise _format_error(doc, "No values in 'instances' array")
        _fill_from_instances(instances, infos, request.inputs)
        return JsonPredictRequestFormat.ROW
    if inputs is not _MISSING:
        _fill_from_inputs(inputs, infos, request.inputs)
        return JsonPredictRequestFormat.COLUMNAR
    raise _invalid("Missing 'inputs' or 'instances' key")


def _is_element_object(value) -> bool:
    return isinstance(value, _JsonObject) and not _is_base64_object(value)


def _fill_from_instances(instances: list, infos: TensorInfoMap, tensor_map) -> None:
    """FillTensorMapFromInstancesList(): every instance one row of each named input; all rows must agree in
    shape, and the batch size becomes the first dimension."""
    if not isinstance(instances[0], _JsonObject) and len(infos) > 1:
        raise _invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per"
            " tensorinfo_map"
        )
    # C++ iterates a protobuf Map (unspecified order) and a std::set (sorted); sorted names stand for both.
    input_names = sorted(infos)
    elements_are_objects = _is_element_object(instances[0])
    tensor_map.clear()
    values: dict[str, list] = {}  # the tensor values so far, per input
    sizes: dict[str, int] = {}  # values per instance, per input
    shapes: dict[str, list[int]] = {}  # shape per instance, per input

    def add_instance_item(item, name: str) -> None:
        """AddInstanceItem()."""
        if name not in infos:
            raise _invalid(f"JSON object: does not have named input: {name}")
        shape = _dense_shape(item)
        item_values = _tensor_values(item, shape, infos[name].dtype)
        if name not in sizes:
            sizes[name], shapes[name] = len(item_values), shape
        elif sizes[name] != len(item_values):
            raise _invalid(f"Expecting tensor size: {sizes[name]} but got: {len(item_values)}")
        elif shapes[name] != shape:
            raise _invalid(f"Expecting shape {_shape_string(shapes[name])} but got: {_shape_string(shape)}")
        values.setdefault(name, []).extend(item_values)

    for count, element in enumerate(instances):
        if elements_are_objects:
            if not _is_element_object(element):
                raise _invalid(f"Expecting object but got list at item {count} of input list")
            keys = set()
            for key, item in element.members:
                name = _c_str(key)
                keys.add(name)
                try:
                    add_instance_item(item, name)
                except JsonError as exc:
                    raise _invalid(
                        f"Failed to process element: {count} key: {name} of 'instances' list."
                        f" Error: {exc.status_string()}"
                    ) from None
            if keys != set(input_names):
                raise _invalid(
                    f"Failed to process element: {count} of 'instances' list. JSON object:"
                    f" {_debug_string(element)} keys must be equal to: {','.join(input_names)}"
                )
        else:
            if _is_element_object(element):
                raise _invalid(f"Expecting value/list but got object at item {count} of input list")
            try:
                add_instance_item(element, input_names[0])
            except JsonError as exc:
                raise _invalid(
                    f"Failed to process element: {count} of 'instances' list. Error: {exc.status_string()}"
                ) from None

    for name, name_values in values.items():
        _set_tensor(tensor_map[name], infos[name].dtype, [len(instances), *shapes[name]], name_values)


def _shape_string(shape: list[int]) -> str:
    """ShapeToString(): "[3,2]"."""
    return "[" + ",".join(map(str, shape)) + "]"


def _fill_from_inputs(inputs, infos: TensorInfoMap, tensor_map) -> None:
    """FillTensorMapFromInputsMap(): one value or list for a single input, else an object keyed by input name;
    each input keeps its own shape."""
    if not isinstance(inputs, _JsonObject) or _is_base64_object(inputs):
        if len(infos) > 1:
            raise _invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per"
                " tensorinfo_map"
            )
        items = {next(iter(infos)): inputs}
    else:
        items = {name: inputs.find(name) for name in sorted(infos)}  # filled in this order, as C++ iterates
    for name, item in items.items():
        if item is _MISSING:
            raise _invalid(f"Missing named input: {name} in 'inputs' object.")
        dtype = infos[name].dtype
        shape = _dense_shape(item)
        tensor = tensor_map[name]
        tensor.Clear()
        _set_tensor(tensor, dtype, shape, _tensor_values(item, shape, dtype))


# ---------------------------------------------------------------------------------------------------------------
# Classify and regress requests.

_FEATURE_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}


def _add_feature_value(value, name: str, feature: feature_pb2.Feature) -> None:
    """AddValueToFeature(): strings and base64 objects are bytes, doubles float, integers and bools int64."""
    if value is None or isinstance(value, list) or (isinstance(value, _JsonObject) and not _is_base64_object(value)):
        raise _invalid(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
    if isinstance(value, (str, _JsonObject)):
        kind = "bytes_list"
    elif isinstance(value, float):
        kind = "float_list"
    else:
        kind = "int64_list"
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
        raise _invalid(f"Unexpected element type in feature: {name} expecting type: {_FEATURE_KIND_NAMES[current]}")
    if isinstance(value, _JsonObject):
        value = _decode_base64_object(value)
    elif isinstance(value, str):
        value = _utf8(value)
    elif type(value) is int and not _is_int64(value):
        raise _invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
    getattr(feature, kind).value.append(int(value) if isinstance(value, bool) else value)


def _fill_example(value, example: example_pb2.Example) -> None:
    """MakeExampleFromJsonObject(): each member a feature, its value one element or a list of them."""
    if not isinstance(value, _JsonObject):
        raise _invalid(f"Example must be JSON object but got JSON {_json_type(value)}")
    for key, content in value.members:
        name = _c_str(key)
        feature = feature_pb2.Feature()
        for element in content if isinstance(content, list) else (content,):
            _add_feature_value(element, name, feature)
        example.features.feature[name].CopyFrom(feature)


def _fill_classify_regress_request(body: str | bytes, request) -> None:
    """FillClassifyRegressRequestFromJson()."""
    doc = _parse_json(body)
    _fill_signature(doc, request)
    context = doc.find("context")
    if context is not _MISSING:
        request.input.example_list_with_context.context.SetInParent()  # mutable_context(): set even if {}
        _fill_example(context, request.input.example_list_with_context.context)
    examples = doc.find("examples")
    if examples is _MISSING:
        # TF Serving says "classify" for regress requests too.
        raise _format_error(doc, "When method is classify, key 'examples' is expected and was not found")
    if not isinstance(examples, list):
        raise _format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(doc, "'examples' value is an empty array")
    example_list = request.input.example_list_with_context if context is not _MISSING else request.input.example_list
    for value in examples:
        _fill_example(value, example_list.examples.add())


def fill_classification_request_from_json(body: str | bytes, request: classification_pb2.ClassificationRequest) -> None:
    """FillClassificationRequestFromJson(): "signature_name", "context" and "examples" into `request`."""
    _fill_classify_regress_request(body, request)


def fill_regression_request_from_json(body: str | bytes, request: regression_pb2.RegressionRequest) -> None:
    """FillRegressionRequestFromJson(): as for classification."""
    _fill_classify_regress_request(body, request)


# ---------------------------------------------------------------------------------------------------------------
# Responses.

_FLOAT32_BITS = struct.Struct("<f")


def _round_to_float32(value: float) -> float:
    return _FLOAT32_BITS.unpack(_FLOAT32_BITS.pack(value))[0]


def _parse_float32(text: str) -> float:
    """absl::SimpleAtof(): the float32 nearest the decimal text (not via a double, which can round twice)."""
    as_double = float(text)
    single = _round_to_float32(as_double)
    bits = _UINT64_BITS.unpack(_DOUBLE_BITS.pack(as_double))[0]
    # Rounding twice can only go wrong when the double lands exactly halfway between two float32s.
    if single != as_double and (abs(as_double) < 2.0**-126 or bits & 0x1FFFFFFF == 0x10000000):
        exact = Fraction(text)
        other = float(np.nextafter(np.float32(single), np.float32(math.copysign(math.inf, as_double - single))))
        midpoint = Fraction(single) / 2 + Fraction(other) / 2
        if exact != midpoint and (exact > midpoint) == (other > single):
            single = other
    return single


def _write_decimal(value: float, is_float32: bool) -> str:
    """WriteDecimal(): absl::StrCat()'s six digits when they read back as the same number, else max_digits10;
    ".0" on whole numbers not in exponent form; NaN and [-]Infinity for the rest."""
    if math.isfinite(value):
        text = f"{value:g}"
        if (_parse_float32(text) if is_float32 else float(text)) != value:
            text = f"{value:.9g}" if is_float32 else f"{value:.17g}"
        if "." not in text and "e" not in text:
            text += ".0"
        return text
    if math.isnan(value):
        return "NaN"
    return "-Infinity" if value < 0 else "Infinity"


_NON_FINITE_NAMES = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _write_decimals(values, is_float32: bool) -> list[str]:
    """_write_decimal() over a whole tensor, with the read-back check done by numpy."""
    texts = [f"{value:g}" for value in values]
    read_back = np.array(texts, dtype=np.float64)
    if is_float32:
        as_double = read_back
        with np.errstate(over="ignore"):
            read_back = as_double.astype(np.float32).astype(np.float64)
        # Where rounding via double may be wrong (see _parse_float32), ask the exact parser.
        bits = as_double.view(np.uint64)
        unsure = (read_back != as_double) & (((bits & 0x1FFFFFFF) == 0x10000000) | (np.abs(as_double) < 2.0**-126))
        for i in np.flatnonzero(unsure):
            read_back[i] = _parse_float32(texts[i])
    spec = ".9g" if is_float32 else ".17g"
    for i in np.flatnonzero(read_back != np.asarray(values, dtype=np.float64)):
        texts[i] = format(values[i], spec)
    return [_NON_FINITE_NAMES.get(text) or (text if "." in text or "e" in text else text + ".0") for text in texts]


def _format_floats(values) -> list[str]:
    return _write_decimals(values, True)


def _format_doubles(values) -> list[str]:
    return _write_decimals(values, False)


def _format_ints(values) -> list[str]:
    return list(map(str, values))


def _format_bools(values) -> list[str]:
    return ["true" if value else "false" for value in values]


# AddSingleValueAndAdvance(): dtype -> (typed field, little-endian numpy dtype of tensor_content, formatter).
_OUTPUT_FIELDS = {
    _T.DT_FLOAT: ("float_val", "<f4", _format_floats),
    _T.DT_DOUBLE: ("double_val", "<f8", _format_doubles),
    _T.DT_INT32: ("int_val", "<i4", _format_ints),
    _T.DT_INT16: ("int_val", "<i2", _format_ints),
    _T.DT_INT8: ("int_val", "i1", _format_ints),
    _T.DT_UINT8: ("int_val", "u1", _format_ints),
    _T.DT_STRING: ("string_val", None, None),
    _T.DT_INT64: ("int64_val", "<i8", _format_ints),
    _T.DT_BOOL: ("bool_val", "?", _format_bools),
    _T.DT_UINT32: ("uint32_val", "<u4", _format_ints),
    _T.DT_UINT64: ("uint64_val", "<u8", _format_ints),
}


class _TensorLeaves:
    """A response tensor's values in order, as JSON tokens (AddSingleValueAndAdvance()'s `offset`). Values come
    from the typed field or, for tensors built with tensor_content, from that; they are rendered on first use,
    so a tensor with no values never fails on its dtype (as in C++)."""

    def __init__(self, name: str, tensor: tensor_pb2.TensorProto):
        self.name, self.tensor = name, tensor
        # IsNamedTensorBytes(): a string tensor whose name ends in "_bytes" is written base64-encoded.
        self.as_bytes = tensor.dtype == _T.DT_STRING and name.endswith("_bytes")
        self.offset = 0
        self._tokens: list[str] | None = None

    def take(self, count: int) -> list[str]:
        if count <= 0:
            return []
        if self._tokens is None:
            self._tokens = self._render()
        end = self.offset + count
        if end > len(self._tokens):
            # C++ would read past the end of the typed field here.
            raise _invalid(
                f"Tensor name: {self.name} has {len(self._tokens)} values, fewer than its tensor_shape needs"
            )
        tokens = self._tokens[self.offset : end]
        self.offset = end
        return tokens

    def _render(self) -> list[str]:
        tensor = self.tensor
        spec = _OUTPUT_FIELDS.get(tensor.dtype)
        if spec is None:
            raise _invalid(f"Failed to write JSON value for tensor type: {dtype_name(tensor.dtype)}")
        field, content_dtype, formatter = spec
        if tensor.dtype == _T.DT_STRING:
            if self.as_bytes:
                return [base64.b64encode(value).decode("ascii") for value in tensor.string_val]
            # Bytes that are not UTF-8 become U+FFFD: C++ writes them raw, which no JSON reader accepts.
            return [_quote(value.decode("utf-8", "replace")) for value in tensor.string_val]
        if tensor.tensor_content:
            item_type = np.dtype(content_dtype)
            count = len(tensor.tensor_content) // item_type.itemsize
            values = np.frombuffer(tensor.tensor_content, dtype=item_type, count=count).tolist()
        else:
            values = list(getattr(tensor, field))
        return formatter(values)


def _add_tensor_values(writer: _PrettyWriter, leaves: _TensorLeaves, dims: list[int], dim: int) -> None:
    """AddTensorValues(): dimensions dims[dim:] as nested arrays; past the last one, a bare value."""
    if dim > len(dims) - 1:
        (token,) = leaves.take(1)
        if leaves.as_bytes:
            writer.base64_object(token)
        else:
            writer.raw(token)
    elif not leaves.as_bytes:
        writer.raw_arrays(leaves.take(math.prod(max(d, 0) for d in dims[dim:])), dims[dim:])
    elif dim == len(dims) - 1:
        writer.start_array()
        for token in leaves.take(dims[dim]):
            writer.base64_object(token)
        writer.end_array()
    else:
        writer.start_array()
        for _ in range(dims[dim]):
            _add_tensor_values(writer, leaves, dims, dim + 1)
        writer.end_array()


def make_json_from_tensors(outputs: Mapping[str, tensor_pb2.TensorProto], fmt: JsonPredictRequestFormat) -> str:
    """MakeJsonFromTensors(): {"predictions": [...]} (row: one entry per batch item, an object per item when
    there are several outputs) or {"outputs": ...} (columnar: the tensor, or an object of tensors). Outputs are
    written in name order (C++ follows a protobuf Map's unspecified order)."""
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    if fmt is JsonPredictRequestFormat.INVALID:
        raise _invalid("Invalid request format")
    names = sorted(outputs)
    dims = {name: [dim.size for dim in outputs[name].tensor_shape.dim] for name in names}
    leaves = {name: _TensorLeaves(name, outputs[name]) for name in names}
    several = len(names) > 1
    writer = _PrettyWriter()
    writer.start_object()

    if fmt is JsonPredictRequestFormat.ROW:
        # MakeRowFormatJsonFromTensors(): the first dimension is the batch, the same for every output.
        batch_size = -1
        for name in names:
            if not dims[name]:
                raise _invalid(f"Tensor name: {name} has no shape information ")
            if batch_size >= 0 and batch_size != dims[name][0]:
                raise _invalid(
                    f"Tensor name: {name} has inconsistent batch size: {dims[name][0]} expecting: {batch_size}"
                )
            batch_size = dims[name][0]
        writer.key("predictions")
        writer.start_array()
        for _ in range(batch_size):
            if several:
                writer.start_object()
            writer.single_line_arrays = True
            for name in names:
                if several:
                    writer.key(name)
                _add_tensor_values(writer, leaves[name], dims[name], 1)
            writer.single_line_arrays = False
            if several:
                writer.end_object()
        writer.end_array()
    else:
        # MakeColumnarFormatJsonFromTensors()
        writer.key("outputs")
        if several:
            writer.start_object()
        for name in names:
            if several:
                writer.key(name)
            _add_tensor_values(writer, leaves[name], dims[name], 0)
        if several:
            writer.end_object()

    writer.end_object()
    return writer.text()


def make_json_from_classification_result(result: classification_pb2.ClassificationResult) -> str:
    """MakeJsonFromClassificationResult(): {"results": [[["label", score], ...], ...]}, one list per example."""
    if not result.classifications:
        raise _invalid("Cannot convert empty ClassificationResults to JSON")
    writer = _PrettyWriter()
    writer.start_object()
    writer.key("results")
    writer.start_array()
    for classifications in result.classifications:
        writer.single_line_arrays = True
        writer.start_array()
        for element in classifications.classes:
            writer.start_array()
            writer.string(element.label)
            writer.raw(_write_decimal(element.score, True))
            writer.end_array()
        writer.end_array()
        writer.single_line_arrays = False
    writer.end_array()
    writer.end_object()
    return writer.text()


def make_json_from_regression_result(result: regression_pb2.RegressionResult) -> str:
    """MakeJsonFromRegressionResult(): {"results": [value, ...]}, one value per example."""
    if not result.regressions:
        raise _invalid("Cannot convert empty RegressionResults to JSON")
    writer = _PrettyWriter()
    writer.start_object()
    writer.key("results")
    writer.single_line_arrays = True
    values = [_write_decimal(regression.value, True) for regression in result.regressions]
    writer.raw_arrays(values, [len(values)])
    writer.end_object()
    return writer.text()


def make_json_from_status(code: str | grpc.StatusCode | int, message: str) -> str:
    """MakeJsonFromStatus(): {"error": "<message>"}, or "" when the status is OK."""
    if isinstance(code, grpc.StatusCode):
        ok = code is grpc.StatusCode.OK
    elif isinstance(code, int):
        ok = code == 0
    else:
        ok = code.upper() == "OK"
    if ok:
        return ""
    writer = _PrettyWriter()
    writer.start_object()
    writer.key("error")
    writer.string(_printable(message))
    writer.end_object()
    return writer.text()
