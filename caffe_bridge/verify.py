"""Compare a converted net blob by blob with a reference: OpenCV, pycaffe, or saved arrays.

Every blob the reference provides (and the net has) is compared in network order, at its value
after the last in-place layer (what Caffe reports under that name). Per blob: shape, max
absolute error, relative error ``max|ours - ref| / max|ref|`` and cosine similarity; a blob
diverges when its relative error exceeds ``rtol``. The first divergent blob in network order
is where to look.

:func:`verify` takes files; :func:`verify_arrays` is the entry point for callers with their own
inputs; :func:`verify_images` preprocesses a folder of images as ``eval`` does. Each returns a
:class:`VerifyReport`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caffe_bridge.build import build_module
from caffe_bridge.detection_report import compare_detections
from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.ir import Net, load_net
from caffe_bridge.numeric import rel_err
from caffe_bridge.random_weights import random_inputs

Progress = Callable[[str, int, int], None]
REFERENCES = ("opencv", "caffe")
DEFAULT_RTOL = 1e-4


@dataclass(frozen=True)
class BlobDiff:
    """The comparison of one blob."""

    blob: str
    layer: str  # the layer producing its compared value
    shape: tuple[int, ...]  # ours
    ref_shape: tuple[int, ...]
    max_abs_err: float
    rel_err: float
    cosine: float
    ok: bool


@dataclass(frozen=True)
class VerifyReport:
    """All blob comparisons against one reference, in network order."""

    reference: str
    rtol: float
    rows: tuple[BlobDiff, ...]
    skipped: tuple[str, ...] = ()  # reference blobs the net does not have
    detections: tuple[str, ...] = ()  # readable lines for DetectionOutput tops (row matching)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def first_divergent(self) -> BlobDiff | None:
        return next((r for r in self.rows if not r.ok), None)

    def to_json(self) -> dict[str, object]:
        first = self.first_divergent
        return {
            "reference": self.reference,
            "rtol": self.rtol,
            "ok": self.ok,
            "first_divergent": first.blob if first else None,
            "blobs": [{k: (_finite(v) if isinstance(v, float) else v)
                       for k, v in asdict(r).items()} for r in self.rows],
            "skipped": list(self.skipped),
            "detections": list(self.detections),
        }


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)  # JSON has no inf/nan


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(max abs error, relative error, cosine similarity) of ours ``a`` against reference ``b``."""
    if a.shape != b.shape:
        return math.inf, math.inf, math.nan
    a64 = np.asarray(a, dtype=np.float64).reshape(-1)
    b64 = np.asarray(b, dtype=np.float64).reshape(-1)
    diff = np.abs(a64 - b64)
    max_abs = float(np.max(diff)) if diff.size else 0.0
    na, nb = float(np.linalg.norm(a64)), float(np.linalg.norm(b64))
    if na == 0.0 and nb == 0.0:
        cosine = 1.0
    elif na == 0.0 or nb == 0.0:
        cosine = 0.0
    else:
        cosine = float(np.dot(a64, b64) / (na * nb))
    return max_abs, rel_err(a, b), cosine


def network_order(net: Net, blobs: Sequence[str]) -> tuple[list[str], list[str]]:
    """(blobs of the net that are not inputs, sorted by producing layer; the other names)."""
    position = {layer.name: i for i, layer in enumerate(net.layers)}
    known, unknown = [], []
    for name in dict.fromkeys(blobs):
        try:
            value = net.value(name)
        except CaffeBridgeError:
            unknown.append(name)
            continue
        if name not in net.inputs:
            known.append((position[net.blobs[value].producer], name))
    return [n for _, n in sorted(known)], unknown


@torch.no_grad()
def run_blobs(net: Net, inputs: Mapping[str, np.ndarray], blobs: Sequence[str],
              device: str = "cpu") -> dict[str, np.ndarray]:
    """Our value of each Caffe blob in ``blobs`` (after its last in-place layer)."""
    if not blobs:
        return {}
    model = build_module(net, outputs=list(blobs)).to(device)
    args = [torch.from_numpy(np.ascontiguousarray(inputs[n], dtype=np.float32)).to(device)
            for n in net.inputs]
    out = model(*args)
    outs = out if isinstance(out, tuple) else (out,)
    return {b: t.detach().cpu().numpy() for b, t in zip(blobs, outs, strict=True)}


def compare_blobs(net: Net, ours: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                  rtol: float, reference_name: str, skipped: Sequence[str] = ()) -> VerifyReport:
    """Compare the blobs of ``reference`` with ours, in network order."""
    order, _ = network_order(net, list(reference))
    rows, det_lines = [], []
    for blob in order:
        a, b = np.asarray(ours[blob]), np.asarray(reference[blob])
        if net.layer(net.blobs[net.value(blob)].producer).type == "DetectionOutput":
            row, lines = detection_row(net, blob, a, b, rtol)
            rows.append(row)
            det_lines += lines
            continue
        max_abs, rel, cos = compare(a, b)
        rows.append(BlobDiff(blob, net.blobs[net.value(blob)].producer, tuple(a.shape),
                             tuple(b.shape), max_abs, rel, cos, bool(rel <= rtol)))
    return VerifyReport(reference_name, rtol, tuple(rows), tuple(skipped), tuple(det_lines))


def detection_row(net: Net, blob: str, ours: np.ndarray, ref: np.ndarray, rtol: float
                  ) -> tuple[BlobDiff, list[str]]:
    """A DetectionOutput top compared as a set of rows (see detection_report): max_abs_err is
    the largest box coordinate difference, rel_err the largest relative score difference,
    cosine the worst IoU of matched boxes; ok when every row matches within ``rtol``."""
    rep = compare_detections(ours, ref)
    ok = rep.same and rep.worst_score_rel <= rtol and rep.worst_box_diff <= rtol
    row = BlobDiff(blob, net.blobs[net.value(blob)].producer, tuple(ours.shape),
                   tuple(ref.shape), rep.worst_box_diff, rep.worst_score_rel, rep.worst_iou, ok)
    return row, [f"{blob}: {line}" for line in rep.lines()]


def check_inputs(net: Net, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float32 copies of ``inputs``, one per net input, shaped as declared (any batch)."""
    out = {}
    for name, shape in net.inputs.items():
        if name not in inputs:
            raise CaffeBridgeError(f"no value for input {name!r} (inputs given: "
                                   f"{sorted(inputs)})", file=net.source)
        arr = np.asarray(inputs[name], dtype=np.float32)
        if arr.ndim == len(shape) - 1:
            arr = arr[None]
        if arr.ndim != len(shape) or tuple(arr.shape[1:]) != tuple(shape[1:]):
            raise CaffeBridgeError(f"input {name!r} has shape {tuple(arr.shape)}; the net "
                                   f"declares {tuple(shape)} (any batch)", file=net.source)
        out[name] = np.ascontiguousarray(arr)
    return out


def _np_load(spath: str, what: str) -> Any:
    """``np.load`` without pickles; unreadable -> CaffeBridgeError, missing/forbidden as is."""
    try:
        return np.load(spath, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise CaffeBridgeError(f"not {what}: {err}", file=spath) from None


def load_inputs(path: str | os.PathLike[str], net: Net) -> dict[str, np.ndarray]:
    """Inputs from a ``.npy`` (nets with one input) or ``.npz`` (input name -> array) file."""
    spath = os.fspath(path)
    data = _np_load(spath, "a .npy/.npz array file")
    if isinstance(data, np.ndarray):
        if len(net.inputs) != 1:
            raise CaffeBridgeError(f"the net has {len(net.inputs)} inputs: give them by name "
                                   f"in an .npz", file=spath)
        return check_inputs(net, {next(iter(net.inputs)): data})
    with data:
        return check_inputs(net, {k: data[k] for k in data.files})


def load_npz_reference(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Blob name -> array from an ``.npz`` file."""
    spath = os.fspath(path)
    data = _np_load(spath, "an .npz file")
    if not hasattr(data, "files"):
        raise CaffeBridgeError("a reference must be an .npz of blob name -> array", file=spath)
    with data:
        return {k: np.asarray(data[k]) for k in data.files}


def caffe_forward(prototxt: str | os.PathLike[str], caffemodel: str | os.PathLike[str],
                  inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every blob pycaffe computes (TEST phase, CPU) for ``inputs``."""
    try:
        import caffe  # type: ignore[import-not-found]
    except ImportError:
        raise CaffeBridgeError("the caffe reference needs pycaffe (import caffe failed); use "
                               "--reference opencv or an .npz") from None
    caffe.set_mode_cpu()
    ref = caffe.Net(os.fspath(prototxt), os.fspath(caffemodel), caffe.TEST)
    for name, arr in inputs.items():
        ref.blobs[name].reshape(*arr.shape)
        ref.blobs[name].data[...] = arr
    ref.forward()
    return {name: np.array(blob.data, dtype=np.float32) for name, blob in ref.blobs.items()}


def verify_arrays(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str] | None,
    inputs: Mapping[str, np.ndarray],
    *,
    reference: str = "opencv",
    reference_blobs: Mapping[str, np.ndarray] | None = None,
    device: str = "cpu",
    rtol: float = DEFAULT_RTOL,
    net: Net | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> VerifyReport:
    """Verify on given input arrays (input name -> N x C x H x W); the hook for image folders.

    ``reference`` is "opencv", "caffe", or a label for ``reference_blobs`` (blob -> array).
    ``progress(stage, done, total)`` hears of the three steps: reference, ours, comparison.
    """
    step = progress or (lambda stage, done, total: None)
    net = net if net is not None else load_net(prototxt, caffemodel)
    feeds = check_inputs(net, inputs)
    if reference_blobs is None:
        if caffemodel is None:
            raise CaffeBridgeError(f"the {reference} reference needs a caffemodel")
        wanted, _ = network_order(net, [net.blobs[v].caffe_name for v in net.blobs])
        if reference == "opencv":
            from caffe_bridge.opencv_reference import opencv_forward

            reference_blobs = opencv_forward(prototxt, caffemodel, feeds, wanted)
        elif reference == "caffe":
            reference_blobs = caffe_forward(prototxt, caffemodel, feeds)
        else:
            raise CaffeBridgeError(f"unknown reference {reference!r}; use one of "
                                   f"{', '.join(REFERENCES)} or an .npz file")
    step("verify", 1, 3)
    order, unknown = network_order(net, list(reference_blobs))
    if not order:
        raise CaffeBridgeError("the reference has none of the net's blobs", file=net.source)
    ours = run_blobs(net, feeds, order, device)
    step("verify", 2, 3)
    report = compare_blobs(net, ours, reference_blobs, rtol, reference, unknown)
    step("verify", 3, 3)
    return report


def verify(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str] | None,
    *,
    reference: str = "opencv",
    inputs: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> VerifyReport:
    """Verify against "opencv", "caffe" or an ``.npz`` path (blob name -> array).

    Inputs come from ``inputs`` (.npy/.npz), else from the reference .npz when it holds the
    net's inputs, else are seeded N(0, 1) arrays of the declared shapes.
    """
    net = load_net(prototxt, caffemodel)
    blobs = None
    label = reference
    if reference not in REFERENCES:
        blobs = load_npz_reference(reference)
        label = Path(reference).name
    if inputs is not None:
        feeds = load_inputs(inputs, net)
    elif blobs is not None and all(n in blobs for n in net.inputs):
        feeds = {n: blobs[n] for n in net.inputs}
    elif blobs is not None:
        raise CaffeBridgeError("the reference .npz lacks the net's inputs "
                               f"({', '.join(net.inputs)}): pass --input")
    else:
        feeds = random_inputs(net, seed)
    return verify_arrays(prototxt, caffemodel, feeds, reference=label, reference_blobs=blobs,
                         device=device, rtol=rtol, net=net, progress=progress)


def verify_images(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str] | None,
    images: str | os.PathLike[str],
    *,
    reference: str = "opencv",
    device: str = "cpu",
    rtol: float = DEFAULT_RTOL,
    progress: Callable[[str, int, int], None] | None = None,
    **preprocess: Any,
) -> VerifyReport:
    """Verify on a folder of real images, preprocessed exactly as ``eval`` does.

    ``preprocess`` takes :func:`caffe_bridge.data.preprocess_images`'s options (resize, crop,
    mean, mean_file, scale, channel_order). A damaged image is an error naming the file.
    """
    from caffe_bridge.data import preprocess_images

    net = load_net(prototxt, caffemodel)
    if len(net.inputs) != 1:
        raise CaffeBridgeError("--images needs a net with exactly one input", file=net.source)
    batch = preprocess_images(images, **preprocess)
    blobs = None if reference in REFERENCES else load_npz_reference(reference)
    label = reference if blobs is None else Path(reference).name
    return verify_arrays(prototxt, caffemodel, {next(iter(net.inputs)): batch},
                         reference=label, reference_blobs=blobs, device=device, rtol=rtol,
                         net=net, progress=progress)


def write_seeded_caffemodel(prototxt: str | os.PathLike[str], path: str | os.PathLike[str],
                            seed: int = 0) -> str:
    """Write seeded random weights for ``prototxt`` (BatchNorm calibrated) to ``path``.

    For a user with only a definition: both sides of a comparison then read the same file.
    """
    from caffe_bridge.caffemodel import write_caffemodel
    from caffe_bridge.random_weights import random_weights

    net = load_net(prototxt)
    weights = random_weights(net, seed=seed)
    types = {layer.name: layer.type for layer in net.layers}
    write_caffemodel(path, weights, net.name, types={k: types[k] for k in weights})
    return os.fspath(path)


def write_report_files(report: VerifyReport, json_path: str | None, plot_path: str | None,
                       *, force: bool = False) -> None:
    """Write the report as JSON and/or a plot, atomically (all or nothing)."""
    import json

    from caffe_bridge.atomic import atomic_outputs

    outputs = [p for p in (json_path, plot_path) if p is not None]
    if not outputs:
        return
    with atomic_outputs(outputs, force=force) as temps:
        tmp = dict(zip(outputs, temps, strict=True))
        if json_path is not None:
            tmp[json_path].write_text(json.dumps(report.to_json(), indent=2) + "\n",
                                      encoding="utf-8")
        if plot_path is not None:
            plot_report(report, tmp[plot_path])


def plot_report(report: VerifyReport, path: str | os.PathLike[str]) -> None:
    """A log-scale chart of the relative error of each blob, in network order (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CaffeBridgeError("--plot needs matplotlib (pip install matplotlib)") from None
    errs = [max(r.rel_err, 1e-12) if math.isfinite(r.rel_err) else 1.0 for r in report.rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(errs)), 4.0))
    ax.semilogy(range(len(errs)), errs, marker=".", linewidth=0.8)
    ax.axhline(report.rtol, color="red", linestyle="--", label=f"rtol {report.rtol:g}")
    ax.set_xlabel("blob (network order)")
    ax.set_ylabel("relative error")
    ax.set_title(f"per-blob relative error vs {report.reference}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
    plt.close(fig)
