"""Inference speed of converted nets on CPU, measured against this machine's own limits.

In one run: the fp32 GEMM rate (``torch.mm`` of two large square matrices, best of N), the rate
of a large oneDNN 3x3 convolution (faster than the GEMM here: the larger is the "peak"), and the
memory bandwidth (a large tensor copy: bytes read + written per second), the GEMM again beside
each net (its roofline is the larger of the two GEMM rates); then SE-ResNet-50,
SENet-154, ResNet-50 and MobileNet v2 (the vendored definitions, seeded random weights) at
batch 1 and batch 16, each as GFLOP/s (FLOPs from ``caffe_bridge.summary``, 2 x multiply-adds)
and as a percentage of the GEMM rate and of the peak; MobileNet v2 is memory-bound, so it is
also given as bytes/s (every layer's bottoms, tops and weights moved once) against the copy
bandwidth.
``--parts 16`` instead times each net's default model at batch 16 whole and in parts of 1, 2,
4 and 8 samples (``caffe_bridge.micro_batch``), interleaved, with its minor page faults.
Beside each: the exact model (``convert(exact=True)``) and OpenCV dnn on the same definition
and weights (Winograd on, its default). ``--profile`` adds a torch.profiler table of the
default model of SE-ResNet-50 at batch 1 (where the time goes).

The same number of threads for torch and OpenCV; best of ``--repeats`` timed runs after one
warm-up. Each model's output is compared with the exact model's, so a fast wrong answer shows.

    python scripts/bench_infer.py [--threads N] [--repeats 5] [--nets SE-ResNet-50,...]
        [--batches 1,16] [--profile] [--idiomatic 8] [--parts 16]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from caffe_bridge.build import convert
from caffe_bridge.caffemodel import write_caffemodel
from caffe_bridge.ir import Net, load_net, with_weights
from caffe_bridge.micro_batch import MICRO_BATCH
from caffe_bridge.numeric import rel_err
from caffe_bridge.opencv_reference import opencv_definition
from caffe_bridge.random_weights import random_inputs, random_weights
from caffe_bridge.summary import summarize

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
PROTOTXT = FIXTURES / "senet" / "SE-ResNet-50.prototxt"
NETS = {
    "SE-ResNet-50": FIXTURES / "senet" / "SE-ResNet-50.prototxt",
    "SENet-154": FIXTURES / "senet" / "SENet-154.prototxt",
    "ResNet-50": FIXTURES / "zoo" / "resnet50_kaiming_deploy.prototxt",
    "MobileNet-v2": FIXTURES / "zoo" / "mobilenet_v2_deploy.prototxt",
}
MEMORY_BOUND = {"MobileNet-v2"}


def prototxt_path(folder: Path) -> Path:
    """The released SE-ResNet-50 definition, else the same layout generated from the model."""
    if PROTOTXT.is_file():
        return PROTOTXT
    from caffe_bridge.models import senet
    from caffe_bridge.models.senet_caffe import caffe_prototxt_text

    path = folder / "SE-ResNet-50.prototxt"
    path.write_text(caffe_prototxt_text(senet.se_resnet50(), "SE-ResNet-50"), encoding="utf-8")
    return path


def best_of(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Fastest wall time of ``repeats`` calls, in seconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_gflops(n: int, repeats: int) -> float:
    """fp32 ``torch.mm`` of two n x n matrices: GFLOP/s (2 n^3 per product)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    return 2 * n**3 / best_of(lambda: torch.mm(a, b, out=out), repeats) / 1e9


def conv_gflops(repeats: int) -> float:
    """fp32 oneDNN 3x3 convolution, 256 -> 256 channels on 16 x 256 x 28 x 28, NCHW: GFLOP/s.

    oneDNN's direct convolution kernels outrun MKL's sgemm behind ``torch.mm`` on this machine,
    so the GEMM rate alone is no ceiling for a convolutional net (ResNet-50 at batch 16 passes
    100% of it); the larger of the two rates is reported as the measured peak.
    """
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).eval()
    x = torch.randn(16, 256, 28, 28)
    flops = 2 * 16 * 256 * 256 * 9 * 28 * 28
    with torch.inference_mode():
        conv(x)
        return flops / best_of(lambda: conv(x), repeats) / 1e9


def copy_bandwidth(mbytes: int, repeats: int) -> float:
    """Bytes read + written per second by one large float32 copy (GB/s)."""
    src = torch.ones(mbytes * 2**20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_of(lambda: dst.copy_(src), repeats) / 1e9


def bytes_moved(net: Net, batch: int) -> int:
    """Every layer's bottoms and tops once (per image x batch) plus its weights once, float32."""
    total = 0
    for layer in net.layers:
        for blob in (*layer.bottoms, *layer.tops):
            total += 4 * batch * int(np.prod(net.blobs[blob].shape[1:]))
        total += 4 * sum(int(np.prod(s)) for s in layer.param_shapes)
    return total


def _opencv(fixed: Path, caffemodel: Path, x: np.ndarray) -> Callable[[], np.ndarray]:
    """OpenCV dnn on ``x``, one image at a time (its SENet import fails on batches > 1:
    ``total(): expected end <= dims``), which is how ``opencv_forward`` runs it too."""
    import cv2

    cvnet = cv2.dnn.readNetFromCaffe(str(fixed), str(caffemodel))

    def run() -> np.ndarray:
        outs = []
        for i in range(len(x)):
            cvnet.setInput(x[i : i + 1])
            outs.append(np.array(cvnet.forward()))
        return np.concatenate(outs)

    return run


def bench_net(key: str, batches: list[int], args: argparse.Namespace, gemm: float, peak: float,
              bw: float, tmp: Path) -> dict[str, object]:
    proto = NETS[key]
    net = load_net(proto)
    weights = random_weights(net, args.seed)
    net = with_weights(net, weights)
    flops = summarize(net).total_flops  # per image (the definition's batch is 1)
    caffemodel = tmp / f"{key}.caffemodel"
    write_caffemodel(caffemodel, weights, name=net.name)
    fixed = tmp / f"{key}.prototxt"
    fixed.write_text(opencv_definition(proto) or proto.read_text(), encoding="utf-8")
    exact, fast = convert(net, exact=True), convert(net)
    # The host is shared: the GEMM is measured again beside each net, and the larger of that
    # and the run's first measurement is this net's roofline (never the more flattering one).
    gemm = max(gemm, gemm_gflops(args.gemm_n, args.repeats))
    peak = max(peak, gemm)
    out: dict[str, object] = {"gflop_per_image": round(flops / 1e9, 3),
                              "gemm_gflops": round(gemm, 1)}
    for batch in batches:
        x = random_inputs(net, args.seed + 1, batch=batch)[next(iter(net.inputs))]
        t = torch.from_numpy(x)
        with torch.inference_mode():
            want = exact(t).numpy()
            row: dict[str, object] = {"rel_err_fast": rel_err(fast(t).numpy(), want)}
            for label, model in (("fast", fast), ("exact", exact)):
                secs = best_of(lambda m=model, t=t: m(t), args.repeats)
                row[f"{label}_ms"] = round(secs * 1e3, 2)
        if not args.no_opencv:
            run_cv = _opencv(fixed, caffemodel, x)
            row["rel_err_opencv"] = rel_err(np.asarray(run_cv()).reshape(want.shape), want)
            row["opencv_ms"] = round(best_of(run_cv, args.repeats) * 1e3, 2)
        for label in ("fast", "exact", "opencv"):
            if f"{label}_ms" in row:
                rate = flops * batch / (row[f"{label}_ms"] / 1e3) / 1e9
                row[f"{label}_gflops"] = round(rate, 1)
                row[f"{label}_pct_gemm"] = round(100 * rate / gemm, 1)
                row[f"{label}_pct_peak"] = round(100 * rate / peak, 1)
                if key in MEMORY_BOUND:
                    gbs = bytes_moved(net, batch) / (row[f"{label}_ms"] / 1e3) / 1e9
                    row[f"{label}_GBps"] = round(gbs, 1)
                    row[f"{label}_pct_bandwidth"] = round(100 * gbs / bw, 1)
        out[f"batch{batch}"] = row
        print(f"{key:13s} b{batch:<3d} " + "  ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
            flush=True)
    return out


def profile(tmp: Path, seed: int, rows: int = 25) -> None:
    """torch.profiler table (self CPU time by op) of the default SE-ResNet-50 at batch 1."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    net = load_net(NETS["SE-ResNet-50"])
    net = with_weights(net, random_weights(net, seed))
    fast = convert(net)
    t = torch.from_numpy(random_inputs(net, seed + 1, batch=1)[next(iter(net.inputs))])
    with torch.inference_mode():
        for _ in range(2):
            fast(t)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                fast(t)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def bench_idiomatic(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    """The converted generic SE-ResNet-50 against the idiomatic ``se_resnet50`` (same weights)."""
    results: dict[str, object] = {}
    proto = PROTOTXT
    net = load_net(proto)
    weights = random_weights(net, args.seed)
    net = with_weights(net, weights)
    caffemodel = tmp / "idiomatic.caffemodel"
    write_caffemodel(caffemodel, weights, name=net.name)
    model = convert(net)
    print(f"\nbatch {args.idiomatic}")
    xb = torch.from_numpy(random_inputs(net, args.seed + 2, batch=args.idiomatic)["data"])
    try:
        from caffe_bridge.models.senet_caffe import from_caffe
    except ImportError as err:
        print(f"  idiomatic SENet: pending ({err})")
        results["idiomatic"] = "pending"
    else:
        idiomatic = from_caffe(proto, caffemodel).eval()
        with torch.inference_mode():
            probs = model(xb).numpy()
            logits = idiomatic(xb)
            err = rel_err(torch.softmax(logits, 1).numpy(), probs)
            ms_gen = 1e3 * best_of(lambda: model(xb), args.repeats)
            ms_idi = 1e3 * best_of(lambda: idiomatic(xb), args.repeats)
        print(f"  converted (torch.fx)        {ms_gen:8.1f} ms")
        print(f"  idiomatic senet.se_resnet50 {ms_idi:8.1f} ms   converted/idiomatic time "
              f"{ms_gen / ms_idi:5.2f}   rel. max error (softmax) {err:.1e}")
        results.update({
            f"batch{args.idiomatic}_converted_ms": round(ms_gen, 2),
            f"batch{args.idiomatic}_idiomatic_ms": round(ms_idi, 2),
            f"batch{args.idiomatic}_ratio_converted_over_idiomatic": round(ms_gen / ms_idi, 3),
            f"batch{args.idiomatic}_rel_err_idiomatic": err,
        })
    return results


PART_SIZES = (0, 1, 2, 4, 8)  # samples per part; 0: the whole batch at once


def _faults(fn: Callable[[], object]) -> int:
    """Minor page faults (pages the kernel mapped and zeroed) during one call of ``fn``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def bench_parts(args: argparse.Namespace) -> dict[str, object]:
    """The default model of each of ``--nets`` at batch ``--parts``, whole and in parts of
    ``PART_SIZES`` samples, interleaved round by round (best of ``--repeats``), with the GEMM
    timed in each round and the minor page faults of one forward."""
    n = args.gemm_n
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    gemm = functools.partial(torch.mm, a, b, out=out)
    results: dict[str, object] = {}
    for key in args.nets.split(","):
        net = load_net(NETS[key])
        net = with_weights(net, random_weights(net, args.seed))
        model = convert(net)
        x = torch.from_numpy(random_inputs(net, args.seed + 1, batch=args.parts)[
            next(iter(net.inputs))])
        limit = model.meta[MICRO_BATCH]
        runs = {size: functools.partial(_with_part, model, size, x) for size in PART_SIZES}
        with torch.inference_mode():
            row = _parts_row(runs, gemm, 2 * n**3, summarize(net).total_flops * args.parts,
                             args.repeats)
        model.meta[MICRO_BATCH] = limit
        results[key] = {"default_part": limit, **row}
        print(f"{key:13s} b{args.parts} (GEMM {row['gemm_gflops']} GFLOP/s; default part "
              f"{limit}; 0 = whole): " + "  ".join(
                  f"{s}: {r['ms']} ms {r['pct_gemm']}% {r['page_faults']} faults"
                  f"{'' if r['bit_equal_to_whole'] else ' (not bit-equal)'}"
                  for s, r in ((s, row[f"part{s}"]) for s in PART_SIZES)), flush=True)
    return results


def _parts_row(runs: dict[int, Callable[[], torch.Tensor]], gemm: Callable[[], object],
               gemm_flops: int, flops: int, repeats: int) -> dict[str, object]:
    """Each run timed once per round after the GEMM, best of ``repeats`` rounds."""
    whole = runs[0]()
    for run in runs.values():  # warm-up
        run()
    best = dict.fromkeys(runs, float("inf"))
    gemm_best = float("inf")
    for _ in range(repeats):
        gemm_best = min(gemm_best, best_of(gemm, 1, 0))
        for size, run in runs.items():
            best[size] = min(best[size], best_of(run, 1, 0))
    rate = gemm_flops / gemm_best / 1e9
    row: dict[str, object] = {"gemm_gflops": round(rate, 1)}
    for size, run in runs.items():
        row[f"part{size}"] = {
            "ms": round(best[size] * 1e3, 1),
            "pct_gemm": round(100 * flops / best[size] / 1e9 / rate, 1),
            "page_faults": _faults(run),
            "bit_equal_to_whole": bool(torch.equal(run(), whole))}
    return row


def _with_part(model: torch.nn.Module, size: int, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` run in parts of ``size`` samples (0: whole)."""
    model.meta[MICRO_BATCH] = size
    return model(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--gemm-n", type=int, default=2048)
    ap.add_argument("--copy-mb", type=int, default=512)
    ap.add_argument("--no-opencv", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--parts", type=int, default=0,
                    help="instead: time the default models at this batch whole and in parts of "
                         f"{', '.join(map(str, PART_SIZES[1:]))} samples (0: no)")
    ap.add_argument("--idiomatic", type=int, default=0,
                    help="also time the idiomatic se_resnet50 at this batch (0: no)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if not args.no_opencv:
        import cv2

        cv2.setNumThreads(args.threads)
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"threads {args.threads}; torch {torch.__version__}; best of {args.repeats}")
    if args.parts:
        results = {"threads": args.threads, "repeats": args.repeats, "batch": args.parts}
        print("\n" + json.dumps({**results, **bench_parts(args)}))
        return
    gemm = gemm_gflops(args.gemm_n, args.repeats)
    conv = conv_gflops(args.repeats)
    peak = max(gemm, conv)
    bw = copy_bandwidth(args.copy_mb, args.repeats)
    print(f"fp32 GEMM ({args.gemm_n}^2): {gemm:.1f} GFLOP/s; oneDNN 3x3 convolution: "
          f"{conv:.1f} GFLOP/s (peak = the larger); copy bandwidth: {bw:.1f} GB/s", flush=True)
    results: dict[str, object] = {"threads": args.threads, "repeats": args.repeats,
                                  "gemm_gflops": round(gemm, 1), "conv_gflops": round(conv, 1),
                                  "copy_GBps": round(bw, 1)}
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp_name:
        tmp = Path(tmp_name)
        for key in args.nets.split(","):
            results[key] = bench_net(key, batches, args, gemm, peak, bw, tmp)
        if args.profile:
            profile(tmp, args.seed)
        if args.idiomatic:
            results["idiomatic"] = bench_idiomatic(args, tmp)
    print("\n" + json.dumps(results))


if __name__ == "__main__":
    main()
