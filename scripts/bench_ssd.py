"""MobileNet-SSD end to end (batch 1, CPU, DetectionOutput included): converted vs OpenCV.

    python scripts/bench_ssd.py [--threads N] [--repeats 20]

Seeded random weights, the conf heads scaled so that scores clear the 0.25 threshold (the
released definition has BatchNorm merged, so plain random weights detect nothing) and NMS does
real work; prints
milliseconds per image for both and their ratio, and checks that they detect the same rows.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from caffe_bridge import convert
from caffe_bridge.caffemodel import write_caffemodel
from caffe_bridge.detection_report import compare_detections
from caffe_bridge.ir import load_net, with_weights
from caffe_bridge.random_weights import random_inputs, random_weights

PROTOTXT = (Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "wild"
            / "mobilenet_ssd_voc_deploy.prototxt")


def sharpen_conf(net, weights, std: float = 2.0):  # type: ignore[no-untyped-def]
    """Scale each ``*_mbox_conf`` convolution so its logits have standard deviation ``std``."""
    heads = [lay for lay in net.layers
             if lay.type == "Convolution" and lay.name.endswith("_mbox_conf")]
    model = convert(with_weights(net, weights), outputs=[lay.caffe_tops[0] for lay in heads])
    feeds = random_inputs(net, 3)
    with torch.no_grad():
        outs = model(*(torch.from_numpy(feeds[n]) for n in net.inputs))
    scaled = dict(weights)
    for lay, out in zip(heads, outs, strict=True):
        k = np.float32(std / max(float(out.std()), 1e-6))
        scaled[lay.name] = [b * k for b in weights[lay.name]]
    return scaled


def best_of(fn, repeats: int, warmup: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    import cv2

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    net = load_net(PROTOTXT)
    weights = sharpen_conf(net, random_weights(net, 0, calibration_batch=2))
    net = with_weights(net, weights)
    model = convert(net).eval()
    x = random_inputs(net, 7)["data"]
    t = torch.from_numpy(x)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.caffemodel"
        write_caffemodel(path, weights, name=net.name)
        cvnet = cv2.dnn.readNetFromCaffe(str(PROTOTXT), str(path))
    cvnet.enableWinograd(False)

    def run_cv() -> np.ndarray:
        cvnet.setInput(x)
        return cvnet.forward()

    with torch.inference_mode():
        ours = model(t).numpy()
        ms_ours = best_of(lambda: model(t), args.repeats, args.warmup)
    ms_cv = best_of(run_cv, args.repeats, args.warmup)
    rep = compare_detections(ours, np.array(run_cv()), min_iou=0.99)
    print(f"MobileNet-SSD 300x300, batch 1, {args.threads} threads")
    print(f"  converted (torch.fx)   {ms_ours:8.1f} ms   {rep.n_ours} detections")
    print(f"  OpenCV dnn             {ms_cv:8.1f} ms   {rep.n_ref} detections")
    print(f"  converted / OpenCV     {ms_ours / ms_cv:8.2f}   same detections: {rep.same}")


if __name__ == "__main__":
    main()
