"""Standalone PyTorch source for a converted net: what ``caffe2torch convert`` writes.

The generated ``<stem>.py`` imports only torch and the standard library. It holds

* a header docstring naming the source files (whitelisted characters only) and ``SOURCES``,
  their exact names and sha256 digests;
* the module classes the converters used that are not torch's, copied with
  ``inspect.getsource`` together with the helpers and constants they use;
* one ``nn.Module`` class whose ``__init__`` creates one named submodule per Caffe layer by
  repeating the constructor call the converter made (captured while converting), whose
  each line commented with its Caffe layer name (``CAFFE_NAMES`` holds only the names a
  comment cannot show exactly), and whose ``forward`` is written
  from the fx graph with variables named after the Caffe blobs;
* ``build(weights: str | None = None) -> torch.nn.Module``: the model in eval mode, loading a
  plain state dict (``<stem>.pth``, for ``torch.load(weights_only=True)``) when given.

Before anything is written, every submodule is rebuilt from its rendered constructor call and
must compute the same values bit for bit; after writing (to temporary files), the file is
imported and must reproduce :func:`caffe_bridge.convert` bit for bit on a seeded input. See
``render.py`` for the details, including why Caffe names can never become code.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import keyword
import os
import re
import secrets
import sys
import threading
import types
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx

from caffe_bridge.build import build_module, warn_unused_weights
from caffe_bridge.codegen.render import (
    CodegenError,
    Progress,
    Records,
    check_identifiers,
    display_text,
    has_meta,
    recording,
    render_module,
    same_values,
)
from caffe_bridge.errors import CaffeBridgeError, CaffeBridgeWarning
from caffe_bridge.fast import make_fast
from caffe_bridge.ir import Net
from caffe_bridge.random_weights import random_inputs

__all__ = [
    "CodegenError",
    "Generated",
    "check_generated",
    "check_saved",
    "check_identifiers",
    "display_text",
    "generate",
    "module_name",
    "load_generated",
    "sha256_file",
    "state_dict_for_saving",
    "write_module_files",
]

_CHUNK = 1 << 22


def sha256_file(
    path: str | os.PathLike[str],
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> str:
    """Hex sha256 of a file, read in chunks (``progress("hash", done, total)`` in bytes).

    When ``stop`` is set the reading ends early and the (then meaningless) digest is returned.
    """
    digest = hashlib.sha256()
    total = os.path.getsize(path)
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress("hash", done, total)
            if stop is not None and stop.is_set():
                break
    return digest.hexdigest()


class _BackgroundHashes:
    """sha256 of some files, computed in a daemon thread (hashlib releases the GIL) while the
    caller converts; :meth:`result` waits and re-raises its error, :meth:`cancel` stops it."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]],
                 progress: Progress | None) -> None:
        self._paths, self._progress = list(paths), progress
        self._stop = threading.Event()
        self._digests: list[str] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for p in self._paths:
                self._digests.append(sha256_file(p, self._progress, self._stop))
        except BaseException as err:  # noqa: BLE001 - handed to the caller by result()
            self._error = err

    def result(self) -> list[str]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._digests

    def cancel(self) -> None:
        self._stop.set()


@dataclass(frozen=True)
class Generated:
    """A rendered module: its source and the GraphModule it reproduces."""

    source: str
    module: fx.GraphModule


def generate(
    net: Net,
    *,
    sources: Sequence[tuple[str, str, str]] = (),
    outputs: Sequence[str] | None = None,
    check: bool = True,
    progress: Progress | None = None,
    exact: bool = False,
) -> Generated:
    """Convert ``net`` and render it as standalone source.

    ``sources`` are ``(role, file name, sha256)`` triples for the header; ``outputs`` as in
    :func:`caffe_bridge.build.build_module`; ``check`` rebuilds every submodule from its
    rendered constructor call and compares it with the converted one. The code (and
    ``module``) is the fast form of :func:`caffe_bridge.convert` unless ``exact``.
    """
    gm, records = _converted(net, outputs, exact)
    source = render_module(net, gm, records, sources=sources, check=check, progress=progress,
                           fast=not exact)
    return Generated(source, gm)


def _converted(net: Net, outputs: Sequence[str] | None, exact: bool) -> tuple[fx.GraphModule,
                                                                              Records]:
    """The converted model (exact, or the fast form) and its modules' constructor records.

    The fast form's new modules (folded convolutions, in-place ReLUs, pooling and GEMM
    modules) are built by their constructors while recording; records are matched to modules
    by identity through weak references, so the modules the fast form replaces are freed
    (their weights with them).
    """
    with recording() as records:
        gm = build_module(net, outputs)
    if exact:
        return gm, records
    built = {key: (weakref.ref(m), call) for key, (m, call) in records.items() if m is not gm}
    records.clear()
    with recording() as added:
        make_fast(gm)
    out: Records = {}
    for m in gm.modules():
        entry = added.get(id(m))
        if entry is not None and entry[0] is m:
            out[id(m)] = entry
            continue
        ref, call = built.get(id(m), (None, None))
        if ref is not None and ref() is m:
            out[id(m)] = (m, call)
    return gm, out


def _owns_storage(t: torch.Tensor) -> bool:
    """Whether ``t`` is contiguous and exactly fills its storage (no view of a larger one)."""
    return (t.is_contiguous() and t.storage_offset() == 0
            and t.untyped_storage().nbytes() == t.numel() * t.element_size())


def state_dict_for_saving(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A plain dict of compact CPU tensors (no views of larger storages) for ``torch.save``.

    Tensors that already fill a storage of their own are saved as they are (not copied again);
    views, and entries sharing a storage with an earlier one, are copied.
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in module.state_dict().items():
        t = v.detach().cpu()
        ptr = t.untyped_storage().data_ptr()
        if not _owns_storage(t) or (t.numel() and ptr in seen):
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def load_generated(path: str | os.PathLike[str]) -> types.ModuleType:
    """Import a generated file under a private module name (any file name or suffix)."""
    name = f"_caffe_bridge_generated_{secrets.token_hex(6)}"
    loader = importlib.machinery.SourceFileLoader(name, os.fspath(path))
    spec = importlib.util.spec_from_loader(name, loader)
    if spec is None:
        raise CodegenError("cannot import the generated file", file=os.fspath(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except Exception:
        sys.modules.pop(name, None)
        raise
    return module


@torch.no_grad()
def check_generated(
    py_path: str | os.PathLike[str],
    pth_path: str | os.PathLike[str] | None,
    reference: torch.nn.Module,
    net: Net,
    seed: int = 0,
) -> None:
    """Import the generated file, build it, and require bit-identical outputs to ``reference``.

    The generated model is built on the meta device and given ``reference``'s own tensors (no
    second copy of the weights); the saved ``pth_path`` must hold the generated model's state
    dict names, shapes and dtypes, with ``reference``'s values (:func:`check_saved`).
    """
    try:
        module = load_generated(py_path)
    except CodegenError:
        raise
    except Exception as err:  # noqa: BLE001 - a broken generated file is our error to report
        raise CodegenError(f"the generated file does not import: {type(err).__name__}: {err}",
                           file=os.fspath(py_path)) from None
    try:
        model = _generated_model(module, reference)
        if pth_path is not None:
            check_saved(pth_path, model.state_dict(), reference.state_dict())
        feeds = random_inputs(net, seed)
        args = [torch.from_numpy(feeds[n]) for n in net.inputs]
        try:
            want = reference(*args)
        except Exception as err:  # noqa: BLE001 - e.g. rois as a net input: N(0, 1) is no box
            warnings.warn(f"{net.source}: the generated model was checked layer by "
                          f"layer but not run as a whole: random values are no valid input "
                          f"of this net ({type(err).__name__}: {err})", CaffeBridgeWarning,
                          stacklevel=2)
            return
        got = _forward_freeing(model)(*args)
    except CodegenError:
        raise
    except Exception as err:  # noqa: BLE001
        raise CodegenError(f"the generated model fails to run: {type(err).__name__}: {err}",
                           file=os.fspath(py_path)) from None
    finally:
        sys.modules.pop(module.__name__, None)
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    if len(want) != len(got) or not all(same_values(a, b) for a, b in zip(want, got, strict=True)):
        raise CodegenError("the generated model does not reproduce the converted one bit for "
                           "bit", file=os.fspath(py_path))


def _generated_model(module: types.ModuleType, reference: torch.nn.Module) -> torch.nn.Module:
    """The generated model holding ``reference``'s tensors (shared where it can be)."""
    state = reference.state_dict()
    with torch.device("meta"):
        model = module.build(None)
    model.load_state_dict(state, assign=True)
    if has_meta(model):  # a tensor the state dict does not hold: build it as usual
        model = module.build(None)
        model.load_state_dict(state)
    return model


class _CallsOnly(fx.Tracer):
    """Records ``forward``'s own statements: every submodule call is one opaque call."""

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        return True


def _forward_freeing(model: torch.nn.Module) -> Callable[..., object]:
    """``model``'s forward as torch.fx replays it, each blob freed after its last reader.

    The generated forward keeps every blob's variable alive until it returns (readable code
    without ``del`` lines); its statements are straight-line submodule calls, so the traced
    program performs exactly those calls, in that order, on the same tensors, while holding
    only the live blobs (the check then costs no more memory than one converted forward).
    Falls back to ``model`` itself if the forward cannot be traced.
    """
    try:
        return fx.GraphModule(model, _CallsOnly().trace(model))
    except Exception:  # noqa: BLE001 - untraceable: run the forward as written
        return model


SAMPLE = 256  # values compared at each end of a saved tensor (whole tensors up to 4x this)


def check_saved(path: str | os.PathLike[str], names: dict[str, torch.Tensor],
                values: dict[str, torch.Tensor]) -> None:
    """The .pth at ``path`` holds exactly ``names``' keys, shapes and dtypes, and ``values``.

    The file is mapped, not read: small tensors are compared whole, larger ones at both ends
    (enough to catch a wrong name or order; torch.save wrote the very tensors compared).
    """
    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    where = os.fspath(path)
    if set(saved) != set(names):
        missing, extra = set(names) - set(saved), set(saved) - set(names)
        raise CodegenError(f"the saved state dict does not match the generated model "
                           f"(missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]})",
                           file=where)
    for key, t in saved.items():
        want = values[key]
        if t.shape != names[key].shape or t.dtype != names[key].dtype:
            raise CodegenError(f"saved {key!r} is {t.dtype} {tuple(t.shape)}, the generated "
                               f"model has {names[key].dtype} {tuple(names[key].shape)}",
                               file=where)
        a, b = t.reshape(-1), want.detach().reshape(-1)
        if a.numel() > 4 * SAMPLE:
            a = torch.cat([a[:SAMPLE], a[-SAMPLE:]])
            b = torch.cat([b[:SAMPLE], b[-SAMPLE:]])
        if not same_values(a, b):
            raise CodegenError(f"saved {key!r} differs from the converted model", file=where)


def module_name(stem: str) -> str:
    """An importable module name for a file stem: ``SE-ResNet-50`` -> ``se_resnet_50``."""
    name = re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_") or "net"
    if name[0].isdigit() or keyword.iskeyword(name):
        name = f"net_{name}"
    return name


def write_module_files(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str] | None,
    outdir: str | os.PathLike[str],
    *,
    force: bool = False,
    check: bool = True,
    progress: Progress | None = None,
    outputs: Sequence[str] | None = None,
    exact: bool = False,
) -> tuple[Path, Path]:
    """Write ``OUTDIR/<module>.py`` and ``OUTDIR/<module>.pth`` atomically; return their paths.

    ``<module>`` is the prototxt's stem made importable (:func:`module_name`). ``outputs``
    chooses the blobs ``forward`` returns (default: the net's outputs). Without ``caffemodel``
    the state dict holds what the converters make without weights. The code is the fast form
    of :func:`caffe_bridge.convert` unless ``exact`` (Caffe's order of operations).
    """
    from caffe_bridge.atomic import atomic_outputs
    from caffe_bridge.ir import load_net

    folder = Path(outdir)
    stem = module_name(Path(prototxt).stem)
    targets = [folder / f"{stem}.py", folder / f"{stem}.pth"]
    if folder.exists() and not folder.is_dir():
        raise CaffeBridgeError("output folder is a file", file=str(folder))
    for t in targets:  # fail on clobbering before the (possibly long) conversion
        if t.exists() and not force:
            raise CaffeBridgeError("already exists (pass --force to overwrite)",
                                        file=str(t))
    files = [("prototxt", prototxt)] + ([("caffemodel", caffemodel)] if caffemodel else [])
    hashes = _BackgroundHashes([p for _, p in files], progress)  # overlaps the conversion
    try:
        net = load_net(prototxt, caffemodel)
        warn_unused_weights(net, caffemodel)
        gm, records = _converted(net, outputs, exact)
        digests = hashes.result()
        sources = [(role, Path(p).name, d) for (role, p), d in zip(files, digests, strict=True)]
        source = render_module(net, gm, records, sources=sources, check=check,
                               progress=progress, stem=Path(prototxt).stem, fast=not exact)
    finally:
        hashes.cancel()
    del records
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_outputs(targets, force=force) as (py_tmp, pth_tmp):
            py_tmp.write_text(source, encoding="utf-8")
            torch.save(state_dict_for_saving(gm), pth_tmp)
            if check:
                check_generated(py_tmp, pth_tmp, gm, net)
    except BaseException:
        if created:  # leave no trace, not even the (empty) folder
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return targets[0], targets[1]

