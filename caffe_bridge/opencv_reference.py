"""Independent whole-net references: other implementations of Caffe run on the same files.

``opencv_forward`` runs OpenCV's own Caffe importer (``cv2.dnn.readNetFromCaffe``, OpenCV 4.x)
with its known traps corrected, so that it agrees with BVLC Caffe to about 1e-5:

* OpenCV converts the custom ``Axpy`` layer itself as ``a * bottom[2] + bottom[1]``, while the
  SENet definition is ``a * bottom[1] + bottom[2]``. OpenCV is handed a copy of the definition
  whose Axpy layers have their 2nd and 3rd bottoms swapped (edited through our schema).
* Winograd convolutions drift by ~1e-4; they are switched off.
* With layer fusion on (OpenCV's default), a blob that OpenCV fuses away comes back stale: in
  SqueezeNet, the in-place ReLU of ``fire2/expand1x1`` writes straight into the following
  Concat's buffer, and ``forwardAndRetrieve("fire2/relu_expand1x1")`` returns an unrelated
  buffer (cosine ~0 against the concat's own slice, which agrees with Caffe to 1e-7). Fusion is
  switched off (``net.enableFusion(False)``) so that every retrieved blob is real.
* OpenCV runs a definition at its Input layer's batch (1); samples are run one at a time.
* OpenCV keeps only the first output of a layer asked for by name: a Slice's later tops come
  back as memory that later layers reused (ShuffleNet v2: every second Slice top wrong by
  ~100%). Layers with such tops are read in a forward pass of their own that stops there.
* OpenCV ignores ``include``/``exclude`` phase rules, so a train_val-style definition with
  TRAIN-only data/loss layers is rejected ("Duplicate blobs"); the copy keeps only the layers
  Caffe instantiates in the TEST phase (level 0, no stages).

Nothing here is used by ``convert``: these runners exist to check it (tests, ``verify``).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from caffe_bridge.deploy import deploy_definition, read_deploy_form
from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.opencv_import import import_cv2
from caffe_bridge.prototxt import parse_prototxt
from caffe_bridge.upgrade import keep_in_test

__all__ = ["opencv_definition", "opencv_forward"]

Weights = Mapping[str, Sequence[np.ndarray]]

# OpenCV names the failing layer in several spellings, depending on where it fails.
_LAYER_PATTERNS = (
    re.compile(r"layer \"([^\"]+)\""),
    re.compile(r"layer '([^']+)'"),
    re.compile(r"\[[A-Za-z0-9_]+\]:\(([^)]+)\)"),
    re.compile(r"layer name: ?(\S+)"),
)


def opencv_definition(
    prototxt: str | os.PathLike[str], *, fix_axpy: bool = True, test_phase: bool = True
) -> str | None:
    """The definition's text as OpenCV must see it, or None when the file can be used as is.

    With ``fix_axpy`` every Axpy layer's 2nd and 3rd bottoms are swapped; with ``test_phase``
    layers Caffe would not instantiate in the TEST phase are removed. Edited through our schema
    (comments are lost, nothing else changes).
    """
    parsed = parse_prototxt(prototxt)
    net = parsed.net
    changed = False
    if test_phase:  # a train/test file: OpenCV reads its deploy form (caffe_bridge.deploy)
        _, form = read_deploy_form(prototxt)
        if form.dropped or form.created:
            net, changed = deploy_definition(prototxt), True
    if test_phase and not changed:
        for records in (net.layer, net.layers):
            for i in reversed(range(len(records))):
                if not keep_in_test(records[i]):
                    del records[i]
                    changed = True
    if fix_axpy:
        for layer in net.layer:
            if layer.type != "Axpy":
                continue
            if len(layer.bottom) != 3:
                raise CaffeBridgeError(
                    f"Axpy takes 3 bottoms, this one has {len(layer.bottom)}",
                    file=parsed.path, layer=layer.name, layer_type="Axpy",
                )
            layer.bottom[1], layer.bottom[2] = layer.bottom[2], layer.bottom[1]
            changed = True
    return text_format.MessageToString(net) if changed else None


def _net_blobs(
    prototxt: str | os.PathLike[str],
) -> tuple[dict[str, tuple[Any, int]], set[str], list[str]]:
    """Caffe blob name -> (its last writer's LayerParameter, top index); the blobs that are still
    the net's inputs; and the net's output blobs (produced, never consumed after), in order."""
    raw = read_deploy_form(prototxt)[1].layers
    writers: dict[str, tuple[Any, int]] = {}
    inputs: set[str] = set()
    available: dict[str, None] = {}
    for rec in raw:
        p = rec.param
        for b in p.bottom:
            available.pop(b, None)
        for k, t in enumerate(p.top):
            writers[t] = (p, k)
            if p.type == "Input":
                inputs.add(t)
            else:
                inputs.discard(t)
                available[t] = None
    return writers, inputs, list(available)


def _opencv_layer(net: Any, layer: Any, path: str) -> str:
    """OpenCV's name for a Caffe layer: its own, or (OpenCV 4.x names convolutions after their
    output blob) its first top when OpenCV has a layer of that name and the same type."""
    if net.getLayerId(layer.name) >= 0:
        return layer.name
    if layer.top:
        lid = net.getLayerId(layer.top[0])
        if lid >= 0 and net.getLayer(lid).type == layer.type:
            return layer.top[0]
    raise CaffeBridgeError("OpenCV has no layer for it (merged or renamed on import)",
                           file=path, layer=layer.name, layer_type=layer.type)


def _rejected(err: Exception, path: str, what: str) -> CaffeBridgeError:
    msg = str(err).strip()
    layer = None
    for pat in _LAYER_PATTERNS:
        m = pat.search(msg)
        if m:
            layer = m.group(1)
            break
    # cv2.error text: "OpenCV(4.x) /path/file.cpp:123: error: (-2:Unspecified error) <what>".
    short = msg.split(" error: ", 1)[-1].splitlines()[0] if msg else type(err).__name__
    return CaffeBridgeError(f"OpenCV {what}: {short}", file=path, layer=layer)


def _forward(net: Any, arrays: Mapping[str, np.ndarray], i: int, names: list[str]) -> list[Any]:
    """Sample ``i`` through an OpenCV net; the outputs of the layers ``names`` (if any)."""
    if not names:
        return []
    for name, a in arrays.items():
        net.setInput(np.ascontiguousarray(a[i : i + 1]), name)
    return list(net.forwardAndRetrieve(names))


def opencv_forward(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str] | Weights,
    inputs: Mapping[str, np.ndarray],
    blobs: Sequence[str] | None = None,
    *,
    fix_axpy: bool = True,
    test_phase: bool = True,
    winograd: bool = False,
    fusion: bool = False,
) -> dict[str, np.ndarray]:
    """Run ``prototxt`` with OpenCV's Caffe importer; return the requested blobs, batch-stacked.

    ``caffemodel`` is a weights file, or a mapping layer name -> Caffe blobs (written to a
    temporary caffemodel). ``inputs`` maps input names to NCHW float32 arrays of any batch;
    ``blobs`` are Caffe blob names (their value after the last in-place layer), by default the
    net's outputs. ``fix_axpy=False``, ``test_phase=False`` and ``winograd=True`` leave OpenCV's
    traps in place (to show that they are real).
    """
    import_cv2("the OpenCV reference", dnn=True)  # first: a missing OpenCV is the first error
    proto_path = os.fspath(prototxt)
    writers, net_inputs, outputs = _net_blobs(proto_path)
    wanted = list(blobs) if blobs is not None else outputs
    arrays, batch = _check_request(proto_path, wanted, writers, net_inputs, inputs)
    results = {b: arrays[b].copy() for b in wanted if b in net_inputs}
    computed = [b for b in wanted if b not in net_inputs]
    if computed:
        with tempfile.TemporaryDirectory(prefix="caffe_bridge_cv2_") as tmp:
            text = opencv_definition(proto_path, fix_axpy=fix_axpy, test_phase=test_phase)
            proto_cv = proto_path
            if text is not None:
                proto_cv = str(Path(tmp) / "for_opencv.prototxt")
                Path(proto_cv).write_text(text, encoding="utf-8")
            if isinstance(caffemodel, Mapping):
                from caffe_bridge.caffemodel import write_caffemodel

                model_path = str(Path(tmp) / "weights.caffemodel")
                write_caffemodel(model_path, caffemodel)
            else:
                model_path = os.fspath(caffemodel)
            net = _read_opencv(proto_path, proto_cv, model_path, winograd, fusion)
            pins: dict[str, int] = {}  # OpenCV layer name -> position in the request
            picks: list[tuple[int, int]] = []  # per computed blob: (request position, top)
            for b in computed:
                layer, k = writers[b]
                name = _opencv_layer(net, layer, proto_path)
                picks.append((pins.setdefault(name, len(pins)), k))
            stacked = _run_per_sample(net, arrays, batch, list(pins), picks, proto_path)
        results.update(zip(computed, stacked, strict=True))
    return {b: results[b] for b in wanted}


def _check_request(path: str, wanted: list[str], writers: Mapping[str, Any],
                   net_inputs: Sequence[str], inputs: Mapping[str, np.ndarray]
                   ) -> tuple[dict[str, np.ndarray], int]:
    """The inputs as float32 arrays with one common batch, after checking the request."""
    unknown = [b for b in wanted if b not in writers]
    if unknown:
        raise CaffeBridgeError(f"no blob(s) named {unknown} in the net", file=path)
    if not wanted:
        raise CaffeBridgeError("the net has no output blob", file=path)
    if not inputs:
        raise CaffeBridgeError("no inputs given", file=path)
    arrays = {name: np.asarray(a, dtype=np.float32) for name, a in inputs.items()}
    batches = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
    if len(batches) != 1 or -1 in batches:
        got = {n: a.shape for n, a in arrays.items()}
        raise CaffeBridgeError(f"inputs need one common batch axis, got shapes {got}",
                               file=path)
    missing = [b for b in wanted if b in net_inputs and b not in arrays]
    if missing:
        raise CaffeBridgeError(f"no input array given for {missing}", file=path)
    return arrays, batches.pop()


def _read_opencv(path: str, proto_cv: str, model_path: str, winograd: bool,
                 fusion: bool) -> Any:
    """OpenCV's net for the (corrected) definition, with Winograd and fusion as asked."""
    cv2 = import_cv2("the OpenCV reference", dnn=True)
    try:
        net = cv2.dnn.readNetFromCaffe(proto_cv, model_path)
    except cv2.error as err:
        raise _rejected(err, path, "rejects the net") from None
    if net.empty():
        raise CaffeBridgeError("OpenCV read an empty net", file=path)
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(winograd)
    net.enableFusion(fusion)  # fused-away blobs (ReLU into a Concat) come back stale
    return net


def _run_per_sample(net: Any, arrays: Mapping[str, np.ndarray], batch: int, layers: list[str],
                    picks: list[tuple[int, int]], path: str) -> list[np.ndarray]:
    """Run OpenCV one sample at a time (it runs at the Input's batch); stack each pick.

    OpenCV keeps only the first output of a requested layer: its later outputs (a Slice's
    second top) come back as memory reused by later layers. Such layers are read in a run of
    their own, which stops there.
    """
    cv2 = import_cv2("the OpenCV reference", dnn=True)
    later = {layers[p] for p, k in picks if k > 0}
    first = [n for n in layers if n not in later]
    per_sample: list[list[np.ndarray]] = []
    for i in range(batch):
        try:
            by_name = dict(zip(first, _forward(net, arrays, i, first), strict=True))
            for name in later:
                by_name[name] = _forward(net, arrays, i, [name])[0]
        except cv2.error as err:
            raise _rejected(err, path, "fails to run the net") from None
        per_sample.append([np.array(by_name[layers[p]][k], dtype=np.float32) for p, k in picks])
    return [np.concatenate([s[j] for s in per_sample], axis=0) for j in range(len(picks))]
