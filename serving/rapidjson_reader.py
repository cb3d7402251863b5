"""JSON read as rapidjson 1.1.0 reads it (`kParseIterativeFlag | kParseNanAndInfFlag | kParseStopWhenDoneFlag`),
into the DOM a rapidjson Document holds, for serving/json_tensor.py.

Python's json module parses a body when it provably agrees with rapidjson (same values, same acceptance);
anything else, and every malformed body, goes to a port of rapidjson's iterative reader, which gives rapidjson's
error texts and offsets. Strings keep the bytes rapidjson keeps: text is decoded with "surrogateescape", so bytes
that are not UTF-8 survive unchanged.
"""

from __future__ import annotations

import json
import re

from serving.rapidjson_numbers import (
    VALUE_INVALID,
    NeedsReader,
    ParseError,
    rapidjson_float,
    rapidjson_int,
    read_number,
)


class JsonObject:
    """A JSON object as rapidjson's DOM keeps it: (name, value) members in order, duplicate names kept."""

    __slots__ = ("members",)

    def __init__(self, members: list | None = None):
        self.members = members if members is not None else []

    def find(self, name: str):
        """GenericValue::FindMember(): the first member with this name, or MISSING."""
        for key, value in self.members:
            if key == name:
                return value
        return MISSING


MISSING = object()


def utf8(text: str) -> bytes:
    """The bytes rapidjson holds for a string of the DOM."""
    return text.encode("utf-8", "surrogateescape")


# GetParseError_En() texts of the errors the iterative reader can raise.
_DOCUMENT_EMPTY = "The document is empty."
_MISS_NAME = "Missing a name for object member."
_MISS_COLON = "Missing a colon after a name of object member."
_MISS_COMMA_OR_CURLY = "Missing a comma or '}' after an object member."
_MISS_COMMA_OR_SQUARE = "Missing a comma or ']' after an array element."
_INVALID_HEX = "Incorrect hex digit after \\u escape in string."
_SURROGATE_INVALID = "The surrogate pair in string is invalid."
_ESCAPE_INVALID = "Invalid escape character in string."
_MISS_QUOTATION_MARK = "Missing a closing quotation mark in string."

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
    _KEY_VALUE_DELIMITER: VALUE_INVALID,
    _ARRAY_INITIAL: VALUE_INVALID,
    _ELEMENT_DELIMITER: VALUE_INVALID,
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
            elif isinstance(container, JsonObject):
                container.members.append((key, value))
            else:
                container.append(value)

        # MemoryStream::Peek() answers '\0' past the end, so a NUL byte also reads as the end of the input.
        while pos < end and (char := buf[pos]) != 0:
            if state in _AFTER_VALUE:  # a value may start here
                if char == 0x7B:
                    new = JsonObject()
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
                    raise ParseError(_STATE_ERRORS[state], pos)
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
                    raise ParseError(_MISS_NAME, pos)
            elif state == _MEMBER_KEY:
                if char != 0x3A:
                    raise ParseError(_MISS_COLON, pos)
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
                    raise ParseError(_STATE_ERRORS[state], pos)
                pos += 1
            if state == _FINISH:  # kParseStopWhenDoneFlag: whatever follows the root is never looked at
                return root
            if pos < end and buf[pos] in b" \t\n\r":
                pos = _WHITESPACE.match(buf, pos).end()
        raise ParseError(_STATE_ERRORS[state], pos)

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
                    raise ParseError(VALUE_INVALID, self.pos)
                self.pos += 1
            return value
        value, self.pos = read_number(self.buf, self.pos)
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
                raise ParseError(_MISS_QUOTATION_MARK, pos)
            if char != 0x5C:  # an unescaped control character
                raise ParseError(_ESCAPE_INVALID, pos)
            escape_offset = pos  # errors in an escape point at its backslash
            escape = buf[pos + 1] if pos + 1 < len(buf) else 0
            if escape in _STRING_ESCAPES:
                out.append(_STRING_ESCAPES[escape])
                pos += 2
            elif escape == 0x75:  # \uXXXX
                codepoint, pos = self._hex4(pos + 2, escape_offset)
                if 0xD800 <= codepoint <= 0xDBFF:
                    if buf[pos : pos + 2] != b"\\u":
                        raise ParseError(_SURROGATE_INVALID, escape_offset)
                    low, pos = self._hex4(pos + 2, escape_offset)
                    if not 0xDC00 <= low <= 0xDFFF:
                        raise ParseError(_SURROGATE_INVALID, escape_offset)
                    codepoint = (((codepoint - 0xD800) << 10) | (low - 0xDC00)) + 0x10000
                # A lone low surrogate is written out as its 3 UTF-8-style bytes, as UTF8::Encode does.
                out += chr(codepoint).encode("utf-8", "surrogatepass")
            else:
                raise ParseError(_ESCAPE_INVALID, escape_offset)

    def _hex4(self, pos: int, escape_offset: int) -> tuple[int, int]:
        digits = self.buf[pos : pos + 4]
        if len(digits) < 4 or not _HEX_DIGITS.issuperset(digits):
            raise ParseError(_INVALID_HEX, escape_offset)
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


_PLAIN_DECODER = json.JSONDecoder(object_pairs_hook=JsonObject)
_EXACT_DECODER = json.JSONDecoder(object_pairs_hook=JsonObject, parse_float=rapidjson_float, parse_int=rapidjson_int)
_BOM = b"\xef\xbb\xbf"


def read_document(data: bytes):
    """Document::ParseStream<kParseIterativeFlag | kParseNanAndInfFlag | kParseStopWhenDoneFlag>()."""
    text = data[len(_BOM) :] if data.startswith(_BOM) else data
    text = text.decode("utf-8", "surrogateescape")
    if not _SURROGATE_ESCAPE.search(text):
        risky = _LONG_NUMBER.search(text) or _BIG_EXPONENT.search(text)
        decoder = _EXACT_DECODER if risky else _PLAIN_DECODER
        try:
            value, _ = decoder.raw_decode(text, _LEADING_WHITESPACE.match(text).end())
        except (ValueError, RecursionError, NeedsReader):
            pass
        else:
            # A root that is not an object is an error whose message shows the value; rapidjson reads a root
            # number further than Python ("NaN.5"), so let the port read it.
            if isinstance(value, JsonObject):
                return value
    return _Reader(data).parse()
