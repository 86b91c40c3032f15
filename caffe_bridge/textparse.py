"""A tolerant protobuf text-format reader for Caffe definitions.

Caffe definitions are protobuf text. Forks add fields, messages and enum values that our schema
does not know; Caffe built from the fork reads them, protobuf's ``text_format`` refuses them.
This reader fills our messages through their descriptors and *skips* what the schema lacks,
recording each skipped item with its line, so the caller can warn. Only malformed text (an
unclosed brace, a missing value, a bad number) is an error.

Accepted syntax (protobuf text format as Caffe's C++ ``TextFormat`` reads it): ``field: value``,
``field { ... }``, ``field: { ... }``, ``field < ... >``, ``field: [v, v, ...]``, ``#`` comments,
optional ``,``/``;`` separators, adjacent string literals concatenated, single or double quotes
with C escapes, decimal/hex/octal integers, floats with an optional ``f`` suffix, ``inf``/``nan``,
booleans ``true``/``false``/``t``/``f``/``1``/``0``, enum values by name or number.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from google.protobuf import text_encoding

from caffe_bridge.schema import is_repeated

_TOKEN = re.compile(
    r"""(?P<ws>(?:\s+|\#[^\n]*)+)
      |(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      |(?P<num>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?))
      |(?P<id>-?[A-Za-z_][A-Za-z0-9_]*)
      |(?P<punct>[{}<>\[\]:,;/.])
    """,
    re.VERBOSE,
)

_FD = pb_descriptor.FieldDescriptor
_INT_RANGE = {
    _FD.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    _FD.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    _FD.CPPTYPE_UINT32: (0, 2**32 - 1),
    _FD.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_TRUE = frozenset(("true", "True", "t", "1"))
_FALSE = frozenset(("false", "False", "f", "0"))
_CLOSE = {"{": "}", "<": ">"}


class TextSyntaxError(ValueError):
    """Malformed text: ``line`` is 1-based."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


@dataclass
class Skipped:
    """A field, or an enum value, that the schema does not know (first occurrence per path)."""

    path: str  # dotted field path from the root message, e.g. "layer.bn_param"
    line: int
    owner: int | None  # index of the top-level repeated record it lies in (e.g. net.layer[i])
    owner_field: str | None  # that record's field name ("layer", "layers")
    enum_value: str | None = None  # set for an unknown enum value
    count: int = 1


@dataclass
class ParseResult:
    """What the reader found besides the message: lines and skipped items."""

    record_lines: dict[str, list[int]] = field(default_factory=dict)  # top-level field -> lines
    skipped: dict[str, Skipped] = field(default_factory=dict)  # by path (+ enum value)
    # Unknown enum identifiers of V1 records' ``type`` (``type: VIDEO_DATA``), not warned about:
    # (top-level field, record index, field name) -> identifier.
    record_enums: dict[tuple[str, int, str], str] = field(default_factory=dict)
    # Fields a top-level record's own type lacks but its fallback type has (a V1 ``layers``
    # record carrying a fork's ``interp_param``): (top-level field, index) -> fallback message.
    record_extras: dict[tuple[str, int], pb_message.Message] = field(default_factory=dict)
    repeated_singular: dict[str, int] = field(default_factory=dict)  # path -> first line
    field_lines: dict[str, int] = field(default_factory=dict)  # top-level field -> first line


def _unescape(tok: str) -> str:
    body = tok[1:-1]
    if "\\" not in body:
        return body
    return text_encoding.CUnescape(body).decode("utf-8", errors="surrogateescape")


class _Reader:
    def __init__(
        self, text: str, fallbacks: dict[str, Callable[[], pb_message.Message]] | None = None
    ) -> None:
        self.text = text
        self.fallbacks = fallbacks or {}
        self.record_msg: pb_message.Message | None = None
        self.pending_record = False
        kinds: list[str] = []
        values: list[str] = []
        starts: list[int] = []
        pos = 0
        n = len(text)
        match = _TOKEN.match
        while pos < n:
            m = match(text, pos)
            if m is None:
                raise TextSyntaxError(f"unexpected character {text[pos]!r}", self._line_at(pos))
            kind = m.lastgroup
            if kind != "ws":
                kinds.append(kind)  # type: ignore[arg-type]
                values.append(m.group())
                starts.append(pos)
            pos = m.end()
        self.kinds, self.values, self.starts = kinds, values, starts
        self.i = 0
        self.result = ParseResult()
        self.owner: tuple[str, int] | None = None

    # -- positions ---------------------------------------------------------------------------

    def _line_at(self, pos: int) -> int:
        if not hasattr(self, "_nl"):
            self._nl = [m.start() for m in re.finditer("\n", self.text)]
        return bisect.bisect_left(self._nl, pos) + 1

    def line(self, i: int | None = None) -> int:
        k = self.i if i is None else i
        if k >= len(self.starts):  # end of text: the line of the last token, as protobuf says
            return self._line_at(self.starts[-1]) if self.starts else 1
        return self._line_at(self.starts[k])

    def fail(self, message: str, i: int | None = None) -> TextSyntaxError:
        return TextSyntaxError(message, self.line(i))

    def peek(self) -> str | None:
        return self.values[self.i] if self.i < len(self.values) else None

    def expect(self, value: str) -> None:
        got = self.peek()
        if got != value:
            shown = "end of text" if got is None else repr(got)
            raise self.fail(f'Expected "{value}", found {shown}')
        self.i += 1

    # -- messages ----------------------------------------------------------------------------

    def parse_message(self, msg: pb_message.Message, path: str, end: str | None) -> None:
        fields = msg.DESCRIPTOR.fields_by_name
        values, kinds = self.values, self.kinds
        top = end is None
        while True:
            if self.i >= len(values):
                if end is not None:
                    raise self.fail(f'Expected "{end}", found end of text')
                return
            tok = values[self.i]
            if tok == end:
                self.i += 1
                return
            if tok == "[":
                self._skip_extension(path)
                continue
            if kinds[self.i] != "id" or tok[0] == "-":
                raise self.fail(f"expected a field name, found {tok!r}")
            name_i = self.i
            self.i += 1
            fd = fields.get(tok)
            fpath = f"{path}.{tok}" if path else tok
            if fd is None and msg is self.record_msg:
                self._fallback_field(tok, fpath, name_i)
            elif fd is None:
                self._skip_value(fpath, name_i)
            elif top and is_repeated(fd) and fd.message_type is not None:
                self._top_record(msg, fd, name_i)
            else:
                if top and tok not in self.result.field_lines:
                    self.result.field_lines[tok] = self.line(name_i)
                self._field(msg, fd, fpath, name_i)
            if self.i < len(values) and values[self.i] in (",", ";"):
                self.i += 1

    def _top_record(self, msg: pb_message.Message, fd: _FD, name_i: int) -> None:
        lines = self.result.record_lines.setdefault(fd.name, [])
        index = len(getattr(msg, fd.name))
        lines.append(self.line(name_i))
        self.owner = (fd.name, index)
        self.pending_record = True
        try:
            self._field(msg, fd, fd.name, name_i)
        finally:
            self.owner = None
            self.record_msg = None
            self.pending_record = False

    def _fallback_field(self, tok: str, fpath: str, name_i: int) -> None:
        """A field the record's type lacks: parse it into the fallback message if that has it."""
        assert self.owner is not None
        make = self.fallbacks.get(self.owner[0])
        fd = make().DESCRIPTOR.fields_by_name.get(tok) if make else None
        if make is None or fd is None:
            self._skip_value(fpath, name_i)
            return
        extra = self.result.record_extras.get(self.owner)
        if extra is None:
            extra = self.result.record_extras[self.owner] = make()
        saved, self.record_msg = self.record_msg, None
        try:
            self._field(extra, fd, fpath, name_i)
        finally:
            self.record_msg = saved

    def _field(self, msg: pb_message.Message, fd: _FD, fpath: str, name_i: int) -> None:
        has_colon = self.peek() == ":"
        if has_colon:
            self.i += 1
        if fd.message_type is not None:
            if self.peek() == "[":
                self._list(lambda: self._sub_message(msg, fd, fpath))
            else:
                self._sub_message(msg, fd, fpath)
            return
        if not has_colon:
            raise self.fail(f'expected ":" after field name {fd.name!r}')
        if self.peek() == "[" and is_repeated(fd):
            self._list(lambda: self._scalar(msg, fd, fpath))
        else:
            self._scalar(msg, fd, fpath)

    def _list(self, item: Callable[[], None]) -> None:
        self.expect("[")
        if self.peek() == "]":
            self.i += 1
            return
        while True:
            item()
            tok = self.peek()
            if tok == ",":
                self.i += 1
                continue
            self.expect("]")
            return

    def _sub_message(self, msg: pb_message.Message, fd: _FD, fpath: str) -> None:
        opener = self.peek()
        if opener not in _CLOSE:
            raise self.fail(f'expected "{{" after field name {fd.name!r}')
        self.i += 1
        if is_repeated(fd):
            sub = getattr(msg, fd.name).add()
            if self.pending_record:
                self.record_msg, self.pending_record = sub, False
        else:
            if msg.HasField(fd.name):
                self.result.repeated_singular.setdefault(fpath, self.line())
            sub = getattr(msg, fd.name)
            sub.SetInParent()
        self.parse_message(sub, fpath, _CLOSE[opener])

    def _scalar(self, msg: pb_message.Message, fd: _FD, fpath: str) -> None:
        start = self.i
        value = self._value(fd, fpath)
        if value is _SKIP:
            return
        if not is_repeated(fd) and msg.HasField(fd.name):
            self.result.repeated_singular.setdefault(fpath, self.line(start))
        try:  # protobuf refuses, say, a string escaping bytes that are not UTF-8
            if is_repeated(fd):
                getattr(msg, fd.name).append(value)
            else:
                setattr(msg, fd.name, value)
        except (ValueError, TypeError) as err:
            raise self.fail(f"bad value for field {fd.name!r}: {err}", start) from None

    def _value(self, fd: _FD, fpath: str) -> object:
        if self.i >= len(self.values):
            raise self.fail(f"expected a value for field {fd.name!r}, found end of text")
        tok, kind = self.values[self.i], self.kinds[self.i]
        cpp = fd.cpp_type
        if cpp == _FD.CPPTYPE_STRING:
            if kind != "str":
                raise self.fail(f"expected a string for field {fd.name!r}, found {tok!r}")
            parts = []
            while self.i < len(self.values) and self.kinds[self.i] == "str":
                parts.append(_unescape(self.values[self.i]))
                self.i += 1
            text = "".join(parts)
            if fd.type == _FD.TYPE_BYTES:
                return text.encode("utf-8", errors="surrogateescape")
            return text
        self.i += 1
        if cpp in _INT_RANGE:
            return self._int(tok, kind, fd)
        if cpp in (_FD.CPPTYPE_FLOAT, _FD.CPPTYPE_DOUBLE):
            return self._float(tok, kind, fd)
        if cpp == _FD.CPPTYPE_BOOL:
            if tok in _TRUE:
                return True
            if tok in _FALSE:
                return False
            raise self.fail(f"expected true or false for field {fd.name!r}, found {tok!r}",
                            self.i - 1)
        return self._enum(tok, kind, fd, fpath)

    def _int(self, tok: str, kind: str, fd: _FD) -> int:
        if kind != "num":
            raise self.fail(f"expected an integer for field {fd.name!r}, found {tok!r}",
                            self.i - 1)
        try:
            value = _parse_int(tok)
        except ValueError:
            raise self.fail(f"expected an integer for field {fd.name!r}, found {tok!r}",
                            self.i - 1) from None
        lo, hi = _INT_RANGE[fd.cpp_type]
        if not lo <= value <= hi:
            raise self.fail(f"integer {tok} out of range for field {fd.name!r}", self.i - 1)
        return value

    def _float(self, tok: str, kind: str, fd: _FD) -> float:
        if kind == "num":
            body = tok[:-1] if tok[-1] in "fF" and not tok.lower().startswith(("0x", "-0x",
                                                                              "+0x")) else tok
            try:
                return float(body) if not _is_hex(body) else float(_parse_int(body))
            except ValueError:
                pass
        elif kind == "id":
            low = tok.lower()
            sign = -1.0 if low.startswith("-") else 1.0
            low = low.lstrip("-")
            if low in ("inf", "infinity", "inff", "infinityf"):
                return sign * math.inf
            if low in ("nan", "nanf"):
                return math.nan
        raise self.fail(f"expected a number for field {fd.name!r}, found {tok!r}", self.i - 1)

    def _enum(self, tok: str, kind: str, fd: _FD, fpath: str) -> object:
        enum = fd.enum_type
        if kind == "id":
            value = enum.values_by_name.get(tok)
            if value is not None:
                return value.number
        elif kind == "num":
            try:
                number = _parse_int(tok)
            except ValueError:
                number = None
            if number is not None and number in enum.values_by_number:
                return number
        else:
            raise self.fail(f"expected an enum value for field {fd.name!r}, found {tok!r}",
                            self.i - 1)
        self._note_enum(fd, fpath, tok, self.i - 1)
        return _SKIP

    # -- skipping ----------------------------------------------------------------------------

    def _note(self, fpath: str, name_i: int, enum_value: str | None = None) -> None:
        key = fpath if enum_value is None else f"{fpath}={enum_value}"
        seen = self.result.skipped.get(key)
        if seen is not None:
            seen.count += 1
            return
        owner_field, owner = self.owner if self.owner else (None, None)
        self.result.skipped[key] = Skipped(fpath, self.line(name_i), owner, owner_field,
                                           enum_value)

    def _note_enum(self, fd: _FD, fpath: str, tok: str, tok_i: int) -> None:
        if self.owner is not None and self.owner[0] == "layers" and fpath == "layers.type":
            owner_field, owner = self.owner
            self.result.record_enums[(owner_field, owner, fd.name)] = tok
            return
        self._note(fpath, tok_i, enum_value=tok)

    def _skip_value(self, fpath: str, name_i: int) -> None:
        self._note(fpath, name_i)
        if self.peek() == ":":
            self.i += 1
        tok = self.peek()
        if tok in _CLOSE or tok == "[":
            self._skip_balanced()
            return
        if tok is None or self.kinds[self.i] == "punct":
            shown = "end of text" if tok is None else repr(tok)
            raise self.fail(f"expected a value for field {fpath.rsplit('.', 1)[-1]!r}, "
                            f"found {shown}")
        if self.kinds[self.i] == "str":
            while self.i < len(self.values) and self.kinds[self.i] == "str":
                self.i += 1
        else:
            self.i += 1

    def _skip_balanced(self) -> None:
        stack: list[str] = []
        start = self.i
        while self.i < len(self.values):
            tok = self.values[self.i]
            kind = self.kinds[self.i]
            self.i += 1
            if kind != "punct":
                continue
            if tok in _CLOSE:
                stack.append(_CLOSE[tok])
            elif tok == "[":
                stack.append("]")
            elif tok in ("}", ">", "]"):
                if not stack or stack.pop() != tok:
                    raise self.fail(f"unbalanced {tok!r}", self.i - 1)
                if not stack:
                    return
        raise self.fail(f'expected "{stack[-1] if stack else "}"}", found end of text', start)

    def _skip_extension(self, path: str) -> None:
        start = self.i
        self.i += 1
        parts = []
        while self.peek() not in ("]", None):
            parts.append(self.values[self.i])
            self.i += 1
        self.expect("]")
        self._skip_value(f"{path}.[{''.join(parts)}]" if path else f"[{''.join(parts)}]",
                         start)


_SKIP = object()


def _is_hex(tok: str) -> bool:
    return tok.lstrip("+-")[:2].lower() == "0x"


def _parse_int(tok: str) -> int:
    sign = -1 if tok.startswith("-") else 1
    body = tok.lstrip("+-")
    if body[:2].lower() == "0x":
        return sign * int(body[2:], 16)
    if len(body) > 1 and body[0] == "0" and body.isdigit():
        return sign * int(body, 8)
    return sign * int(body, 10)


def parse_text(
    text: str,
    msg: pb_message.Message,
    fallbacks: dict[str, Callable[[], pb_message.Message]] | None = None,
) -> ParseResult:
    """Fill ``msg`` from ``text``; raises TextSyntaxError on malformed text.

    ``fallbacks`` maps a top-level repeated field to a message factory: fields its records lack
    but the factory's message has are parsed into one such message per record
    (``ParseResult.record_extras``) instead of being skipped.
    """
    reader = _Reader(text, fallbacks)
    reader.parse_message(msg, "", None)
    return reader.result
