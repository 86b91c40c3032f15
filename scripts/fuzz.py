"""Seeded mutation fuzzer for the file readers: only the documented errors may escape.

    python scripts/fuzz.py --target caffemodel --n 10000 [--seed 0] [--out fuzz-failures]

Each target supplies a seed corpus (bytes), a function that consumes one input file, the
exception types that count as a clean rejection and, optionally, an oracle that checks what an
accepted input produced. The loop mutates a seed (truncations, bit flips, lying varint lengths,
inserted/deleted/duplicated spans, splices, pure garbage), writes it to a file, runs the target
and counts accepted inputs, rejected inputs and failures (any other exception, or an oracle
mismatch). Failures are saved under ``--out`` with their traceback; the exit status is 1 when
there are any. Add a target with ``@target("name", ...)`` on a function returning its seeds.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from caffe_bridge.errors import CaffemodelError  # noqa: E402


@dataclass(frozen=True)
class Target:
    """What to fuzz: seeds, how to run one input file, what a clean rejection looks like."""

    name: str
    seeds: Callable[[], list[bytes]]
    run: Callable[[Path], Any]
    expected: tuple[type[BaseException], ...]
    oracle: Callable[[bytes, Any], None] | None = None  # raises AssertionError on a mismatch
    suffix: str = ".bin"


TARGETS: dict[str, Target] = {}


def target(
    name: str,
    run: Callable[[Path], Any],
    expected: tuple[type[BaseException], ...],
    oracle: Callable[[bytes, Any], None] | None = None,
    suffix: str = ".bin",
) -> Callable[[Callable[[], list[bytes]]], Callable[[], list[bytes]]]:
    """Register a target; decorates the function that builds its seed corpus."""

    def wrap(seeds: Callable[[], list[bytes]]) -> Callable[[], list[bytes]]:
        TARGETS[name] = Target(name, seeds, run, expected, oracle, suffix)
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


# -- the loop -----------------------------------------------------------------------------------


def fuzz(tgt: Target, n: int, seed: int, out: Path | None, use_oracle: bool) -> dict[str, Any]:
    expected = tgt.expected
    seeds = tgt.seeds()
    rng = random.Random(seed)
    stats: dict[str, Any] = {"inputs": 0, "accepted": 0, "rejected": 0, "failures": 0,
                             "slowest_s": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{tgt.suffix}"
        for i in range(n):
            data = mutate(rng, seeds)
            path.unlink(missing_ok=True)  # a fresh file: truncating one can be slow (discard)
            path.write_bytes(data)
            t0 = time.perf_counter()
            problem = None
            try:
                result = tgt.run(path)
                if use_oracle and tgt.oracle is not None:
                    tgt.oracle(data, result)
                stats["accepted"] += 1
            except expected:
                stats["rejected"] += 1
            except Exception:  # noqa: BLE001 - anything else is a finding
                problem = traceback.format_exc()
            stats["slowest_s"] = max(stats["slowest_s"], time.perf_counter() - t0)
            stats["inputs"] += 1
            if problem is not None:
                stats["failures"] += 1
                print(f"failure #{stats['failures']} on input {i}:\n{problem}", file=sys.stderr)
                if out is not None:
                    out.mkdir(parents=True, exist_ok=True)
                    (out / f"{tgt.name}-{seed}-{i}{tgt.suffix}").write_bytes(data)
                    (out / f"{tgt.name}-{seed}-{i}.txt").write_text(problem)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, choices=sorted(TARGETS))
    parser.add_argument("--n", type=int, default=10000, help="number of inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for failing inputs")
    parser.add_argument("--no-oracle", action="store_true", help="crash-only, no oracle check")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    stats = fuzz(TARGETS[args.target], args.n, args.seed, args.out, not args.no_oracle)
    print(f"target={args.target} seed={args.seed} inputs={stats['inputs']} "
          f"accepted={stats['accepted']} rejected={stats['rejected']} "
          f"failures={stats['failures']} slowest={stats['slowest_s'] * 1e3:.1f}ms "
          f"total={time.perf_counter() - t0:.1f}s")
    return 1 if stats["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
