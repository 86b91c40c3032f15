"""Benchmark the caffemodel reader against a full protobuf parse, for speed and peak memory.

Builds random caffemodels (in a temporary folder) with the layer names, types and parameter
shapes of the released SE-ResNet-50 (~112 MB) and SENet-154 (~460 MB), then compares

* ours:     ``caffe_bridge.read_caffemodel(path)`` (mmap, zero-copy views), and
* protobuf: ``schema.NetParameter.FromString(data)`` + ``np.array(blob.data)`` per blob,

both touching every blob (a sum), best of ``--repeat`` runs in this process, and the peak RSS
(``ru_maxrss``) of each reader in a fresh child process that only reads the file and sums the
blobs. The children import the caffemodel/schema modules without the package ``__init__`` (which
pulls in torch), so their RSS is the reader's, plus the interpreter and numpy.

    python scripts/bench_read.py [--models SE-ResNet-50 SENet-154] [--repeat 3]
    python scripts/bench_read.py --large [--tmpdir DIR]

``--large`` runs the beyond-2-GB check instead (add ``--models`` to run both): a sparse file of
4 GiB + 4 MiB whose first layer holds one 4 GiB blob, with seeded random values written at
positions spread over it (most past byte 2**31, several past 2**32), followed by layers with
random blobs that start past 2**32. Every written value is compared with what the reader
returns, and a few of the holes must read as zeros; the time to open and parse the file and to
check the values is reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from caffe_bridge.caffemodel import _len_field, _varint_bytes  # the writer's wire encoders

REPO = Path(__file__).resolve().parents[1]
SENET = REPO / "tests" / "fixtures" / "senet"
MODELS = {"SE-ResNet-50": "SE-ResNet-50.prototxt", "SENet-154": "SENet-154.prototxt"}

# Child program: import only what one reader needs (no torch), read, touch, report ru_maxrss.
CHILD = r"""
import json, resource, sys, types
pkg = types.ModuleType("caffe_bridge")
pkg.__path__ = [sys.argv[1]]
sys.modules["caffe_bridge"] = pkg
import numpy as np
which, path = sys.argv[2], sys.argv[3]
if which == "ours":
    from caffe_bridge.caffemodel import read_caffemodel
else:
    from caffe_bridge import schema
    schema.NetParameter  # build the descriptor pool before measuring the baseline
def kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def hwm_kb():
    try:
        with open("/proc/self/status") as f:
            return int(next(l for l in f if l.startswith("VmHWM")).split()[1])
    except (OSError, StopIteration):
        return -1
before = kb()
total = 0.0
if which == "ours":
    for blobs in read_caffemodel(path).values():
        for b in blobs:
            total += float(b.sum(dtype=np.float64))
else:
    with open(path, "rb") as f:
        net = schema.NetParameter.FromString(f.read())
    for layer in net.layer:
        for b in layer.blobs:
            total += float(np.array(b.data, dtype=np.float32).sum(dtype=np.float64))
print(json.dumps({"before_kb": before, "peak_kb": kb(), "hwm_kb": hwm_kb(), "total": total}))
"""


def build(model: str, folder: Path, seed: int = 0) -> Path:
    """Write a random caffemodel with the model's layer records and parameter shapes."""
    from caffe_bridge import load_net
    from caffe_bridge.caffemodel import write_caffemodel

    net = load_net(SENET / MODELS[model])
    rng = np.random.default_rng(seed)
    weights: dict[str, list[np.ndarray]] = {}
    types: dict[str, str] = {}
    for layer in net.layers:  # blob-less layers are written too, as Caffe does
        weights[layer.name] = [
            rng.standard_normal(shape, dtype=np.float32) for shape in layer.param_shapes
        ]
        types[layer.name] = layer.type
    path = folder / f"{model}.caffemodel"
    write_caffemodel(path, weights, net.name, types=types)
    return path


def read_ours(path: Path) -> float:
    from caffe_bridge.caffemodel import read_caffemodel

    total = 0.0
    for blobs in read_caffemodel(path).values():
        for b in blobs:
            total += float(b.sum(dtype=np.float64))
    return total


def read_protobuf(path: Path) -> float:
    from caffe_bridge import schema

    total = 0.0
    net = schema.NetParameter.FromString(path.read_bytes())
    for layer in net.layer:
        for b in layer.blobs:
            total += float(np.array(b.data, dtype=np.float32).sum(dtype=np.float64))
    return total


def best_of(fn: Callable[[Path], float], path: Path, repeat: int) -> tuple[float, float]:
    best, total = float("inf"), 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        total = fn(path)
        best = min(best, time.perf_counter() - t0)
    return best, total


# Linux carries the RSS of the process image an exec replaces into the new program's
# ru_maxrss; a child forked from this (large) process would report at least our RSS. So the
# measured children are spawned by a small launcher started while this process is still small.
LAUNCHER = r"""
import json, subprocess, sys
for line in sys.stdin:
    r = subprocess.run(json.loads(line), capture_output=True, text=True)
    print(json.dumps({"rc": r.returncode, "out": r.stdout, "err": r.stderr}), flush=True)
"""


class Launcher:
    """A small process that runs the measured children on request."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        )

    def child_rss(self, which: str, path: Path) -> dict[str, float]:
        argv = [sys.executable, "-c", CHILD, str(REPO / "caffe_bridge"), which, str(path)]
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        if reply["rc"] != 0:
            raise SystemExit(f"{which} child failed:\n{reply['err']}")
        return json.loads(reply["out"].strip().splitlines()[-1])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def _blob_parts(shape: tuple[int, ...], nbytes: int) -> tuple[bytes, bytes]:
    """(bytes before the packed data, bytes after it) of a BlobProto field (number 7)."""
    dims = b"".join(_varint_bytes(d) for d in shape)
    shape_msg = _len_field(1, len(dims)) + dims
    shape_field = _len_field(7, len(shape_msg)) + shape_msg
    data_head = _len_field(5, nbytes)
    return _len_field(7, len(data_head) + nbytes + len(shape_field)) + data_head, shape_field


def write_large(path: Path, seed: int = 0) -> tuple[dict[int, np.ndarray], dict[str, np.ndarray]]:
    """Write the sparse > 4 GiB caffemodel; return what was written where.

    Returns (element index in the big blob -> values written from there, tail layer -> blob).
    """
    rng = np.random.default_rng(seed)
    n = (1 << 30) + (1 << 20)  # floats: 4 GiB + 4 MiB
    head, tail_shape = _blob_parts((n,), 4 * n)
    name = b"big"
    body_len = len(_len_field(1, len(name))) + len(name) + len(head) + 4 * n + len(tail_shape)
    layer_head = _len_field(100, body_len) + _len_field(1, len(name)) + name + head
    chunk = 4096
    starts = sorted({0, n - chunk, *(int(i) for i in rng.integers(0, n - chunk, 12)),
                     *(((1 << 29) + k * (1 << 27)) for k in range(5))})  # bytes 2**31 ...
    written: dict[int, np.ndarray] = {}
    tails: dict[str, np.ndarray] = {}
    with open(path, "wb") as f:
        f.write(layer_head)
        data_at = f.tell()
        for start in starts:
            values = rng.standard_normal(chunk).astype("<f4")
            f.seek(data_at + 4 * start)
            f.write(values.tobytes())
            written[start] = values
        f.seek(data_at + 4 * n)
        f.write(tail_shape)
        for k, shape in enumerate([(64, 3, 7, 7), (1000, 2048), (17,)]):
            blob = rng.standard_normal(shape).astype("<f4")
            lname = f"tail{k}".encode()
            bhead, bshape = _blob_parts(shape, blob.nbytes)
            size = len(_len_field(1, len(lname))) + len(lname) + len(bhead) + blob.nbytes \
                + len(bshape)
            f.write(_len_field(100, size) + _len_field(1, len(lname)) + lname + bhead)
            f.write(blob.tobytes())
            f.write(bshape)
            tails[lname.decode()] = blob
    return written, tails


def run_large(folder: Path) -> int:
    """Write, read back and check the > 4 GiB file; print the figures."""
    from caffe_bridge.caffemodel import read_caffemodel

    path = folder / "large.caffemodel"
    t0 = time.perf_counter()
    written, tails = write_large(path)
    st = path.stat()
    print(f"large: wrote {st.st_size:,} bytes ({st.st_blocks * 512 / 1e6:.1f} MB on disk: "
          f"{'sparse' if st.st_blocks * 512 < st.st_size // 2 else 'NOT sparse'}) in "
          f"{time.perf_counter() - t0:.2f} s", flush=True)
    t0 = time.perf_counter()
    weights = read_caffemodel(path)
    parse_s = time.perf_counter() - t0
    big = weights["big"][0]
    t0 = time.perf_counter()
    checked = beyond = 0
    for start, values in written.items():
        got = big[start: start + len(values)]
        if not np.array_equal(got, values):
            raise SystemExit(f"large: values at element {start} differ")
        checked += len(values)
        beyond += sum(1 for i in range(len(values)) if 4 * (start + i) >= 1 << 31)
    holes = [len(big) // 3 + 1, len(big) - (1 << 21)]
    if any(big[i] != 0.0 for i in holes if all(not s <= i < s + 4096 for s in written)):
        raise SystemExit("large: a hole does not read as zero")
    for name, blob in tails.items():
        got = weights[name][0]
        if got.shape != blob.shape or not np.array_equal(got, blob):
            raise SystemExit(f"large: tail layer {name} differs")
        checked += blob.size
    check_s = time.perf_counter() - t0
    offset = 4 * max(written) + 16
    print(f"large: parsed in {parse_s * 1e3:.1f} ms; blob 'big' {big.shape} ({big.nbytes:,} "
          f"bytes); {checked:,} values checked ({beyond:,} past byte 2**31 of the blob, the "
          f"last at file offset ~{offset:,}; {len(tails)} tail layers past 2**32) in "
          f"{check_s * 1e3:.1f} ms: all equal")
    del weights, big
    path.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, choices=list(MODELS),
                        help="models to compare (default: both, unless --large)")
    parser.add_argument("--large", action="store_true",
                        help="run the beyond-2-GB check (a sparse 4 GiB file)")
    parser.add_argument("--repeat", type=int, default=3, help="timing runs per reader (best of)")
    parser.add_argument("--tmpdir", default=None, help="where to write the temporary files")
    args = parser.parse_args(argv)
    if args.large:
        sys.path.insert(0, str(REPO))
        with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
            run_large(Path(tmp))
        if args.models is None:
            return 0
    args.models = args.models or list(MODELS)
    launcher = Launcher()  # before torch and the weights make this process large
    sys.path.insert(0, str(REPO))
    from caffe_bridge import schema

    schema.NetParameter  # noqa: B018 - build the pool outside the timings

    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        for model in args.models:
            t0 = time.perf_counter()
            path = build(model, Path(tmp))
            size = path.stat().st_size
            print(f"{model}: wrote {size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s",
                  flush=True)
            ours_s, ours_total = best_of(read_ours, path, args.repeat)
            pb_s, pb_total = best_of(read_protobuf, path, args.repeat)
            if ours_total != pb_total:
                raise SystemExit(f"{model}: readers disagree ({ours_total} vs {pb_total})")
            rss = {which: launcher.child_rss(which, path) for which in ("ours", "protobuf")}
            rows.append((model, size, ours_s, pb_s, rss))
            path.unlink()
    launcher.close()

    print()
    print(f"{'model':<14}{'file MB':>9}{'ours s':>9}{'protobuf s':>12}{'speedup':>9}"
          f"{'ours RSS MB':>13}{'x file':>8}{'protobuf RSS MB':>17}{'x file':>8}"
          f"{'ours read-only x':>18}")
    for model, size, ours_s, pb_s, rss in rows:
        ours_peak = rss["ours"]["peak_kb"] * 1024
        pb_peak = rss["protobuf"]["peak_kb"] * 1024
        ours_delta = (rss["ours"]["peak_kb"] - rss["ours"]["before_kb"]) * 1024
        print(f"{model:<14}{size / 1e6:>9.1f}{ours_s:>9.3f}{pb_s:>12.3f}{pb_s / ours_s:>8.1f}x"
              f"{ours_peak / 1e6:>13.1f}{ours_peak / size:>8.2f}{pb_peak / 1e6:>17.1f}"
              f"{pb_peak / size:>8.2f}{ours_delta / size:>18.2f}")
    print("\nspeedup = protobuf s / ours s (both sum every blob; best of "
          f"{args.repeat}, warm page cache). RSS: peak ru_maxrss of a fresh child; 'ours "
          "read-only x' excludes the interpreter + numpy baseline measured before reading.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
