"""Text prototxt -> our NetParameter message, with the source line of every layer."""

from __future__ import annotations

import os
from dataclasses import dataclass

from google.protobuf import message as pb_message
from google.protobuf import text_format

from caffe_bridge import schema
from caffe_bridge.errors import PrototxtError


@dataclass(frozen=True)
class ParsedPrototxt:
    """A parsed definition: the message, and 1-based source lines of its layer records."""

    path: str
    net: pb_message.Message  # schema.NetParameter
    layer_lines: tuple[int | None, ...]  # one per entry of net.layer (V2)
    layers_lines: tuple[int | None, ...]  # one per entry of net.layers (V1/V0)
    field_lines: dict[str, int]  # first line of selected net-level fields (input, input_dim, ...)


_TRACKED_FIELDS = ("input", "input_dim", "input_shape", "name")


def _scan_top_level(text: str) -> tuple[list[int], list[int], dict[str, int]]:
    """Find the line of every top-level ``layer``/``layers`` record (brace depth 0).

    A small tokenizer that honours ``#`` comments and quoted strings, so braces inside names
    do not confuse it. Text format syntax errors are left to protobuf's parser.
    """
    layer_lines: list[int] = []
    layers_lines: list[int] = []
    fields: dict[str, int] = {}
    depth = 0
    line = 1
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c in "\"'":
            i += 1
            while i < n and text[i] != c:
                if text[i] == "\\":
                    i += 1
                elif text[i] == "\n":
                    line += 1
                i += 1
            i += 1
        elif c in "{<":
            depth += 1
            i += 1
        elif c in "}>":
            depth -= 1
            i += 1
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if depth == 0:
                if word == "layer":
                    layer_lines.append(line)
                elif word == "layers":
                    layers_lines.append(line)
                elif word in _TRACKED_FIELDS and word not in fields:
                    fields[word] = line
            i = j
        else:
            i += 1
    return layer_lines, layers_lines, fields


def parse_prototxt_text(text: str, path: str = "<string>") -> ParsedPrototxt:
    """Parse prototxt ``text``; errors name ``path`` and the offending line."""
    net = schema.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as err:
        line = err.GetLine() if hasattr(err, "GetLine") else None
        msg = str(err)
        # protobuf prefixes "line:col : "; we lead with file:line ourselves.
        head, sep, rest = msg.partition(" : ")
        if sep and head.replace(":", "").isdigit():
            col = head.split(":")[-1]
            msg = f"column {col}: {rest}"
        raise PrototxtError(f"syntax error: {msg}", file=path, line=line) from None
    except (ValueError, TypeError, RecursionError, UnicodeError) as err:
        raise PrototxtError(f"cannot parse definition: {err}", file=path) from None
    layer_lines, layers_lines, fields = _scan_top_level(text)
    if len(layer_lines) != len(net.layer) or len(layers_lines) != len(net.layers):
        # The scanner disagrees with protobuf (exotic syntax): fall back to unknown lines.
        return ParsedPrototxt(
            path, net, (None,) * len(net.layer), (None,) * len(net.layers), fields
        )
    return ParsedPrototxt(path, net, tuple(layer_lines), tuple(layers_lines), fields)


def parse_prototxt(path: str | os.PathLike[str]) -> ParsedPrototxt:
    """Read and parse a ``.prototxt`` file."""
    spath = os.fspath(path)
    try:
        with open(spath, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise PrototxtError("no such file", file=spath) from None
    except IsADirectoryError:
        raise PrototxtError("is a directory, expected a .prototxt file", file=spath) from None
    except OSError as err:
        raise PrototxtError(f"cannot read: {err.strerror or err}", file=spath) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PrototxtError(
            "not UTF-8 text (is this a binary .caffemodel? pass it as the weights argument)",
            file=spath,
            line=line,
        ) from None
    return parse_prototxt_text(text, spath)
