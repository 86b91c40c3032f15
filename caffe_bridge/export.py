"""Export a converted net to ONNX, TorchScript and ``torch.export`` (.pt2), each checked.

Every file is written to a temporary sibling, loaded back with its own runtime (onnxruntime,
``torch.jit.load``, ``torch.export.load``) and run on a seeded input; if any output differs from
the PyTorch model by a relative error (``max|a - b| / max|b|``) above the tolerance, nothing is
written. ONNX uses the TorchScript-based exporter (``dynamo=False``), which needs nothing beyond
torch; the dynamo exporter would need onnxscript.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import fx

from caffe_bridge.atomic import atomic_outputs
from caffe_bridge.build import build_module
from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.ir import Net
from caffe_bridge.numeric import rel_err
from caffe_bridge.random_weights import random_inputs

Progress = Callable[[str, int, int], None]
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-5


class ExportError(CaffeBridgeError):
    """An export that fails, or whose result does not reproduce the PyTorch model."""


@dataclass(frozen=True)
class ExportResult:
    """One written file and the largest relative error seen when checking it."""

    format: str  # "onnx", "torchscript" or "pt2"
    path: Path
    max_rel_err: float


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter deprecation and tracer warnings (the checks decide what counts)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _as_tuple(out: object) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)  # type: ignore[arg-type]


_STATIC_HINT = " (if the net cannot run at another batch size, pass --static-batch)"


def _checker(gm: fx.GraphModule, net: Net, dynamic: bool, seed: int) -> _Checker:
    try:
        return _Checker(gm, net, dynamic, seed)
    except Exception as err:  # noqa: BLE001 - the net itself fails at the second batch size
        if not dynamic:
            raise
        raise ExportError(f"the converted net fails at batch size +1 ({_first_line(err)}): "
                          "pass --static-batch") from None


class _Checker:
    """Seeded inputs (definition batch, and another batch when dynamic) and PyTorch outputs."""

    def __init__(self, gm: fx.GraphModule, net: Net, dynamic: bool, seed: int) -> None:
        batch = next(iter(net.inputs.values()))[0] if net.inputs else 1
        self.batches = [batch] + ([batch + 1] if dynamic else [])
        self.feeds = [random_inputs(net, seed + i, batch=b) for i, b in enumerate(self.batches)]
        self.names = list(net.inputs)
        self.out_names = [net.blobs[v].caffe_name for v in net.outputs]
        with torch.no_grad():
            self.want = [[t.numpy() for t in _as_tuple(gm(*self.args(f)))] for f in self.feeds]

    def args(self, feed: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(feed[n]) for n in self.names)

    def compare(self, fmt: str, run: Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]],
                tol: float, path: Path) -> float:
        worst = 0.0
        for feed, want in zip(self.feeds, self.want, strict=True):
            got = list(run(feed))
            if len(got) != len(want):
                raise ExportError(f"{fmt} model returns {len(got)} outputs, expected "
                                  f"{len(want)}", file=str(path))
            for name, a, b in zip(self.out_names, got, want, strict=True):
                err = rel_err(a, b)
                if not err <= tol:
                    hint = "" if feed is self.feeds[0] else _STATIC_HINT
                    raise ExportError(
                        f"{fmt} output {name!r} (batch {feed[self.names[0]].shape[0]}) differs "
                        f"from PyTorch: relative error {err:.3g} > {tol:g}{hint}", file=str(path))
                worst = max(worst, err)
        return worst


def _export_onnx(gm: fx.GraphModule, chk: _Checker, tmp: Path, opset: int,
                 dynamic: bool) -> None:
    out_names = [f"{n}" for n in chk.out_names]
    if len(set(out_names)) != len(out_names):  # the same blob twice: ONNX needs unique names
        out_names = [f"{n}:{i}" for i, n in enumerate(out_names)]
    axes = {n: {0: "batch"} for n in (*chk.names, *out_names)} if dynamic else None
    try:
        with _quiet():
            torch.onnx.export(gm, chk.args(chk.feeds[0]), str(tmp), dynamo=False,
                              opset_version=opset, input_names=chk.names,
                              output_names=out_names, dynamic_axes=axes)
    except Exception as err:  # noqa: BLE001 - exporter failures become one clean error
        hint = _STATIC_HINT if dynamic else ""
        raise ExportError(f"ONNX export failed: {type(err).__name__}: {_first_line(err)}{hint}") \
            from None


def _onnx_runner(path: Path) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("checking an ONNX export needs onnxruntime (pip install "
                          "onnxruntime)") from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"onnxruntime rejects the exported model: {_first_line(err)}",
                          file=str(path)) from None

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = [i.name for i in session.get_inputs()]
        return session.run(None, {n: feed[n] for n in names})

    return run


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _torch_runner(model: Callable[..., object], chk: _Checker) -> Callable[
        [dict[str, np.ndarray]], list[np.ndarray]]:
    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.detach().numpy() for t in _as_tuple(model(*chk.args(feed)))]

    return run


def preprocessing_metadata(net: Net, *, mean: Sequence[float] | None = None,
                           scale: float | None = None,
                           channel_order: str | None = None) -> dict[str, str]:
    """What a consumer of the exported file needs to feed it: input names and sizes, and the
    preprocessing where it is known (given here, or the published protocol of a recognised
    released SENet). Stored as ONNX ``metadata_props``."""
    from caffe_bridge.published import PROTOCOL, published_for

    meta = {"caffe_bridge.version": _version(), "source": os.path.basename(net.source),
            "net_name": net.name,
            "inputs": ";".join(f"{n}:{'x'.join(map(str, s))}" for n, s in net.inputs.items()),
            "layout": "NCHW", "pixel_range": "0-255 (Caffe)"}
    pub = published_for(net)
    if pub is not None:
        meta.update(recognised=pub.name, resize=str(PROTOCOL["resize"]),
                    crop=str(PROTOCOL["crop"]))
        mean = PROTOCOL["mean"] if mean is None else mean
        channel_order = channel_order or str(PROTOCOL["channel_order"])
    if mean is not None:
        meta["mean"] = ",".join(f"{float(v):g}" for v in mean)
    if scale is not None:
        meta["scale"] = f"{scale:g}"
    if channel_order is not None:
        meta["channel_order"] = channel_order
    return {k: v for k, v in meta.items() if v}


def _version() -> str:
    import caffe_bridge

    return caffe_bridge.__version__


def _add_onnx_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(path))


_LABELS = {"onnx": "ONNX", "torchscript": "TorchScript", "pt2": "torch.export"}


def _export_one(fmt: str, gm: fx.GraphModule, chk: _Checker, tmp: Path, opset: int,
                dynamic: bool, metadata: Mapping[str, str]) -> Callable[..., Sequence]:
    """Write one format to ``tmp`` and return a runner of the file as loaded back."""
    if fmt == "onnx":
        _export_onnx(gm, chk, tmp, opset, dynamic)
        if metadata:
            _add_onnx_metadata(tmp, metadata)
        return _onnx_runner(tmp)
    if fmt == "torchscript":
        try:
            with _quiet():
                traced = torch.jit.trace(gm, chk.args(chk.feeds[-1]), check_trace=False)
                traced.save(str(tmp))
                loaded = torch.jit.load(str(tmp), map_location="cpu")
        except Exception as err:  # noqa: BLE001
            raise ExportError(f"TorchScript export failed: {_first_line(err)}") from None
        return _torch_runner(loaded, chk)
    return _torch_runner(_export_pt2(gm, chk, tmp, dynamic), chk)


def export_net(
    net: Net,
    *,
    onnx: str | os.PathLike[str] | None = None,
    torchscript: str | os.PathLike[str] | None = None,
    pt2: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    progress: Progress | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[ExportResult]:
    """Convert ``net`` and write the requested formats, each checked against PyTorch.

    The batch axis is dynamic unless ``dynamic_batch=False`` (checked at a second batch size).
    ``metadata`` (default :func:`preprocessing_metadata`) goes into the ONNX file.
    ``progress(stage, done, total)`` hears ``"export <format>"`` start (0) and end (1) for
    each format, and ``"export"`` after each. Nothing is written unless every requested file
    passes its check.
    """
    wanted = [(fmt, Path(p)) for fmt, p in (("onnx", onnx), ("torchscript", torchscript),
                                            ("pt2", pt2)) if p is not None]
    if not wanted:
        raise ExportError("nothing to export: name at least one of --onnx, --torchscript, "
                          "--pt2")
    if not net.inputs:
        raise ExportError("the net declares no input", file=net.source)
    meta = preprocessing_metadata(net) if metadata is None else metadata
    step = progress or (lambda stage, done, total: None)
    with atomic_outputs([p for _, p in wanted], force=force) as temps:
        gm = build_module(net)
        chk = _checker(gm, net, dynamic_batch, seed)
        results = []
        for k, ((fmt, final), tmp) in enumerate(zip(wanted, temps, strict=True)):
            step(f"export {_LABELS[fmt]}", 0, 1)
            run = _export_one(fmt, gm, chk, tmp, opset, dynamic_batch, meta)
            err = chk.compare(_LABELS[fmt], run, tolerance, final)
            results.append(ExportResult(fmt, final, err))
            step(f"export {_LABELS[fmt]}", 1, 1)
            step("export", k + 1, len(wanted))
    return results


def _export_pt2(gm: fx.GraphModule, chk: _Checker, tmp: Path,
                dynamic: bool) -> Callable[..., object]:
    args = chk.args(chk.feeds[-1])
    shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        shapes = tuple({0: batch} for _ in args)
    try:
        with _quiet():
            program = torch.export.export(gm, args, dynamic_shapes=shapes)
            torch.export.save(program, str(tmp))
        return torch.export.load(str(tmp)).module()
    except Exception as err:  # noqa: BLE001
        hint = _STATIC_HINT if dynamic else ""
        raise ExportError(f"torch.export failed: {_first_line(err)}{hint}") from None
