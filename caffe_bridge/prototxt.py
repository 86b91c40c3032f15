"""Text prototxt -> our NetParameter message, with the source line of every layer."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf import message as pb_message

from caffe_bridge import schema, textparse
from caffe_bridge.errors import CaffeBridgeWarning, PrototxtError


@dataclass(frozen=True)
class ParsedPrototxt:
    """A parsed definition: the message, and 1-based source lines of its layer records."""

    path: str
    net: pb_message.Message  # schema.NetParameter
    layer_lines: tuple[int | None, ...]  # one per entry of net.layer (V2)
    layers_lines: tuple[int | None, ...]  # one per entry of net.layers (V1/V0)
    field_lines: dict[str, int]  # first line of selected net-level fields (input, input_dim, ...)
    # V1 records whose ``type`` is an enum value our schema lacks (fork types): index -> name.
    v1_type_names: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    # V1 records' fields that V1LayerParameter lacks but LayerParameter has (fork *_param
    # blocks in V1 files): index -> a LayerParameter holding them.
    v1_extras: Mapping[int, pb_message.Message] = field(
        default_factory=lambda: MappingProxyType({}))


_TRACKED_FIELDS = ("input", "input_dim", "input_shape", "name")


def _record_name(net: pb_message.Message, owner_field: str | None, owner: int | None) -> str:
    if owner_field is None or owner is None:
        return ""
    record = getattr(net, owner_field)[owner]
    if owner_field == "layers" and not record.name and record.HasField("layer"):
        return record.layer.name
    return getattr(record, "name", "")


def _warn_skipped(result: textparse.ParseResult, net: pb_message.Message, path: str) -> None:
    """One CaffeBridgeWarning per distinct skipped field path / enum value."""
    for item in result.skipped.values():
        layer = _record_name(net, item.owner_field, item.owner)
        where = f"{path}:{item.line}: " + (f"layer {layer!r}: " if layer else "")
        more = f" (and {item.count - 1} more time(s))" if item.count > 1 else ""
        if item.enum_value is not None:
            what = (f"unknown value {item.enum_value} of enum field {item.path} ignored "
                    f"(the field keeps its default)")
        else:
            what = f"unknown field {item.path} skipped (not in our caffe.proto)"
        warnings.warn(where + what + more, CaffeBridgeWarning, stacklevel=4)
    for fpath, line in result.repeated_singular.items():
        warnings.warn(f"{path}:{line}: field {fpath} given more than once; the last value is "
                      f"used (messages are merged)", CaffeBridgeWarning, stacklevel=4)


def parse_prototxt_text(text: str, path: str = "<string>") -> ParsedPrototxt:
    """Parse prototxt ``text``; errors name ``path`` and the offending line.

    Fields, messages and enum values our schema lacks (fork extensions) are skipped with one
    :class:`CaffeBridgeWarning` per distinct field path; only malformed text is an error.
    """
    net = schema.NetParameter()
    try:
        result = textparse.parse_text(text, net, {"layers": schema.LayerParameter})
    except textparse.TextSyntaxError as err:
        raise PrototxtError(f"syntax error: {err}", file=path, line=err.line) from None
    except (ValueError, TypeError, RecursionError, UnicodeError) as err:
        raise PrototxtError(f"cannot parse definition: {err}", file=path) from None
    _warn_skipped(result, net, path)
    layer_lines = result.record_lines.get("layer", [])
    layers_lines = result.record_lines.get("layers", [])
    fields = {k: v for k, v in result.field_lines.items() if k in _TRACKED_FIELDS}
    if "input_shape" in result.record_lines:
        fields["input_shape"] = result.record_lines["input_shape"][0]
    v1_types = {index: value for (owner_field, index, fname), value in result.record_enums.items()
                if owner_field == "layers" and fname == "type"}
    extras = {index: extra for (owner_field, index), extra in result.record_extras.items()
              if owner_field == "layers"}
    return ParsedPrototxt(path, net, tuple(layer_lines), tuple(layers_lines), fields,
                          MappingProxyType(v1_types), MappingProxyType(extras))


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
