"""Seeded fuzzer for the readers and the converter: only the documented errors may escape.

    python scripts/fuzz.py --target caffemodel parse load_net convert --n 10000 [--seed 0]
                           [--out fuzz-failures] [--timeout 5] [--max-memory-gb 4]

Each target supplies a seed corpus (bytes), a way to make one input from it (by default the
byte mutations below: truncations, bit flips, lying varint lengths, inserted/deleted/duplicated
spans, splices, pure garbage), a function that consumes the input file, the exception types
that count as a clean rejection and, optionally, an oracle that checks what an accepted input
produced. The loop writes each input to a file, runs the target and counts accepted inputs,
rejected inputs and failures: any other exception, an oracle mismatch, an input running longer
than ``--timeout`` seconds (a hang), or one raising the peak RSS by more than
``--max-rss-growth-mb`` (a huge allocation; the address space is capped too, so that a runaway
allocation fails instead of exhausting the machine). Failures are saved under ``--out`` with
their traceback; the exit status is 1 when there are any.

Targets: ``caffemodel`` (the wire reader, with protobuf as oracle), ``parse`` (the text reader
alone: only its TextSyntaxError may escape), ``load_net`` (prototxt text: mutations of the
fixture, released SENet, zoo and wild-corpus definitions: truncations, bit flips, deleted,
duplicated and swapped lines, out-of-range numbers such as ``dim: 99999999999``, NaN/inf,
unknown fields, enum swaps, odd strings, duplicate names, data and loss layers, phase rules,
deep nesting, garbage, non-UTF-8; one input in five with ``input_shapes``) and ``convert``
(windows of 1-3 layers of the corpus nets, fork types favoured, with their parameters mutated,
and small random nets: each must convert and run on its declared shapes, with the output shapes
the IR inferred, or raise a ``CaffeBridgeError``). ``--seed-files N`` seeds from N definitions
only (a quick sample). Add a target with ``@target("name", ...)`` on its seed function.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import resource
import signal
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from caffe_bridge.errors import CaffeBridgeError, CaffemodelError  # noqa: E402

Mutator = Callable[[random.Random, list[bytes]], bytes]
SKIPPED = "skipped"  # returned for a valid input not gone on with (too large, not UTF-8)


@dataclass(frozen=True)
class Target:
    """What to fuzz: seeds, how to run one input file, what a clean rejection looks like."""

    name: str
    seeds: Callable[[], list[bytes]]
    run: Callable[[Path], Any]
    expected: tuple[type[BaseException], ...]
    oracle: Callable[[bytes, Any], None] | None = None  # raises AssertionError on a mismatch
    suffix: str = ".bin"
    make: Mutator | None = None  # one input from the seeds; default: byte mutations


TARGETS: dict[str, Target] = {}


def target(
    name: str,
    run: Callable[[Path], Any],
    expected: tuple[type[BaseException], ...],
    oracle: Callable[[bytes, Any], None] | None = None,
    suffix: str = ".bin",
    make: Mutator | None = None,
) -> Callable[[Callable[[], list[bytes]]], Callable[[], list[bytes]]]:
    """Register a target; decorates the function that builds its seed corpus."""

    def wrap(seeds: Callable[[], list[bytes]]) -> Callable[[], list[bytes]]:
        TARGETS[name] = Target(name, seeds, run, expected, oracle, suffix, make)
        return seeds

    return wrap


# -- generic byte mutations ---------------------------------------------------------------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


LIES = [0, 1, 127, 128, 255, 2**14, 2**31 - 1, 2**31, 2**32, 2**32 + 4, 2**60, 2**63, 2**64 - 1]


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    if rng.random() < 0.03:
        return rng.randbytes(rng.randint(0, 256))
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 5])):
        if not data:
            break
        at = rng.randrange(len(data))
        op = rng.randrange(9)
        if op == 0:
            del data[at:]
        elif op == 1:
            data[at] ^= 1 << rng.randrange(8)
        elif op == 2:
            data[at] = rng.randrange(256)
        elif op == 3:  # a lying length / varint, possibly over-long
            data[at : at + rng.randint(0, 2)] = varint(rng.choice(LIES))
        elif op == 4:
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 5:
            del data[at : at + rng.randint(1, 32)]
        elif op == 6:  # duplicate a span
            end = min(len(data), at + rng.randint(1, 64))
            data[end:end] = data[at:end]
        elif op == 7:  # splice with another seed
            other = rng.choice(seeds)
            cut = rng.randrange(len(other) + 1)
            data[at:] = other[cut:]
        else:
            data[at] = rng.choice([0x00, 0x7F, 0x80, 0xFF, 0x0B, 0x0C, 0x0E, 0x2D, 0x41])
    return bytes(data)


# -- target: caffemodel -------------------------------------------------------------------------


def _read_layers(path: Path) -> Any:
    from caffe_bridge.caffemodel import read_caffemodel_layers

    layers = read_caffemodel_layers(path)
    with np.errstate(all="ignore"):
        for layer in layers:
            for blob in layer.blobs:
                float(blob.sum(dtype=np.float64))  # every value is really readable
    return layers


_MINIMAL: Any = None


def _minimal_net() -> Any:
    """NetParameter of a schema copy keeping only what the reader descends into."""
    global _MINIMAL
    if _MINIMAL is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        from caffe_bridge import schema

        keep = {
            "NetParameter": {"name", "layers", "layer"},
            "LayerParameter": {"name", "type", "blobs"},
            "V1LayerParameter": {"name", "type", "blobs", "layer"},
            "V0LayerParameter": {"name", "type", "blobs"},
        }
        fdp = descriptor_pb2.FileDescriptorProto()
        schema.file_descriptor().CopyToProto(fdp)
        fdp.name, fdp.package = "fuzz_minimal_caffe.proto", "fuzz_minimal_caffe"
        for msg in fdp.message_type:
            if msg.name in keep:
                kept = [f for f in msg.field if f.name in keep[msg.name]]
                for f in kept:
                    if msg.name == "V1LayerParameter" and f.name == "type":
                        f.type = f.TYPE_INT32
                        f.ClearField("type_name")
                del msg.field[:]
                msg.field.extend(kept)
            for f in [*msg.field, *(g for n in msg.nested_type for g in n.field)]:
                if f.type_name:
                    f.type_name = f.type_name.replace(".caffe_bridge.caffe.",
                                                      ".fuzz_minimal_caffe.")
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        _MINIMAL = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("fuzz_minimal_caffe.NetParameter")
        )
    return _MINIMAL


def _ref_blob(blob: Any) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        data = np.array(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
    if blob.HasField("shape"):
        return data.reshape(tuple(blob.shape.dim))
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return data.reshape((blob.num, blob.channels, blob.height, blob.width))
    return data


def _caffemodel_oracle(data: bytes, layers: Any) -> None:
    """Whatever our reader accepts, protobuf must accept with the very same content."""
    from caffe_bridge.caffemodel import V0_LAYER_TYPES, V1_LAYER_TYPES

    def text(v: str | bytes) -> str:
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else v

    net = _minimal_net().FromString(data)
    ref = []
    for lay in net.layers:
        name, kind, blobs = text(lay.name), V1_LAYER_TYPES.get(lay.type), list(lay.blobs)
        kind = f"V1LayerType({lay.type})" if kind is None else kind
        if lay.HasField("layer"):
            name = text(lay.layer.name) if lay.layer.HasField("name") else name
            if lay.layer.HasField("type"):
                kind = V0_LAYER_TYPES.get(text(lay.layer.type), text(lay.layer.type))
            blobs += list(lay.layer.blobs)
        ref.append((name, kind, blobs))
    v2 = [(text(lay.name), text(lay.type), list(lay.blobs)) for lay in net.layer]

    def same(ours: Any, theirs: tuple[str, str, list[Any]]) -> bool:
        name, kind, blobs = theirs
        if (ours.name, ours.type, len(ours.blobs)) != (name, kind, len(blobs)):
            return False
        for a, b in zip(ours.blobs, blobs, strict=True):
            want = _ref_blob(b)
            if a.shape != want.shape or a.tobytes() != want.tobytes():
                return False
        return True

    # protobuf keeps V1 and V2 records apart; ours are in file order: an interleaving of both.
    assert _interleaves(list(layers), ref, v2, same), "layers differ from protobuf's"


def _interleaves(ours: list[Any], a: list[Any], b: list[Any], same: Callable) -> bool:
    if len(ours) != len(a) + len(b):
        return False
    memo: dict[tuple[int, int], bool] = {}

    def go(i: int, j: int) -> bool:
        if i + j == len(ours):
            return True
        if (i, j) not in memo:
            k = i + j
            memo[i, j] = (i < len(a) and same(ours[k], a[i]) and go(i + 1, j)) or (
                j < len(b) and same(ours[k], b[j]) and go(i, j + 1))
        return memo[i, j]

    return go(0, 0)


@target("caffemodel", _read_layers, (CaffemodelError,), _caffemodel_oracle, ".caffemodel")
def caffemodel_seeds() -> list[bytes]:
    """Small V2/V1/V0 files, legacy shapes, packed and unpacked encodings, blob-less layers."""
    from caffe_bridge import schema
    from caffe_bridge.caffemodel import write_caffemodel

    rng = np.random.default_rng(0)
    seeds: list[bytes] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.caffemodel"
        write_caffemodel(path, {
            "conv1": [rng.standard_normal((2, 1, 2, 2)).astype(np.float32), np.ones(2)],
            "conv1_split": [],
            "bn": [np.zeros(2), np.ones(2), np.array([999.98])],
            "scalar": [np.float32(1.5)],
        }, "seed", types={"conv1": "Convolution", "conv1_split": "Split", "bn": "BatchNorm"})
        seeds.append(path.read_bytes())
    net = schema.NetParameter(name="legacy")
    lay = net.layer.add(name="ip", type="InnerProduct")
    lay.bottom.append("data")
    lay.inner_product_param.num_output = 2
    blob = lay.blobs.add(num=1, channels=1, height=2, width=2)
    blob.data.extend([1, 2, 3, 4])
    blob.diff.extend([0, 0, 0, 0])
    lay.blobs.add().double_data.extend([0.5, 0.25])
    seeds.append(net.SerializeToString())
    v1 = schema.NetParameter(name="v1")
    conv = v1.layers.add(name="c", type=4)
    conv.blobs.add(num=1, channels=1, height=1, width=2).data.extend([1, 2])
    v1.layers.add(name="r", type=18)
    v0 = v1.layers.add()
    v0.layer.name, v0.layer.type = "fc", "innerproduct"
    v0.layer.blobs.add().data.extend([1, 2, 3])
    seeds.append(v1.SerializeToString())
    # unpacked data and dims, by hand: blob { shape { dim: 3 } data: 1 data: 2 data: 3 }
    dims = varint(1 << 3) + varint(3)
    body = varint(7 << 3 | 2) + varint(len(dims)) + dims
    body += b"".join(varint(5 << 3 | 5) + np.float32(v).tobytes() for v in (1, 2, 3))
    body += varint(8 << 3 | 1) + np.float64(4).tobytes()
    layer = varint(1 << 3 | 2) + varint(1) + b"u" + varint(7 << 3 | 2) + varint(len(body)) + body
    seeds.append(varint(100 << 3 | 2) + varint(len(layer)) + layer)
    return seeds


# -- target: load_net (prototxt text) ----------------------------------------------------------

FIXTURES = REPO / "tests" / "fixtures"

# Numbers worth writing where a definition has one: Caffe's and protobuf's limits around them.
NUMBERS = ["0", "-1", "1", "2", "3", "7", "255", "65535", "2147483647", "2147483648",
           "4294967295", "4294967296", "99999999999", "9223372036854775807",
           "18446744073709551616", "-2147483648", "-9223372036854775809", "1e30", "-1e-30",
           "nan", "inf", "-inf", "0x7fffffff", "1.5", "-0"]
WORDS = [b"layer", b"layers", b"input", b"input_dim", b"input_shape", b"dim", b"shape",
         b"bottom", b"top", b"name", b"type", b"include", b"phase: TRAIN", b"phase: TEST",
         b"convolution_param", b"pooling_param", b"inner_product_param", b"num_output",
         b"kernel_size", b"stride", b"pad", b"group", b"axis", b"{", b"}", b"<", b">", b":",
         b'"', b"'", b"#", b"\\", b"\n", b"\x00", b"true", b"MAX", b"-1"]
NOT_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80",
            b"\xe2\x82"]


CORPUS = FIXTURES / "wild"  # real public definitions (tests/fixtures/wild/SOURCES*.md)


SEED_FILES = 0  # --seed-files: that many definitions, evenly spaced (0: all of them)


def definition_paths() -> list[Path]:
    """The fixture, released SENet, zoo and wild-corpus definitions (or ``SEED_FILES`` of
    them, evenly spaced: a quick sample)."""
    paths = sorted([*FIXTURES.glob("*.prototxt"), *(FIXTURES / "senet").glob("*.prototxt"),
                    *(FIXTURES / "zoo").glob("*.prototxt"), *CORPUS.glob("*.prototxt")])
    if 0 < SEED_FILES < len(paths):
        paths = [paths[i * len(paths) // SEED_FILES] for i in range(SEED_FILES)]
    return paths


def prototxt_seeds() -> list[bytes]:
    """The fixture, released SENet, zoo and wild-corpus definitions, whole and shortened."""
    seeds = [p.read_bytes() for p in definition_paths()]
    if not seeds:  # no fixture definitions: the generated SE-ResNet-50 layout
        from caffe_bridge.models.senet import se_resnet50
        from caffe_bridge.models.senet_caffe import caffe_prototxt_text

        seeds = [caffe_prototxt_text(se_resnet50()).encode()]
    # Short seeds mutate faster and reach the same code: the first few layers of each one.
    short = []
    for data in seeds:
        lines = data.split(b"\n")
        cut = [i for i, line in enumerate(lines) if line.startswith((b"layer", b"layers"))]
        if len(cut) > 6:
            short.append(b"\n".join(lines[: cut[6]]))
    return seeds + short * 2


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _numbers(data: bytes) -> list[tuple[int, int]]:
    """Spans of the numbers in ``data``."""
    spans, i, n = [], 0, len(data)
    while i < n:
        if data[i : i + 1].isdigit() or (data[i : i + 1] == b"-" and data[i + 1 : i + 2].isdigit()):
            j = i + 1
            while j < n and (data[j : j + 1].isalnum() or data[j : j + 1] in b".-+"):
                j += 1
            spans.append((i, j))
            i = j
        else:
            i += 1
    return spans


# Numbers a fork layer's parameter may be given: zeros, negatives, huge, NaN/inf spellings.
FLOATS = ["0", "-0", "-1", "1e-30", "1e30", "-1e30", "3.4e38", "1e309", "nan", "-nan", "inf",
          "-inf", "infinity", "2147483647", "4294967296", "99999999999", "0.5", "-0.5", "1e-45"]
# Keys of the common BVLC parameters: the other numbers are mostly fork parameters.
COMMON_KEYS = (b"kernel_size", b"stride", b"pad", b"num_output", b"lr_mult", b"decay_mult",
               b"std", b"value", b"group", b"dilation", b"dim", b"local_size", b"alpha", b"beta",
               b"eps", b"moving_average_fraction", b"negative_slope", b"bias_term")
UNKNOWN = [b"fuzz_unknown: 3", b"fuzz_unknown_param { a: 1 b: \"x\" c { d: FOO } e: [1, 2] }",
           b"fuzz_unknown < x: -inf >", b"fuzz_list: [1, 2.5, \"s\", BAR]", b"fuzz: 'x' \"y\"",
           b"convolution_param { fuzz_nested { fuzz_deeper: 1 } }", b"fuzz_bare_word: WORD"]
ENUMS = [b"MAX", b"AVE", b"STOCHASTIC", b"SUM", b"PROD", b"TRAIN", b"TEST", b"CAFFE", b"CUDNN",
         b"ACROSS_CHANNELS", b"WITHIN_CHANNEL", b"CORNER", b"CENTER_SIZE", b"CORNER_SIZE",
         b"FLOOR", b"CEIL", b"LINEAR", b"NEAREST", b"FOO", b"max", b"0", b"1", b"7", b"-1",
         b"99999999999", b"\"MAX\"", b"true", b"nan"]
STRINGS = [b'""', b'"\\377\\000"', b"'single'", b'"a" "b"', b'"\\x41\\u00e9"', b'"unterminated',
           b'"\\"', b'"tab\\tnl\\n"', b'"' + b"y" * 5000 + b'"', b'"\\z"', b'"data"']
DATA_TYPES = [b"Data", b"ImageData", b"HDF5Data", b"MemoryData", b"DummyData", b"WindowData",
              b"AnnotatedData", b"VideoData", b"ImageSegData", b"DenseImageData", b"MatRead",
              b"Input", b"SoftmaxWithLoss", b"Accuracy", b"Silence", b"MultiBoxLoss",
              b"HDF5Output", b"FuzzLoss", b"Python"]
DATA_LAYERS = [
    b'layer { name: "fd" type: "Data" top: "data" top: "label" data_param { batch_size: %s } '
    b'transform_param { crop_size: %s } }',
    b'layer { name: "fd" type: "DummyData" top: "data" dummy_data_param { shape { dim: 1 '
    b'dim: %s dim: 2 dim: %s } } }',
    b'layer { name: "fd" type: "ImageData" top: "data" top: "label" image_data_param { '
    b'batch_size: 1 new_height: %s new_width: %s is_color: false } }',
    b'layer { name: "fd" type: "MemoryData" top: "data" top: "label" memory_data_param { '
    b'batch_size: 1 channels: 3 height: %s width: %s } }',
    b'layer { name: "fd" type: "HDF5Data" top: "data" hdf5_data_param { batch_size: %s } } #%s',
    b'input: "data" input_shape { dim: %s dim: 3 dim: %s dim: 4 }',
    b'input: "data" input_dim: 1 input_dim: %s input_dim: 2 input_dim: %s',
    b'layer { name: "fl" type: "SoftmaxWithLoss" bottom: "data" bottom: "%s" top: "%s" }',
    b'layer { name: "fi" type: "Input" top: "data" include { phase: TRAIN } input_param { '
    b'shape { dim: %s dim: %s } } }',
]


def _op_unknown(rng: random.Random, data: bytes) -> bytes:
    """A field, message or list the schema lacks, where a field may stand."""
    lines = _lines(data)
    at = rng.randrange(len(lines) + 1)
    lines.insert(at, rng.choice(UNKNOWN))
    return b"\n".join(lines)


def _op_enum(rng: random.Random, data: bytes) -> bytes:
    """An enum value becomes another type's value, a number, a lowercase or unknown word."""
    spans = [m.span(1) for m in re.finditer(rb":\s*([A-Z][A-Z_0-9]*)\b", data)]
    if not spans:
        return data
    i, j = rng.choice(spans)
    return data[:i] + rng.choice(ENUMS) + data[j:]


def _op_string(rng: random.Random, data: bytes) -> bytes:
    """A quoted string becomes an odd one (escapes, adjacent literals, unterminated, long)."""
    spans = [m.span() for m in re.finditer(rb'"[^"\n]*"', data)]
    if not spans:
        return data
    i, j = rng.choice(spans)
    return data[:i] + rng.choice(STRINGS) + data[j:]


def _op_duplicate_name(rng: random.Random, data: bytes) -> bytes:
    """A layer (or top) takes the name of another one: duplicate names."""
    spans = [m.span(2) for m in re.finditer(rb'\b(name|top|bottom):\s*"([^"\n]*)"', data)]
    if len(spans) < 2:
        return data
    (i, j), (k, m) = rng.sample(spans, 2)
    return data[:i] + data[k:m] + data[j:]


def _op_fork_number(rng: random.Random, data: bytes) -> bytes:
    """A number of a less common (mostly fork) parameter becomes zero, negative, huge, NaN..."""
    spans = [m.span(2) for m in re.finditer(rb"\b(\w+)\s*:\s*([-+]?[0-9.][0-9.eE+-]*f?)", data)
             if not m.group(1).startswith(COMMON_KEYS)]
    if not spans:
        return data
    i, j = rng.choice(spans)
    return data[:i] + rng.choice(FLOATS).encode() + data[j:]


def _op_data_layer(rng: random.Random, data: bytes) -> bytes:
    """Deploy-form mutations: a layer's type becomes a data/training type, a data layer, input
    field or TRAIN-only layer appears, an include/exclude rule moves or goes."""
    roll = rng.random()
    types = [m.span(1) for m in re.finditer(rb'\btype:\s*"([^"\n]*)"', data)]
    if roll < 0.4 and types:
        i, j = rng.choice(types)
        return data[:i] + rng.choice(DATA_TYPES) + data[j:]
    if roll < 0.6:
        phases = [m.span() for m in re.finditer(rb"(include|exclude)\s*\{[^{}]*\}", data)]
        if phases:
            i, j = rng.choice(phases)
            return data[:i] + rng.choice([b"", b"include { phase: TRAIN }",
                                          b"exclude { phase: TEST }", b"include { stage: \"x\" }",
                                          b"include { min_level: 2 }"]) + data[j:]
    lines = _lines(data)
    pick = [rng.choice(["0", "1", "3", "-1", "99999999999", "2147483648", "label", "data"])
            for _ in range(2)]
    lines.insert(rng.randrange(len(lines) + 1), rng.choice(DATA_LAYERS) % tuple(
        x.encode() for x in pick))
    return b"\n".join(lines)


TEXT_OPS = [_op_unknown, _op_enum, _op_string, _op_duplicate_name, _op_fork_number,
            _op_fork_number, _op_data_layer, _op_data_layer]


def mutate_text(rng: random.Random, seeds: list[bytes]) -> bytes:
    """One mutation round of a prototxt: line, token and byte level."""
    roll = rng.random()
    if roll < 0.02:
        return bytes(rng.choice(b" \n\t{}:#\"'abcdefghijklmnopqrstuvwxyz0123456789_-")
                     for _ in range(rng.randint(0, 2000)))
    if roll < 0.03:
        return rng.randbytes(rng.randint(0, 512))
    if roll < 0.1:  # a generic byte mutation
        return mutate(rng, seeds)
    data = rng.choice(seeds)
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 6])):
        lines = _lines(data)
        op = rng.randrange(14 + len(TEXT_OPS))
        at = rng.randrange(len(lines))
        if op == 0:  # truncate
            data = data[: rng.randrange(len(data) + 1)]
        elif op == 1:  # flip a bit
            if data:
                b = bytearray(data)
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                data = bytes(b)
        elif op == 2:  # delete lines
            del lines[at : at + rng.choice([1, 1, 2, 5, 20])]
            data = b"\n".join(lines)
        elif op == 3:  # duplicate lines
            span = lines[at : at + rng.choice([1, 1, 3, 10, 40])]
            lines[at:at] = span
            data = b"\n".join(lines)
        elif op == 4:  # swap two lines
            other = rng.randrange(len(lines))
            lines[at], lines[other] = lines[other], lines[at]
            data = b"\n".join(lines)
        elif op in (5, 6, 7):  # an out-of-range or odd number where a number was
            spans = _numbers(data)
            if spans:
                i, j = rng.choice(spans)
                data = data[:i] + rng.choice(NUMBERS).encode() + data[j:]
        elif op == 8:  # a huge input dimension
            dim = rng.choice([b"99999999999", b"2147483648", b"65536", b"4294967296",
                              b"100000", b"-5", b"0"])
            lines.insert(at, b"  dim: " + dim)
            data = b"\n".join(lines)
        elif op == 9:  # deep nesting, closed or not
            n = rng.choice([50, 500, 5000, 10000, 100000])
            opener = rng.choice([b"layer { ", b"layers { ", b"layer { layer { ",
                                 b"input_shape { ", b"layers { layer { ", b"{ ", b"< "])
            closer = b"}" if not opener.startswith(b"<") else b">"
            nest = opener * n + (closer * (n * opener.count(b"{" if closer == b"}" else b"<"))
                                 if rng.random() < 0.7 else b"")
            lines.insert(at, nest)
            data = b"\n".join(lines)
        elif op == 10:  # words and punctuation of the format, anywhere
            i = rng.randrange(len(data) + 1)
            data = data[:i] + rng.choice(WORDS) + data[i:]
        elif op == 11:  # bytes that are not UTF-8
            i = rng.randrange(len(data) + 1)
            data = data[:i] + rng.choice(NOT_UTF8) + data[i:]
        elif op == 12:  # splice lines of another seed
            other = _lines(rng.choice(seeds))
            j = rng.randrange(len(other))
            lines[at:at] = other[j : j + rng.choice([1, 5, 30])]
            data = b"\n".join(lines)
        elif op >= 14:  # reader, deploy and fork-parameter mutations (below)
            data = TEXT_OPS[op - 14](rng, data)
        else:  # rename: a quoted name becomes another seed's, or odd text
            quoted = [k for k, line in enumerate(lines) if line.count(b'"') >= 2]
            if quoted:
                k = rng.choice(quoted)
                a, b_ = lines[k].index(b'"'), lines[k].rindex(b'"')
                name = rng.choice([b"", b"data", b"conv1", b"x" * 300, b"\\xff", b"a\\nb",
                                   b"\xc3\xa9", b"Convolution", b"Input", b"\\\"", b"data@1"])
                lines[k] = lines[k][: a + 1] + name + lines[k][b_:]
                data = b"\n".join(lines)
    return data


_MAX_COUNT = 2**31 - 1


# ``input_shapes`` a user may give load_net (``--input-shape``): tiny, odd and absurd ones.
GIVEN_SHAPES: list[dict[str, list[int]]] = [
    {"data": [1, 3, 8, 8]}, {"data": [1, 1, 4, 4], "label": [1]}, {"data": [2, 3, 1, 1]},
    {"data": [0, 3, 4, 4]}, {"data": [1, 3, 99999999999, 4]}, {"data": []},
    {"data": [1, -3, 4, 4]}, {"nosuchinput": [1, 3, 4, 4]}, {"im_info": [1, 3], "data": [1, 3,
    16, 16]}, {"data": [1, 3, 2147483647, 2147483647]}, {"data": [1] * 40},
]


def _load_net(path: Path) -> Any:
    """load_net; one input in five gives ``input_shapes`` (tiny, odd or absurd)."""
    from caffe_bridge.ir import load_net

    digest = zlib.crc32(path.read_bytes())
    if digest % 5 == 0:
        return load_net(path, input_shapes=GIVEN_SHAPES[digest // 5 % len(GIVEN_SHAPES)])
    return load_net(path)


def _net_oracle(data: bytes, net: Any) -> None:
    """An accepted net is consistent: known values, sane shapes, outputs among its blobs."""
    import math

    for layer in net.layers:
        for v in (*layer.bottoms, *layer.tops):
            assert v in net.blobs, f"layer {layer.name!r}: value {v!r} has no blob"
        for shape in layer.param_shapes:
            assert all(isinstance(d, int) and d >= 0 for d in shape), (layer.name, shape)
            assert math.prod(shape) <= _MAX_COUNT, f"{layer.name!r}: parameter blob {shape}"
    for blob in net.blobs.values():
        assert all(isinstance(d, int) and d >= 0 for d in blob.shape), (blob.name, blob.shape)
        assert math.prod(blob.shape) <= _MAX_COUNT, f"blob {blob.name!r} of {blob.shape}"
    assert all(o in net.blobs for o in net.outputs)


@target("load_net", _load_net, (CaffeBridgeError,), _net_oracle, ".prototxt", mutate_text)
def load_net_seeds() -> list[bytes]:
    return prototxt_seeds()


def _parse(path: Path) -> Any:
    """The text reader alone, as parse_prototxt decodes the file; only its syntax error (or a
    PrototxtError, say for text that is not UTF-8) may escape."""
    from caffe_bridge import schema, textparse

    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return SKIPPED
    net = schema.NetParameter()
    return textparse.parse_text(text, net, {"layers": schema.LayerParameter})


def _parse_expected() -> tuple[type[BaseException], ...]:
    from caffe_bridge.textparse import TextSyntaxError

    return (TextSyntaxError, CaffeBridgeError)


@target("parse", _parse, _parse_expected(), None, ".prototxt", mutate_text)
def parse_seeds() -> list[bytes]:
    return prototxt_seeds()


# -- target: convert (small random nets) -------------------------------------------------------

RUN_LIMIT = 2**22  # values (all blobs and parameters) a net may hold for the run to go ahead
ODD = [-(2**31), -7, -2, -1, 0, 1, 2, 3, 5, 9, 64, 1000, 2**31 - 1, 2**31, 2**32 - 1,
       99999999999]


def _v(rng: random.Random, legit: list[int]) -> int:
    """Mostly a legitimate value, sometimes an odd one (negative, zero, huge)."""
    return rng.choice(ODD) if rng.random() < 0.15 else rng.choice(legit)


def _f(rng: random.Random) -> str:
    return rng.choice(["0", "1", "-1", "0.5", "2", "1e-5", "1e30", "-1e30", "nan", "inf",
                       "0.0001", "3"])


def _conv_params(rng: random.Random) -> list[str]:
    out = [f"num_output: {_v(rng, [1, 2, 3, 4, 6, 8])}"]
    geometry = rng.random()
    if geometry < 0.8:
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
            out.append(f"kernel_size: {_v(rng, [1, 2, 3, 5])}")
    else:
        out += [f"kernel_h: {_v(rng, [1, 2, 3])}", f"kernel_w: {_v(rng, [1, 2, 3])}"]
    for name, legit in (("stride", [1, 1, 2, 3]), ("pad", [0, 0, 1, 2]), ("dilation", [1, 2])):
        for _ in range(rng.choice([0, 0, 1, 1, 2])):
            out.append(f"{name}: {_v(rng, legit)}")
    for name, legit in (("stride_h", [1, 2]), ("stride_w", [1, 2]), ("pad_h", [0, 1]),
                        ("pad_w", [0, 1])):
        if rng.random() < 0.08:
            out.append(f"{name}: {_v(rng, legit)}")
    if rng.random() < 0.3:
        out.append(f"group: {_v(rng, [1, 2, 3])}")
    if rng.random() < 0.2:
        out.append(f"bias_term: {rng.choice(['true', 'false'])}")
    if rng.random() < 0.15:
        out.append(f"axis: {_v(rng, [1, -3, 0, 2])}")
    return out


def _layer_params(rng: random.Random, kind: str, n_tops: int) -> str:
    """The ``*_param`` block of one random layer (may be empty)."""
    p: list[str] = []
    block = ""
    if kind in ("Convolution", "Deconvolution"):
        block, p = "convolution_param", _conv_params(rng)
    elif kind == "Pooling":
        block = "pooling_param"
        p.append(f"pool: {rng.choice(['MAX', 'AVE', 'MAX', 'AVE', 'STOCHASTIC'])}")
        if rng.random() < 0.2:
            p.append("global_pooling: true")
        if rng.random() < 0.85:
            p.append(f"kernel_size: {_v(rng, [1, 2, 3])}")
        if rng.random() < 0.1:
            p += [f"kernel_h: {_v(rng, [1, 2])}", f"kernel_w: {_v(rng, [1, 3])}"]
        if rng.random() < 0.5:
            p.append(f"stride: {_v(rng, [1, 2, 3])}")
        if rng.random() < 0.4:
            p.append(f"pad: {_v(rng, [0, 1])}")
        if rng.random() < 0.2:
            p.append(rng.choice(["round_mode: FLOOR", "round_mode: CEIL", "ceil_mode: false",
                                 "ceil_mode: true"]))
    elif kind == "InnerProduct":
        block = "inner_product_param"
        p.append(f"num_output: {_v(rng, [1, 3, 10])}")
        if rng.random() < 0.3:
            p.append(f"axis: {_v(rng, [1, -1, 2, 0])}")
        if rng.random() < 0.2:
            p.append(f"transpose: {rng.choice(['true', 'false'])}")
        if rng.random() < 0.2:
            p.append(f"bias_term: {rng.choice(['true', 'false'])}")
    elif kind == "ReLU" and rng.random() < 0.4:
        block, p = "relu_param", [f"negative_slope: {_f(rng)}"]
    elif kind == "PReLU" and rng.random() < 0.4:
        block, p = "prelu_param", [f"channel_shared: {rng.choice(['true', 'false'])}"]
    elif kind == "ELU" and rng.random() < 0.5:
        block, p = "elu_param", [f"alpha: {_f(rng)}"]
    elif kind in ("Power", "Exp", "Log") and rng.random() < 0.7:
        block = {"Power": "power_param", "Exp": "exp_param", "Log": "log_param"}[kind]
        names = ["power", "scale", "shift"] if kind == "Power" else ["base", "scale", "shift"]
        p = [f"{n}: {_f(rng)}" for n in names if rng.random() < 0.6]
    elif kind == "Threshold" and rng.random() < 0.5:
        block, p = "threshold_param", [f"threshold: {_f(rng)}"]
    elif kind == "Dropout" and rng.random() < 0.5:
        block, p = "dropout_param", [f"dropout_ratio: {_f(rng)}"]
    elif kind == "Softmax" and rng.random() < 0.5:
        block, p = "softmax_param", [f"axis: {_v(rng, [1, -1, 0, 2, 3])}"]
    elif kind == "LRN":
        block = "lrn_param"
        p = [f"local_size: {_v(rng, [1, 3, 5, 2])}", f"alpha: {_f(rng)}", f"beta: {_f(rng)}"]
        if rng.random() < 0.5:
            p.append(f"norm_region: {rng.choice(['ACROSS_CHANNELS', 'WITHIN_CHANNEL'])}")
        if rng.random() < 0.3:
            p.append(f"k: {_f(rng)}")
    elif kind == "BatchNorm" and rng.random() < 0.5:
        block = "batch_norm_param"
        p = [f"use_global_stats: {rng.choice(['true', 'false'])}"]
        if rng.random() < 0.5:
            p.append(f"eps: {_f(rng)}")
    elif kind in ("Scale", "Bias") and rng.random() < 0.7:
        block = "scale_param" if kind == "Scale" else "bias_param"
        if rng.random() < 0.6:
            p.append(f"axis: {_v(rng, [1, 0, -1, 2])}")
        if rng.random() < 0.5:
            p.append(f"num_axes: {_v(rng, [1, 0, -1, 2])}")
        if kind == "Scale" and rng.random() < 0.5:
            p.append(f"bias_term: {rng.choice(['true', 'false'])}")
    elif kind == "Eltwise" and rng.random() < 0.7:
        block = "eltwise_param"
        p = [f"operation: {rng.choice(['SUM', 'PROD', 'MAX'])}"]
        for _ in range(rng.choice([0, 2, 2, 3])):
            p.append(f"coeff: {_f(rng)}")
    elif kind == "Concat" and rng.random() < 0.6:
        block = "concat_param"
        p = [f"{rng.choice(['axis', 'axis', 'concat_dim'])}: {_v(rng, [1, 0, 2, -1])}"]
    elif kind == "Slice":
        block = "slice_param"
        if rng.random() < 0.6:
            p.append(f"axis: {_v(rng, [1, 0, 2, -1])}")
        if rng.random() < 0.5:
            points = sorted(rng.choice([1, 2, 3, 0, 5]) for _ in range(n_tops - 1))
            p += [f"slice_point: {x}" for x in points]
    elif kind == "Flatten" and rng.random() < 0.6:
        block = "flatten_param"
        p = [f"axis: {_v(rng, [1, 0, 2, -1])}", f"end_axis: {_v(rng, [-1, 2, 3, 1])}"]
    elif kind == "Reshape":
        block = "reshape_param"
        dims = [_v(rng, [0, 0, -1, 1, 2, 3, 4]) for _ in range(rng.randint(0, 5))]
        p = ["shape { " + " ".join(f"dim: {d}" for d in dims) + " }"]
        if rng.random() < 0.3:
            p.append(f"axis: {_v(rng, [0, 1, -1, 2])}")
        if rng.random() < 0.3:
            p.append(f"num_axes: {_v(rng, [-1, 1, 2, 0])}")
    elif kind == "Crop" and rng.random() < 0.8:
        block = "crop_param"
        p = [f"axis: {_v(rng, [2, 1, 0, -1])}"]
        p += [f"offset: {_v(rng, [0, 1, 2])}" for _ in range(rng.choice([0, 1, 2]))]
    elif kind == "ArgMax":
        block = "argmax_param"
        if rng.random() < 0.7:
            p.append(f"top_k: {_v(rng, [1, 2, 3])}")
        if rng.random() < 0.5:
            p.append(f"axis: {_v(rng, [1, 0, -1, 2])}")
        if rng.random() < 0.4:
            p.append(f"out_max_val: {rng.choice(['true', 'false'])}")
    if not block:
        return ""
    return f" {block} {{ {' '.join(p)} }}"


KINDS = {  # type -> (bottoms, tops) ranges
    "Convolution": (1, 1), "Deconvolution": (1, 1), "Pooling": (1, 1), "InnerProduct": (1, 1),
    "ReLU": (1, 1), "PReLU": (1, 1), "ELU": (1, 1), "Sigmoid": (1, 1), "TanH": (1, 1),
    "AbsVal": (1, 1), "BNLL": (1, 1), "Power": (1, 1), "Exp": (1, 1), "Log": (1, 1),
    "Threshold": (1, 1), "Dropout": (1, 1), "Softmax": (1, 1), "LRN": (1, 1),
    "BatchNorm": (1, 1), "Scale": (1, 2), "Bias": (1, 2), "Eltwise": (2, 1), "Concat": (1, 1),
    "Slice": (1, 3), "Split": (1, 3), "Flatten": (1, 1), "Reshape": (1, 1), "Crop": (2, 1),
    "ArgMax": (1, 1), "Axpy": (3, 1), "Swish": (1, 1), "Clip": (1, 1),
}


def random_net(rng: random.Random, _seeds: list[bytes] | None = None) -> bytes:
    """A small definition: one Input of a random (mostly tiny) shape, then 1 to 4 layers."""
    rank = rng.choice([4, 4, 4, 4, 4, 2, 3, 5, 1])
    shape = [rng.choice([1, 1, 2])] + [rng.randint(1, 6)] + [rng.randint(1, 10)
                                                            for _ in range(rank - 2)]
    shape = shape[:rank]
    if rng.random() < 0.1:
        shape[rng.randrange(rank)] = rng.choice(ODD)
    lines = ['name: "fuzz"',
             'layer { name: "data" type: "Input" top: "data" input_param { shape { '
             + " ".join(f"dim: {d}" for d in shape) + " } } }"]
    values = ["data"]
    for i in range(rng.randint(1, 4)):
        kind = rng.choice(list(KINDS))
        n_bottoms, max_tops = KINDS[kind]
        if kind in ("Eltwise", "Concat") or (kind in ("Scale", "Bias") and rng.random() < 0.3):
            n_bottoms = rng.choice([2, 2, 3]) if kind != "Scale" else 2
        if kind == "Concat" and rng.random() < 0.3:
            n_bottoms = 1
        recent = values[-3:]
        bottoms = [rng.choice(recent) for _ in range(n_bottoms)]
        n_tops = rng.randint(1, max_tops) if max_tops > 1 else 1
        if n_tops == 1 and n_bottoms == 1 and rng.random() < 0.25:
            tops = bottoms[:]  # in place
        else:
            tops = [f"t{i}_{k}" for k in range(n_tops)]
        text = f'layer {{ name: "l{i}" type: "{kind}"'
        text += "".join(f' bottom: "{b}"' for b in bottoms)
        text += "".join(f' top: "{t}"' for t in tops)
        text += _layer_params(rng, kind, n_tops) + " }"
        lines.append(text)
        values.extend(t for t in tops if t not in values)
    return ("\n".join(lines) + "\n").encode()


def _size(net: Any) -> int:
    """Values the net's blobs, parameters and the converters' big buffers hold."""
    import math

    total = sum(math.prod(b.shape) for b in net.blobs.values())
    total += sum(math.prod(s) for layer in net.layers for s in layer.param_shapes)
    for layer in net.layers:  # LRN across channels pads the channel axis by local_size - 1
        if layer.type == "LRN" and layer.param.lrn_param.norm_region == 0:
            x = net.blobs[layer.bottoms[0]].shape
            c = x[1] if len(x) > 1 else 1
            total += math.prod(x) // max(c, 1) * (layer.param.lrn_param.local_size - 1)
    return total


def _index_feeds(net: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs that hold indices get valid ones (N(0, 1) values break the layers' contract, as
    in Caffe, where out-of-range indices are a fatal CHECK or undefined): the rois of
    (PS)ROIPooling (batch index, then corners) and an unpooling Upsample's mask. The inputs of
    a YOLO head are shifted to low scores: on N(0, 1) logits nearly every box x class passes
    the confidence threshold, and the source's greedy NMS is O(candidates x kept) (seconds
    for 200,000 candidates: a cost of the data, not of the definition)."""
    rng = np.random.default_rng(0)
    for layer in net.layers:
        if layer.type in YOLO_HEADS:  # mostly background, as a trained net's head says
            for name in set(layer.bottoms) & set(feeds):
                feeds[name] = feeds[name] - np.float32(4)
        if len(layer.bottoms) != 2 or layer.bottoms[1] not in feeds:
            continue
        name = layer.bottoms[1]
        x = feeds[name]
        if layer.type in ("ROIPooling", "PSROIPooling") and x.size % 5 == 0:
            rois = rng.uniform(0, 64, (x.size // 5, 5))
            rois[:, 0] = rng.integers(0, net.blobs[layer.bottoms[0]].shape[0], len(rois))
            feeds[name] = rois.reshape(x.shape).astype(np.float32)
        elif layer.type == "Upsample":
            out = net.blobs[layer.tops[0]].shape
            feeds[name] = rng.integers(0, max(1, out[-1] * out[-2]), x.shape).astype(np.float32)
    return feeds


INDEXED = {"ROIPooling", "PSROIPooling", "Upsample"}  # inputs with indices: see _index_feeds
YOLO_HEADS = {"Yolov3DetectionOutput", "YoloDetectionOutput"}
# Layers whose output count depends on the data (the IR states the most they can give).
DATA_DEPENDENT = {"DetectionOutput", "Yolov3DetectionOutput", "YoloDetectionOutput", "Proposal",
                  "Python", "CTCGreedyDecoder"}


def _convert_run(path: Path) -> Any:
    """load_net, seeded weights (every other input, unless it has index inputs), convert, run
    on the declared shapes.

    One input in four goes through the code generator instead (``caffe2torch convert``'s
    module, with its per-layer rebuild check), and its GraphModule runs.
    """
    import torch

    from caffe_bridge.build import build_module
    from caffe_bridge.codegen import generate
    from caffe_bridge.ir import load_net, with_weights
    from caffe_bridge.random_weights import random_inputs, random_weights

    net = load_net(path)
    if _size(net) > RUN_LIMIT:
        return SKIPPED  # valid, but too large to run here: counted apart
    digest = zlib.crc32(path.read_bytes())
    if digest % 2 and not any(layer.type in INDEXED for layer in net.layers):
        net = with_weights(net, random_weights(net))  # (it runs the net on N(0, 1) inputs)
    indexed = any(layer.type in INDEXED for layer in net.layers)  # codegen checks on N(0, 1)
    gm = generate(net).module if digest % 8 < 2 and not indexed else build_module(net)
    feeds = _index_feeds(net, random_inputs(net))
    with torch.no_grad():
        out = gm(*[torch.from_numpy(feeds[n]) for n in net.inputs])
    return net, out if isinstance(out, tuple) else (out,)


def _convert_oracle(data: bytes, result: Any) -> None:
    """The converted net computes blobs of the shapes the IR inferred."""
    net, outs = result
    _net_oracle(data, net)
    want = [net.blobs[v].shape for v in net.outputs]
    got = [tuple(o.shape) for o in outs]
    if any(layer.type in DATA_DEPENDENT for layer in net.layers):  # ranks and counts only
        want = [len(s) for s in want]
        got = [len(s) for s in got]
    assert got == want, f"output shapes {got}, the IR inferred {want}"


SNIPPET_INPUT_LIMIT = 300_000  # values the inputs of one corpus window may hold
SNIPPET_PARAM_LIMIT = 500_000  # and its parameters: each input stays quick to convert and run


def _input_layer(name: str, shape: tuple[int, ...]) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return (f'layer {{ name: "in_{name}" type: "Input" top: "{name}" '
            f"input_param {{ shape {{ {dims} }} }} }}")


def _window_text(net: Any, start: int, stop: int) -> str | None:
    """Layers ``start:stop`` of a loaded corpus net as a definition of their own: each value
    they read but do not make becomes an Input of its inferred shape. None when too large."""
    import math

    from google.protobuf import text_format

    layers = net.layers[start:stop]
    made = {v for layer in layers for v in layer.tops}
    inputs: dict[str, tuple[int, ...]] = {}
    for layer in layers:
        for value, name in zip(layer.bottoms, layer.param.bottom, strict=False):
            if value not in made and name not in inputs:
                inputs[name] = net.blobs[value].shape
    if sum(math.prod(v) for v in inputs.values()) > SNIPPET_INPUT_LIMIT or sum(
            math.prod(s) for layer in layers for s in layer.param_shapes) > SNIPPET_PARAM_LIMIT:
        return None
    lines = ['name: "window"', *(_input_layer(n, v) for n, v in inputs.items())]
    for layer in layers:
        body = text_format.MessageToString(layer.param, as_one_line=True)
        lines.append(f"layer {{ {body} }}")
    return "\n".join(lines) + "\n"


def _corpus_nets() -> Iterator[Any]:
    """The wild-corpus, zoo and SENet definitions that load (train/test ones with the shapes
    tests/fixtures/wild/input_shapes.json gives)."""
    import json
    import warnings

    from caffe_bridge.ir import load_net

    given = json.loads((CORPUS / "input_shapes.json").read_text()) if CORPUS.is_dir() else {}
    for path in definition_paths():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                yield load_net(path, input_shapes=given.get(path.stem))
            except CaffeBridgeError:
                continue


def corpus_windows() -> dict[str, list[bytes]]:
    """Windows of 1 to 3 consecutive layers of every corpus net, as small definitions, by the
    registry key of their first layer (each deduplicated)."""
    from caffe_bridge.converters.registry import registry_key

    by_type: dict[str, dict[bytes, None]] = {}
    for net in _corpus_nets():
        for start, layer in enumerate(net.layers):
            if layer.type == "Input":
                continue
            for size in (1, 2, 3):
                text = _window_text(net, start, start + size)
                if text is not None:
                    key = registry_key(layer.type, layer.param)
                    by_type.setdefault(key, {})[text.encode()] = None
    return {k: list(v) for k, v in sorted(by_type.items())}


def convert_input(rng: random.Random, seeds: list[bytes]) -> bytes:
    """A random small net (2 in 5), or a corpus window with its numbers, enums, names and
    fields mutated (fork layer types twice as often as the others)."""
    if not seeds or rng.random() < 0.4:
        return random_net(rng)
    data = rng.choice(seeds)
    for _ in range(rng.choice([1, 1, 2, 3])):
        roll = rng.random()
        if roll < 0.5:
            data = _op_fork_number(rng, data)
        elif roll < 0.65:  # any number, common keys too, with the integer limits
            spans = _numbers(data)
            if spans:
                i, j = rng.choice(spans)
                data = data[:i] + rng.choice(NUMBERS + FLOATS).encode() + data[j:]
        elif roll < 0.9:
            data = rng.choice(TEXT_OPS)(rng, data)
        else:
            data = mutate_text(rng, [data])
    return data


@target("convert", _convert_run, (CaffeBridgeError,), _convert_oracle, ".prototxt",
        convert_input)
def convert_seeds() -> list[bytes]:
    """Corpus windows, about as many starting at each layer type, fork types three times as
    many as the BVLC ones: up to 16 windows of each type, each fork window listed 3 times."""
    from caffe_bridge import converters

    forks = {info.type for info in converters.REGISTRY if info.fork != "BVLC"}
    seeds: list[bytes] = []
    for kind, windows in corpus_windows().items():
        step = max(1, len(windows) // 16)
        seeds += windows[::step][:16] * (3 if kind in forks else 1)
    return seeds


# -- the loop -----------------------------------------------------------------------------------


class FuzzTimeout(BaseException):  # noqa: N818 - BaseException: no `except Exception` eats it
    """An input ran past the time limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`FuzzTimeout` in this (main) thread after ``seconds``."""

    def expire(_sig: int, _frame: Any) -> None:
        raise FuzzTimeout(f"still running after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cap_address_space(extra_gb: float) -> None:
    """Let this process map at most ``extra_gb`` GiB more than now (runaway allocations fail)."""
    with open("/proc/self/status") as f:
        vm_kb = int(next(line for line in f if line.startswith("VmSize")).split()[1])
    limit = vm_kb * 1024 + int(extra_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))



def _signature(exc: BaseException) -> str:
    """Exception type and innermost package frame: failures with one cause share it."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "caffe_bridge" in f.filename or "converters" in f.filename]
    where = ours[-1] if ours else (frames[-1] if frames else None)
    loc = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    return f"{type(exc).__name__}{loc}"


def fuzz(
    tgt: Target,
    n: int,
    seed: int,
    out: Path | None,
    use_oracle: bool,
    timeout: float = 5.0,
    max_rss_growth_mb: float = 1024.0,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run ``n`` inputs of ``tgt``; counts, the slowest input and failure signatures."""
    expected = tgt.expected
    seeds = tgt.seeds()
    make = tgt.make or mutate
    rng = random.Random(seed)
    stats: dict[str, Any] = {"inputs": 0, "accepted": 0, "rejected": 0, "failures": 0,
                             "skipped_large": 0, "slowest_s": 0.0, "rejections": Counter(),
                             "signatures": Counter()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{tgt.suffix}"
        for i in range(n):
            data = make(rng, seeds)
            path.unlink(missing_ok=True)  # a fresh file: truncating one can be slow (discard)
            path.write_bytes(data)
            rss0 = _rss_mb()
            t0 = time.perf_counter()
            problem = signature = None
            try:
                with time_limit(timeout):
                    result = tgt.run(path)
                    if result is SKIPPED:
                        stats["skipped_large"] += 1
                    elif use_oracle and tgt.oracle is not None:
                        tgt.oracle(data, result)
                stats["accepted"] += 1
            except expected as err:
                stats["rejected"] += 1
                stats["rejections"][type(err).__name__] += 1
            except (Exception, FuzzTimeout) as err:  # noqa: BLE001 - anything else is a finding
                problem, signature = traceback.format_exc(), _signature(err)
                if isinstance(err, FuzzTimeout):
                    signature = f"hang ({signature})"
            finally:
                result = None
            took = time.perf_counter() - t0
            stats["slowest_s"] = max(stats["slowest_s"], took)
            grew = _rss_mb() - rss0
            if problem is None and grew > max_rss_growth_mb:
                problem = f"peak RSS grew by {grew:.0f} MB on this input\n"
                signature = "huge allocation"
            stats["inputs"] += 1
            if problem is not None:
                stats["failures"] += 1
                stats["signatures"][signature] += 1
                if not quiet:
                    print(f"failure #{stats['failures']} on input {i} ({signature}):\n{problem}",
                          file=sys.stderr)
                if out is not None:
                    out.mkdir(parents=True, exist_ok=True)
                    (out / f"{tgt.name}-{seed}-{i}{tgt.suffix}").write_bytes(data)
                    (out / f"{tgt.name}-{seed}-{i}.txt").write_text(problem)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, nargs="+", choices=sorted(TARGETS))
    parser.add_argument("--n", type=int, default=10000, help="number of inputs per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for failing inputs")
    parser.add_argument("--no-oracle", action="store_true", help="crash-only, no oracle check")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds one input may run before it counts as a hang")
    parser.add_argument("--max-rss-growth-mb", type=float, default=1024.0,
                        help="peak-RSS growth of one input that counts as a huge allocation")
    parser.add_argument("--max-memory-gb", type=float, default=4.0,
                        help="address space this process may add (0: no cap)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no tracebacks on stderr")
    parser.add_argument("--seed-files", type=int, default=0,
                        help="seed from this many definitions, evenly spaced (0: all)")
    args = parser.parse_args(argv)
    global SEED_FILES
    SEED_FILES = args.seed_files
    import torch

    torch.set_num_threads(1)  # tiny inputs: threads only add noise
    warnings.simplefilter("ignore")  # mutated definitions warn a lot; errors are what counts
    if args.max_memory_gb > 0:
        cap_address_space(args.max_memory_gb)
    failures = 0
    for name in args.target:
        t0 = time.perf_counter()
        stats = fuzz(TARGETS[name], args.n, args.seed, args.out, not args.no_oracle,
                     args.timeout, args.max_rss_growth_mb, args.quiet)
        failures += stats["failures"]
        rejections = ", ".join(f"{k} {v}" for k, v in stats["rejections"].most_common())
        skipped = stats["skipped_large"]
        large = f" (not run on: {skipped}: too large, or not UTF-8)" if skipped else ""
        print(f"target={name} seed={args.seed} inputs={stats['inputs']} "
              f"accepted={stats['accepted']}{large} rejected={stats['rejected']} "
              f"failures={stats['failures']} slowest={stats['slowest_s'] * 1e3:.1f}ms "
              f"total={time.perf_counter() - t0:.1f}s", flush=True)
        if rejections:
            print(f"  rejections: {rejections}")
        for sig, count in stats["signatures"].most_common():
            print(f"  failure x{count}: {sig}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
