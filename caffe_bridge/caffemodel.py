"""Read and write ``.caffemodel`` weights without protobuf: the only module that knows the wire.

A caffemodel is one serialized ``NetParameter``. The reader maps the file (``mmap``,
read-only), walks the protobuf wire format by hand and descends only into what weights need:
the net name, the layer records (V2 ``layer`` = 100, V1 ``layers`` = 2, with a nested V0
``layer`` = 1) with their name, type and blobs, and the blob fields. Everything else is skipped
by wire type without being read. Packed ``float`` payloads become zero-copy, read-only numpy
views of the mapping, so a 440 MB file costs no extra memory and works beyond 2 GB (offsets are
Python ints). Every length and varint is checked against its enclosing message: a corrupt file
raises :class:`~caffe_bridge.errors.CaffemodelError` naming the file, the byte offset and the
layer when known, and never allocates more than the bytes actually present. Known fields with
the wrong wire type are errors too (protobuf would keep them as unknown fields).

Blob shapes follow ``shape`` when present, else the legacy ``num/channels/height/width`` (4-D),
else ``(count,)``. ``data`` wins over ``double_data`` (converted to float32) when both are set.

The arrays map the file: while they live, do not rewrite the file in place (truncating a mapped
file makes later reads fault). :func:`write_caffemodel` replaces files atomically, which is safe.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from caffe_bridge.atomic import write_stream
from caffe_bridge.errors import CaffemodelError

__all__ = [
    "CaffemodelFile",
    "CaffemodelLayer",
    "open_caffemodel",
    "read_caffemodel",
    "read_caffemodel_layers",
    "release_pages",
    "write_caffemodel",
]

# V1LayerParameter.LayerType number -> V2 type string (Caffe's caffe.proto enum and
# UpgradeV1LayerType). NONE (0) becomes "".
V1_LAYER_TYPES: dict[int, str] = {
    0: "", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout",
    7: "EuclideanLoss", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output", 11: "Im2col",
    12: "ImageData", 13: "InfogainLoss", 14: "InnerProduct", 15: "LRN",
    16: "MultinomialLogisticLoss", 17: "Pooling", 18: "ReLU", 19: "Sigmoid", 20: "Softmax",
    21: "SoftmaxWithLoss", 22: "Split", 23: "TanH", 24: "WindowData", 25: "Eltwise",
    26: "Power", 27: "SigmoidCrossEntropyLoss", 28: "HingeLoss", 29: "MemoryData",
    30: "ArgMax", 31: "Threshold", 32: "DummyData", 33: "Slice", 34: "MVN", 35: "AbsVal",
    36: "Silence", 37: "ContrastiveLoss", 38: "Exp", 39: "Deconvolution",
}

# V0LayerParameter lowercase type -> V2 type string (Caffe's UpgradeV0LayerType, then V1 -> V2).
V0_LAYER_TYPES: dict[str, str] = {
    "accuracy": "Accuracy", "bnll": "BNLL", "concat": "Concat", "conv": "Convolution",
    "data": "Data", "dropout": "Dropout", "euclidean_loss": "EuclideanLoss",
    "flatten": "Flatten", "hdf5_data": "HDF5Data", "hdf5_output": "HDF5Output",
    "im2col": "Im2col", "images": "ImageData", "infogain_loss": "InfogainLoss",
    "innerproduct": "InnerProduct", "lrn": "LRN",
    "multinomial_logistic_loss": "MultinomialLogisticLoss", "pool": "Pooling", "relu": "ReLU",
    "sigmoid": "Sigmoid", "softmax": "Softmax", "softmax_loss": "SoftmaxWithLoss",
    "split": "Split", "tanh": "TanH", "window_data": "WindowData",
}

MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes
_MAX_FIELD = (1 << 29) - 1
_U64 = (1 << 64) - 1

# Wire types.
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5

# Field numbers.
_NET_NAME, _NET_V1_LAYERS, _NET_LAYER = 1, 2, 100
_L_NAME, _L_TYPE, _L_BLOBS = 1, 2, 7  # LayerParameter
_V1_V0, _V1_NAME, _V1_TYPE, _V1_BLOBS = 1, 4, 5, 6  # V1LayerParameter
_V0_NAME, _V0_TYPE, _V0_BLOBS = 1, 2, 50  # V0LayerParameter
# BlobProto (1-4: legacy num/channels/height/width)
_B_DATA, _B_DIFF, _B_SHAPE, _B_DOUBLE, _B_DOUBLE_DIFF = 5, 6, 7, 8, 9

_F32 = np.dtype("<f4")
_F64 = np.dtype("<f8")


@dataclass(frozen=True, eq=False)
class CaffemodelLayer:
    """One layer record of a caffemodel: its name, V2 type string and float32 blobs.

    Blobs are read-only; packed ones are views of the file mapping (copy them to modify).
    """

    name: str
    type: str
    blobs: tuple[np.ndarray, ...]


@dataclass(frozen=True, eq=False)
class CaffemodelFile:
    """A parsed caffemodel: the net name and every layer record in file order."""

    path: str
    name: str
    layers: tuple[CaffemodelLayer, ...]


class _Blob:
    """Mutable accumulator for one BlobProto while scanning it."""

    __slots__ = ("legacy", "shape", "floats", "doubles")

    def __init__(self) -> None:
        self.legacy: list[int | None] = [None, None, None, None]
        self.shape: list[int] | None = None
        self.floats: list[np.ndarray] = []
        self.doubles: list[np.ndarray] = []


class _Scanner:
    """Bounds-checked protobuf wire scanner over a read-only buffer (an mmap)."""

    def __init__(self, buf: mmap.mmap, path: str) -> None:
        self.buf = buf
        self.size = len(buf)
        self.path = path
        self.layer: str | None = None
        self.layer_type: str | None = None
        self.record = -1
        self.top_level = True  # scanning the NetParameter itself: an overrun there = truncation
        self._u8: np.ndarray | None = None

    # -- errors -------------------------------------------------------------------------------

    def error(self, message: str, pos: int) -> CaffemodelError:
        where = f" at byte {pos}"
        if self.layer is None and self.record >= 0:
            where += f" (layer record #{self.record})"
        return CaffemodelError(
            message + where, file=self.path, layer=self.layer, layer_type=self.layer_type or None
        )

    # -- primitives ---------------------------------------------------------------------------

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        buf = self.buf
        start = pos
        result = 0
        shift = 0
        while True:
            if pos >= end:
                raise self.error("truncated varint", start)
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                if result > _U64:
                    raise self.error("varint overflows 64 bits", start)
                return result, pos
            shift += 7
            if shift >= 70:
                raise self.error("varint longer than 10 bytes", start)

    def tag(self, pos: int, end: int) -> tuple[int, int, int]:
        key, npos = self.varint(pos, end)
        field, wire = key >> 3, key & 7
        if field == 0 or field > _MAX_FIELD:
            raise self.error(f"invalid field number {field}", pos)
        if wire > _I32:
            raise self.error(f"invalid wire type {wire} (field {field})", pos)
        if wire in (_SGROUP, _EGROUP):
            raise self.error(f"unsupported group wire type {wire} (field {field})", pos)
        return field, wire, npos

    def length(self, pos: int, end: int, what: str) -> tuple[int, int]:
        """Read a length prefix; return (payload start, payload end) within ``end``."""
        n, start = self.varint(pos, end)
        if n > end - start and self.top_level:
            raise self.error(
                f"truncated file: expected at least {start + n:,} bytes (where its {what} "
                f"ends), actual size {self.size:,} bytes",
                pos,
            )
        if n > end - start:
            raise self.error(
                f"{what}: length {n} runs past the end of its enclosing message "
                f"({end - start} bytes left)",
                pos,
            )
        return start, start + n

    def skip(self, wire: int, pos: int, end: int, field: int) -> int:
        if wire == _VARINT:
            return self.varint(pos, end)[1]
        if wire == _LEN:
            return self.length(pos, end, f"field {field}")[1]
        width = 8 if wire == _I64 else 4
        if width > end - pos:
            raise self.error(f"truncated fixed{width * 8} value (field {field})", pos)
        return pos + width

    def expect(self, wire: int, want: int, field: int, what: str, pos: int) -> None:
        if wire != want:
            raise self.error(f"{what} (field {field}) has wire type {wire}, expected {want}", pos)

    def string(self, start: int, end: int) -> str:
        return self.buf[start:end].decode("utf-8", "replace")

    @property
    def u8(self) -> np.ndarray:
        if self._u8 is None:
            self._u8 = np.frombuffer(self.buf, dtype=np.uint8)
        return self._u8

    def gather(self, pos: int, end: int, tag: int, dtype: np.dtype) -> tuple[np.ndarray, int]:
        """Collect a run of unpacked fixed-width values ``tag value tag value ...`` at ``pos``.

        ``pos`` points at the first (one-byte) tag. Vectorized: no per-value Python work.
        """
        stride = 1 + dtype.itemsize
        most = (end - pos) // stride
        u8 = self.u8
        count = 0
        chunk = 64
        while count < most:
            step = min(chunk, most - count)
            lo = pos + count * stride
            tags = u8[lo : lo + step * stride : stride]
            bad = np.flatnonzero(tags != tag)
            if bad.size:
                count += int(bad[0])
                break
            count += step
            chunk *= 2
        if count == 0:
            raise self.error(f"truncated fixed{dtype.itemsize * 8} value", pos)
        raw = u8[pos : pos + count * stride].reshape(count, stride)[:, 1:]
        return np.ascontiguousarray(raw).view(dtype).reshape(count), pos + count * stride

    # -- messages -----------------------------------------------------------------------------

    def net(self) -> tuple[str, list[tuple[int, int, int]]]:
        """Scan NetParameter: its name and (kind, start, end) of every layer record."""
        pos, end = 0, self.size
        name = ""
        records: list[tuple[int, int, int]] = []
        while pos < end:
            at = pos
            field, wire, pos = self.tag(pos, end)
            if field in (_NET_NAME, _NET_V1_LAYERS, _NET_LAYER):
                what = "net name" if field == _NET_NAME else "layer record"
                self.expect(wire, _LEN, field, what, at)
                start, pos = self.length(pos, end, what)
                if field == _NET_NAME:
                    name = self.string(start, pos)
                else:
                    records.append((field, start, pos))
            else:
                pos = self.skip(wire, pos, end, field)
        self.top_level = False
        return name, records

    def layer_v2(self, start: int, end: int) -> CaffemodelLayer:
        name = ltype = None
        blobs: list[tuple[int, int]] = []
        pos = start
        while pos < end:
            at = pos
            field, wire, pos = self.tag(pos, end)
            if field in (_L_NAME, _L_TYPE):
                self.expect(wire, _LEN, field, "layer name/type", at)
                s, pos = self.length(pos, end, "layer name/type")
                if field == _L_NAME:
                    name = self.layer = self.string(s, pos)
                else:
                    ltype = self.layer_type = self.string(s, pos)
            elif field == _L_BLOBS:
                self.expect(wire, _LEN, field, "blob", at)
                s, pos = self.length(pos, end, "blob")
                blobs.append((s, pos))
            else:
                pos = self.skip(wire, pos, end, field)
        arrays = tuple(self.blob(s, e, i) for i, (s, e) in enumerate(blobs))
        return CaffemodelLayer(name or "", ltype or "", arrays)

    def layer_v1(self, start: int, end: int) -> CaffemodelLayer:
        name = ltype = None
        blobs: list[tuple[int, int]] = []
        v0: tuple[int, int] | None = None
        pos = start
        while pos < end:
            at = pos
            field, wire, pos = self.tag(pos, end)
            if field == _V1_NAME:
                self.expect(wire, _LEN, field, "layer name", at)
                s, pos = self.length(pos, end, "layer name")
                name = self.layer = self.string(s, pos)
            elif field == _V1_TYPE:
                self.expect(wire, _VARINT, field, "V1 layer type", at)
                num, pos = self.varint(pos, end)
                num &= 0xFFFFFFFF  # an int32 enum, sign-extended on the wire
                num = num - (1 << 32) if num >= 1 << 31 else num
                ltype = self.layer_type = V1_LAYER_TYPES.get(num, f"V1LayerType({num})")
            elif field == _V1_BLOBS:
                self.expect(wire, _LEN, field, "blob", at)
                s, pos = self.length(pos, end, "blob")
                blobs.append((s, pos))
            elif field == _V1_V0:
                self.expect(wire, _LEN, field, "V0 layer", at)
                v0 = self.length(pos, end, "V0 layer")
                pos = v0[1]
            else:
                pos = self.skip(wire, pos, end, field)
        if v0 is not None:  # V0: the nested layer carries name, type and blobs
            v0_name, v0_type = self.layer_v0(*v0, blobs)
            if v0_name is not None:
                name = self.layer = v0_name
            if v0_type is not None:
                ltype = self.layer_type = V0_LAYER_TYPES.get(v0_type, v0_type)
        arrays = tuple(self.blob(s, e, i) for i, (s, e) in enumerate(blobs))
        return CaffemodelLayer(name or "", ltype or "", arrays)

    def layer_v0(
        self, start: int, end: int, blobs: list[tuple[int, int]]
    ) -> tuple[str | None, str | None]:
        name = ltype = None
        pos = start
        while pos < end:
            at = pos
            field, wire, pos = self.tag(pos, end)
            if field in (_V0_NAME, _V0_TYPE):
                self.expect(wire, _LEN, field, "V0 layer name/type", at)
                s, pos = self.length(pos, end, "V0 layer name/type")
                if field == _V0_NAME:
                    name = self.string(s, pos)
                else:
                    ltype = self.string(s, pos)
            elif field == _V0_BLOBS:
                self.expect(wire, _LEN, field, "blob", at)
                s, pos = self.length(pos, end, "blob")
                blobs.append((s, pos))
            else:
                pos = self.skip(wire, pos, end, field)
        return name, ltype

    def blob(self, start: int, end: int, index: int) -> np.ndarray:
        acc = _Blob()
        pos = start
        while pos < end:
            at = pos
            field, wire, pos = self.tag(pos, end)
            if 1 <= field <= 4:
                self.expect(wire, _VARINT, field, "legacy blob dimension", at)
                value, pos = self.varint(pos, end)
                value &= 0xFFFFFFFF  # int32: sign-extended on the wire
                acc.legacy[field - 1] = value - (1 << 32) if value >= 1 << 31 else value
            elif field == _B_DATA:
                pos = self._values(acc.floats, wire, at, pos, end, _F32, 0x2D, "data")
            elif field == _B_DOUBLE:
                pos = self._values(acc.doubles, wire, at, pos, end, _F64, 0x41, "double_data")
            elif field in (_B_DIFF, _B_DOUBLE_DIFF) and wire == _LEN:  # ignored, but sane
                s, pos = self.length(pos, end, "diff")
                width = 4 if field == _B_DIFF else 8
                if (pos - s) % width:
                    raise self.error(f"packed diff length {pos - s} is not a multiple of {width}",
                                     at)
            elif field == _B_SHAPE:
                self.expect(wire, _LEN, field, "blob shape", at)
                s, pos = self.length(pos, end, "blob shape")
                if acc.shape is None:
                    acc.shape = []
                self._dims(s, pos, acc.shape)
            else:
                pos = self.skip(wire, pos, end, field)
        return self._finish(acc, index, start)

    def _values(
        self,
        out: list[np.ndarray],
        wire: int,
        at: int,
        pos: int,
        end: int,
        dtype: np.dtype,
        tag: int,
        what: str,
    ) -> int:
        width = dtype.itemsize
        if wire == _LEN:  # packed
            s, e = self.length(pos, end, what)
            if (e - s) % width:
                raise self.error(
                    f"packed {what} length {e - s} is not a multiple of {width}", at
                )
            if e > s:
                out.append(np.frombuffer(self.buf, dtype=dtype, count=(e - s) // width, offset=s))
            return e
        if wire == (_I32 if width == 4 else _I64):  # unpacked
            if self.buf[at] == tag:  # canonical one-byte tags: gather the whole run at once
                values, e = self.gather(at, end, tag, dtype)
            else:  # an over-long tag varint: take this one value
                if width > end - pos:
                    raise self.error(f"truncated {what} value", at)
                values, e = np.frombuffer(self.buf, dtype, 1, pos).copy(), pos + width
            out.append(values)
            return e
        raise self.error(f"{what} has wire type {wire}", at)

    def _dims(self, start: int, end: int, dims: list[int]) -> None:
        pos = start
        while pos < end:
            at = pos
            field, wire, pos = self.tag(pos, end)
            if field != 1:
                pos = self.skip(wire, pos, end, field)
                continue
            if wire == _LEN:
                s, e = self.length(pos, end, "shape dims")
                pos = s
                while pos < e:
                    value, pos = self.varint(pos, e)
                    self._add_dim(dims, value, at)
                pos = e
            elif wire == _VARINT:
                value, pos = self.varint(pos, end)
                self._add_dim(dims, value, at)
            else:
                raise self.error(f"shape dim has wire type {wire}", at)

    def _add_dim(self, dims: list[int], value: int, at: int) -> None:
        if value >= 1 << 63:
            value -= 1 << 64
        if value < 0:
            raise self.error(f"negative blob dimension {value}", at)
        if len(dims) >= MAX_BLOB_AXES:
            raise self.error(f"blob shape has more than {MAX_BLOB_AXES} axes", at)
        dims.append(value)

    def _finish(self, acc: _Blob, index: int, start: int) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):  # like a C cast: +-inf beyond range
            parts = acc.floats or [d.astype(np.float32) for d in acc.doubles]
        if not parts:
            data = np.empty(0, dtype=np.float32)
        elif len(parts) == 1:
            data = parts[0]
        else:
            data = np.concatenate(parts)
        count = data.size
        if acc.shape is not None:
            shape = tuple(acc.shape)
        elif any(v is not None for v in acc.legacy):
            shape = tuple(0 if v is None else v for v in acc.legacy)
            if min(shape) < 0:
                raise self.error(f"blob #{index}: negative legacy dimension in {shape}", start)
        else:
            shape = (count,)
        want = 1
        for d in shape:
            want *= d
        if want != count:
            raise self.error(
                f"blob #{index} has {count} values but its shape {shape} needs {want}", start
            )
        data = data.reshape(shape)
        if data.flags.writeable:  # gathered/converted copies: read-only like the views
            data.flags.writeable = False
        return data


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return printable >= 0.95 * len(head)


def _parse(buf: mmap.mmap, path: str) -> CaffemodelFile:
    """Scan a whole caffemodel held in ``buf``; blobs may be views of ``buf``."""
    scanner = _Scanner(buf, path)
    try:
        net_name, records = scanner.net()
        if not records:
            raise CaffemodelError(
                "no layer records (NetParameter field 2 or 100); not a caffemodel", file=path
            )
        layers = []
        for i, (kind, start, end) in enumerate(records):
            scanner.record, scanner.layer, scanner.layer_type = i, None, None
            parse = scanner.layer_v2 if kind == _NET_LAYER else scanner.layer_v1
            layers.append(parse(start, end))
    except CaffemodelError as exc:
        if not _looks_like_text(buf[:256]):
            raise
        hint = f"{exc.message} (the file looks like text: a .prototxt, not a .caffemodel?)"
        raise CaffemodelError(
            hint, file=exc.file, layer=exc.layer, layer_type=exc.layer_type
        ) from None
    finally:
        scanner._u8 = None
    return CaffemodelFile(path, net_name, tuple(layers))


def open_caffemodel(path: str | os.PathLike[str]) -> CaffemodelFile:
    """Parse a caffemodel: net name and every layer record (blob-less ones too) in file order.

    Raises :class:`CaffemodelError` for an unreadable, empty, corrupt or non-caffemodel file.
    """
    spath = os.fspath(path)
    try:
        with open(spath, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise CaffemodelError("empty file; not a caffemodel", file=spath)
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise CaffemodelError(f"cannot read: {exc.strerror or exc}", file=spath) from exc
    except ValueError as exc:  # e.g. mmap of a special file
        raise CaffemodelError(f"cannot map file: {exc}", file=spath) from exc
    try:
        return _parse(mm, spath)
    finally:
        # Blob views keep the mapping alive (close() refuses then); with none, release it now.
        with contextlib.suppress(BufferError):
            mm.close()


def release_pages(arrays: Sequence[np.ndarray]) -> None:
    """Let the kernel drop the file pages behind ``arrays`` (views of a caffemodel mapping).

    Called once a layer's blobs are copied into its parameters: the pages read so far would
    otherwise stay in this process's memory until the mapping closes (a second copy of every
    weight at the peak). The arrays stay valid: the mapping is read-only and file-backed, so a
    later read faults the page in again from the file. Arrays that are not views of a mapping
    (gathered or converted values) are left alone.
    """
    for a in arrays:
        base = a.base
        while isinstance(base, np.ndarray):
            base = base.base
        if isinstance(base, memoryview):
            base = base.obj
        if not isinstance(base, mmap.mmap) or base.closed or a.nbytes == 0:
            continue
        offset = a.__array_interface__["data"][0] - _address(base)
        start = offset - offset % mmap.PAGESIZE
        with contextlib.suppress(OSError, ValueError):  # advice only: never an error
            base.madvise(mmap.MADV_DONTNEED, start, offset + a.nbytes - start)


def _address(buf: mmap.mmap) -> int:
    """The address of a mapping's first byte."""
    return np.frombuffer(buf, dtype=np.uint8, count=1).__array_interface__["data"][0]


def read_caffemodel_layers(path: str | os.PathLike[str]) -> list[CaffemodelLayer]:
    """Every layer record of a caffemodel in file order, including blob-less ones."""
    return list(open_caffemodel(path).layers)


def read_caffemodel(path: str | os.PathLike[str]) -> dict[str, list[np.ndarray]]:
    """Layer name -> float32 blobs (Caffe order and shape), for the layers that have blobs."""
    model = open_caffemodel(path)
    out: dict[str, list[np.ndarray]] = {}
    for layer in model.layers:
        if not layer.blobs:
            continue
        if layer.name in out:
            raise CaffemodelError(
                "two layer records with this name both carry blobs",
                file=model.path,
                layer=layer.name,
                layer_type=layer.type or None,
            )
        out[layer.name] = list(layer.blobs)
    return out


# -- writer ------------------------------------------------------------------------------------


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(field: int, payload_len: int) -> bytes:
    return _varint_bytes(field << 3 | _LEN) + _varint_bytes(payload_len)


def _string_field(field: int, text: str) -> bytes:
    raw = text.encode("utf-8")
    return _len_field(field, len(raw)) + raw


@dataclass
class _PlannedBlob:
    array: np.ndarray
    header: bytes  # blob tag + length + data tag + length (data follows, then shape)
    shape: bytes  # shape field (tag + length + packed dims)


def _plan_blob(layer: str, index: int, value: Any, path: str) -> tuple[_PlannedBlob, int]:
    """Validate one blob and precompute its headers; returns it with its encoded size."""
    try:
        array = np.asarray(value)
    except Exception as exc:  # any conversion failure is bad input
        message = f"blob #{index} is not an array: {exc}"
        raise CaffemodelError(message, file=path, layer=layer) from exc
    if array.dtype.kind not in "biuf":
        raise CaffemodelError(
            f"blob #{index} has dtype {array.dtype}; expected real numbers", file=path, layer=layer
        )
    dims = b"".join(_varint_bytes(int(d)) for d in array.shape)
    shape_msg = (_len_field(1, len(dims)) + dims) if dims else b""
    shape = _len_field(_B_SHAPE, len(shape_msg)) + shape_msg
    nbytes = 4 * array.size
    data_head = _len_field(_B_DATA, nbytes) if nbytes else b""
    blob_len = len(data_head) + nbytes + len(shape)
    header = _len_field(_L_BLOBS, blob_len) + data_head
    return _PlannedBlob(array, header, shape), len(header) + nbytes + len(shape)


def _write_blob_data(f: BinaryIO, array: np.ndarray) -> None:
    if array.size:
        data = np.ascontiguousarray(array, dtype=_F32)
        f.write(memoryview(data.reshape(-1)).cast("B"))


def _write_stream(
    f: BinaryIO,
    name: str | None,
    plan: list[tuple[bytes, list[_PlannedBlob]]],
) -> None:
    if name is not None:
        f.write(_string_field(_NET_NAME, name))
    for head, blobs in plan:
        f.write(head)
        for blob in blobs:
            f.write(blob.header)
            _write_blob_data(f, blob.array)
            f.write(blob.shape)


def write_caffemodel(
    path: str | os.PathLike[str],
    weights: Mapping[str, Sequence[np.ndarray]],
    name: str | None = None,
    *,
    types: Mapping[str, str] | None = None,
) -> None:
    """Write ``weights`` as a V2 caffemodel: one ``layer`` per entry, blobs as packed float32.

    An empty blob list writes a blob-less layer record; ``types`` entries for layers not in
    ``weights`` are ignored. The bytes equal protobuf's own serialization of the same message.
    The file is written to a temporary sibling and moved into place atomically; on any failure
    the target is untouched and the temporary file is removed. Blob bytes are streamed, one blob
    at a time (a blob that is not C-contiguous float32 is converted on its own).
    """
    spath = os.fspath(path)
    types = types or {}
    if name is not None and not isinstance(name, str):
        raise CaffemodelError(f"net name must be a string, not {type(name).__name__}", file=spath)
    if not isinstance(weights, Mapping):
        raise CaffemodelError("weights must be a mapping of layer name -> blobs", file=spath)
    plan: list[tuple[bytes, list[_PlannedBlob]]] = []
    for layer, blobs in weights.items():
        if not isinstance(layer, str):
            raise CaffemodelError(f"layer name {layer!r} is not a string", file=spath)
        ltype = types.get(layer)
        if ltype is not None and not isinstance(ltype, str):
            raise CaffemodelError("layer type must be a string", file=spath, layer=layer)
        if isinstance(blobs, np.ndarray) or not isinstance(blobs, Sequence):
            raise CaffemodelError(
                "blobs must be a sequence of arrays (a list or tuple)", file=spath, layer=layer
            )
        planned = [_plan_blob(layer, i, b, spath) for i, b in enumerate(blobs)]
        body = _string_field(_L_NAME, layer)
        if ltype is not None:
            body += _string_field(_L_TYPE, ltype)
        size = len(body) + sum(n for _, n in planned)
        plan.append((_len_field(_NET_LAYER, size) + body, [p for p, _ in planned]))
    _atomic_write(spath, lambda f: _write_stream(f, name, plan))


def _atomic_write(path: str, write: Any) -> None:
    """:func:`caffe_bridge.atomic.write_stream` (overwriting), its failures as CaffemodelError."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CaffemodelError(f"cannot create a file next to it: no folder {folder!r}", file=path)
    try:
        write_stream(path, write, force=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CaffemodelError(f"cannot write: {exc}", file=path) from exc
