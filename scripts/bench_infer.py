"""Benchmark inference of converted SE-ResNet-50 on CPU against two other implementations.

1. batch 1: the converted ``torch.fx`` module against OpenCV's dnn module running the same
   definition (its Axpy-swapped copy, ``caffe_bridge.opencv_reference.opencv_definition``) and
   the same weights and input; OpenCV with its default Winograd convolutions and with them off
   (the    accurate setting that ``opencv_forward`` uses).
2. batch 8: the converted generic module against the idiomatic
   ``caffe_bridge.models.senet.se_resnet50`` loaded with the same weights (``from_caffe``).

Seeded random weights (``caffe_bridge.random_weights.random_weights``); the same number of threads
for torch and OpenCV (``torch.set_num_threads`` and ``cv2.setNumThreads``); best of ``--repeats``
timed runs after ``--warmup`` untimed ones. Each pair's outputs are compared too, so a fast
wrong answer is visible.

    python scripts/bench_infer.py [--threads N] [--repeats 20] [--warmup 3] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from caffe_bridge.build import convert, optimize_for_inference
from caffe_bridge.caffemodel import write_caffemodel
from caffe_bridge.ir import load_net, with_weights
from caffe_bridge.numeric import rel_err
from caffe_bridge.opencv_reference import opencv_definition
from caffe_bridge.random_weights import random_inputs, random_weights

REPO = Path(__file__).resolve().parents[1]
PROTOTXT = REPO / "tests" / "fixtures" / "senet" / "SE-ResNet-50.prototxt"


def prototxt_path(folder: Path) -> Path:
    """The released SE-ResNet-50 definition, else the same layout generated from the model."""
    if PROTOTXT.is_file():
        return PROTOTXT
    from caffe_bridge.models import senet
    from caffe_bridge.models.senet_caffe import caffe_prototxt_text

    path = folder / "SE-ResNet-50.prototxt"
    path.write_text(caffe_prototxt_text(senet.se_resnet50(), "SE-ResNet-50"), encoding="utf-8")
    return path


def best_of(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Fastest wall time of ``repeats`` calls, in milliseconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="batch of the generic/idiomatic part")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import cv2

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"threads: torch {torch.get_num_threads()}, OpenCV {cv2.getNumThreads()}; "
          f"torch {torch.__version__}, OpenCV {cv2.__version__}; best of {args.repeats} "
          f"after {args.warmup} warm-up runs")
    results: dict[str, object] = {"threads": args.threads, "repeats": args.repeats}

    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp_name:
        tmp = Path(tmp_name)
        proto = prototxt_path(tmp)
        net = load_net(proto)
        weights = random_weights(net, args.seed)
        net = with_weights(net, weights)
        caffemodel = tmp / "weights.caffemodel"
        write_caffemodel(caffemodel, weights, name=net.name)
        fixed = tmp / "for_opencv.prototxt"
        fixed.write_text(opencv_definition(proto) or proto.read_text(), encoding="utf-8")
        model = convert(net)

        # -- 1. batch 1: converted vs OpenCV ----------------------------------------------------
        x1 = random_inputs(net, args.seed + 1, batch=1)["data"]
        t1 = torch.from_numpy(x1)
        with torch.inference_mode():
            ours1 = model(t1).numpy()
        print("\nbatch 1")
        with torch.inference_mode():
            ms_ours = best_of(lambda: model(t1), args.repeats, args.warmup)
        print(f"  converted (torch.fx)        {ms_ours:8.1f} ms")
        results["batch1_converted_ms"] = round(ms_ours, 2)
        fast = optimize_for_inference(convert(net))  # opt-in: BN folded, channels-last
        t1_cl = t1.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            err_fast = rel_err(fast(t1_cl).numpy(), ours1)
            ms_fast = best_of(lambda: fast(t1_cl), args.repeats, args.warmup)
        print(f"  optimize_for_inference      {ms_fast:8.1f} ms   rel. max error vs exact "
              f"{err_fast:.1e}")
        results["batch1_optimized_ms"] = round(ms_fast, 2)
        results["batch1_rel_err_optimized"] = err_fast
        for label, winograd in (("default", True), ("winograd_off", False)):
            cvnet = cv2.dnn.readNetFromCaffe(str(fixed), str(caffemodel))
            cvnet.enableWinograd(winograd)

            def run_cv(cvnet: cv2.dnn.Net = cvnet) -> np.ndarray:
                cvnet.setInput(x1)
                return cvnet.forward()

            out_cv = np.array(run_cv())
            ms_cv = best_of(run_cv, args.repeats, args.warmup)
            err = rel_err(ours1, out_cv)
            name = f"OpenCV dnn ({label})"
            print(f"  {name:28s}{ms_cv:8.1f} ms   converted/OpenCV time "
                  f"{ms_ours / ms_cv:5.2f}   rel. max error {err:.1e}")
            results[f"batch1_opencv_{label}_ms"] = round(ms_cv, 2)
            results[f"batch1_ratio_converted_over_opencv_{label}"] = round(ms_ours / ms_cv, 3)
            results[f"batch1_rel_err_opencv_{label}"] = err
            results[f"batch1_ratio_optimized_over_opencv_{label}"] = round(ms_fast / ms_cv, 3)
            print(f"  {'':28s}{'':8s}    optimized/OpenCV time {ms_fast / ms_cv:5.2f}")

        # -- 2. batch N: converted generic vs idiomatic SENet -------------------------------------
        print(f"\nbatch {args.batch}")
        xb = torch.from_numpy(random_inputs(net, args.seed + 2, batch=args.batch)["data"])
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
                ms_gen = best_of(lambda: model(xb), args.repeats, args.warmup)
                ms_idi = best_of(lambda: idiomatic(xb), args.repeats, args.warmup)
            print(f"  converted (torch.fx)        {ms_gen:8.1f} ms")
            print(f"  idiomatic senet.se_resnet50 {ms_idi:8.1f} ms   converted/idiomatic time "
                  f"{ms_gen / ms_idi:5.2f}   rel. max error (softmax) {err:.1e}")
            results.update({
                f"batch{args.batch}_converted_ms": round(ms_gen, 2),
                f"batch{args.batch}_idiomatic_ms": round(ms_idi, 2),
                f"batch{args.batch}_ratio_converted_over_idiomatic": round(ms_gen / ms_idi, 3),
                f"batch{args.batch}_rel_err_idiomatic": err,
            })
    print("\n" + json.dumps(results))


if __name__ == "__main__":
    main()
