"""``caffe2torch convert NET.prototxt --as senet``: the idiomatic SENet as a state dict + preset.

``convert_senet`` writes two files into ``outdir``:

* ``<stem>.pth``: ``torch.save`` of the idiomatic model's ``state_dict`` (the legacy SENet key
  layout of ``caffe_bridge.models``; loads with ``torch.load(..., weights_only=True)`` and
  ``load_state_dict(strict=True)``). ``class_order="torchvision"`` is baked in (rows of
  ``last_linear`` permuted); the input conversion of ``input_format`` is not a weight (see below).
* ``<stem>.preset.json``: what is needed to use it: the architecture, the constructor to call,
  the preprocessing (mean, std, channel order, input range, resize 256, centre crop 224), the
  class order with the 1000 WordNet IDs in output order, and the input format, i.e. which
  ``CaffeInput`` stage to attach (``model.input_transform``) for non-Caffe input.

Both are written to temporary siblings, checked (the ``.pth`` is loaded back and compared with
the model tensor by tensor) and only then moved into place; existing files are kept unless
``force``. :func:`load_senet` rebuilds the model from the two files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.models import senet as S

__all__ = ["CONSTRUCTORS", "FORMAT_VERSION", "WEIGHT_FORMATS", "convert_senet", "fold_input",
           "load_senet", "preset"]

PathLike = str | os.PathLike[str]
FORMAT_VERSION = 1

# Architecture (as recognised by from_caffe) -> public constructor in caffe_bridge.models.
CONSTRUCTORS = {
    "SE-BN-Inception": "se_bn_inception",
    "SE-ResNet-50": "se_resnet50",
    "SE-ResNet-101": "se_resnet101",
    "SE-ResNet-152": "se_resnet152",
    "SE-ResNeXt-50": "se_resnext50_32x4d",
    "SE-ResNeXt-101": "se_resnext101_32x4d",
    "SENet-154": "senet154",
}
CLASS_ORDERS = ("caffe", "torchvision")
WEIGHT_FORMATS = ("pth", "safetensors")

# What the caller does to an image before the model, per input format: channel order, value
# range, then (x - mean) / std per channel in that order. The model's CaffeInput stage turns the
# result into Caffe input (BGR, 0-255, minus 104/117/123), exactly.
_PREPROCESS: dict[str, dict[str, Any]] = {
    "caffe": {"channel_order": "BGR", "input_range": [0, 255],
              "mean": list(S.CAFFE_MEAN_BGR), "std": [1.0, 1.0, 1.0]},
    "bgr255": {"channel_order": "BGR", "input_range": [0, 255],
               "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    "rgb255": {"channel_order": "RGB", "input_range": [0, 255],
               "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    "torchvision": {"channel_order": "RGB", "input_range": [0, 1],
                    "mean": list(S.TORCHVISION_MEAN_RGB), "std": list(S.TORCHVISION_STD_RGB)},
}


@torch.no_grad()
def fold_input(model: nn.Module, input_format: str) -> nn.Module:
    """Fold the ``CaffeInput(input_format)`` stage into ``layer0.conv1`` and ``layer0.bn1``.

    The channel flip and the per-channel scale (``std * 255`` for torchvision input) go into
    conv1's weights; the constant shift (``mean * 255 - (104, 117, 123)``) becomes a per-output
    constant ``W . shift``, which ``bn1``'s running mean absorbs (conv1 has no bias: the legacy
    key layout stays as it is). The model then takes ``input_format`` images with no input stage,
    as timm's and Cadene's SENets do. Exact except where conv1's zero padding meets the border:
    there the padded zeros stand for Caffe pixels equal to the shift instead of 0 (measured in
    the README). Returns ``model`` (changed in place, ``input_transform`` removed).
    """
    if input_format == "caffe" or input_format not in S.CaffeInput.FORMATS:
        raise CaffeBridgeError(f"--fold-input needs an input format other than caffe "
                               f"({', '.join(S.CaffeInput.FORMATS[1:])}), not {input_format!r}")
    stage = S.CaffeInput(input_format)
    conv, bn = model.get_submodule("layer0.conv1"), model.get_submodule("layer0.bn1")
    w = conv.weight.double()  # (out, 3, k, k), input channels in Caffe's BGR order
    scale = stage.scale.double().reshape(1, 3, 1, 1)
    shift = stage.shift.double().reshape(1, 3, 1, 1)
    constant = (w * shift).sum(dim=(1, 2, 3))  # what the shift adds to every interior output
    folded = w * scale
    conv.weight.copy_((folded.flip(1) if stage.flip else folded).float())
    bn.running_mean.copy_((bn.running_mean.double() - constant).float())
    model.input_transform = None
    return model


def _check_options(class_order: str, input_format: str) -> None:
    if class_order not in CLASS_ORDERS:
        raise CaffeBridgeError(
            f"class order must be one of {', '.join(CLASS_ORDERS)}, not {class_order!r}"
        )
    if input_format not in S.CaffeInput.FORMATS:
        raise CaffeBridgeError(
            f"input format must be one of {', '.join(S.CaffeInput.FORMATS)}, not {input_format!r}"
        )


def preset(
    arch: str,
    num_classes: int,
    class_order: str,
    input_format: str,
    *,
    prototxt: PathLike | None = None,
    caffemodel: PathLike | None = None,
    state_dict: str | None = None,
    folded: bool = False,
) -> dict[str, Any]:
    """The preset JSON object for a converted SENet (see the module docstring)."""
    from caffe_bridge import __version__
    from caffe_bridge.models import class_order as co

    _check_options(class_order, input_format)
    if arch not in CONSTRUCTORS:
        raise CaffeBridgeError(f"no constructor for architecture {arch!r}")
    pre = _PREPROCESS[input_format]
    wnids = co.wnids(class_order) if num_classes == co.CLASSES else None
    return {
        "format": "caffe-bridge SENet preset",
        "format_version": FORMAT_VERSION,
        "created_by": f"caffe-bridge {__version__}",
        "architecture": arch,
        "constructor": f"caffe_bridge.models.{CONSTRUCTORS[arch]}",
        "constructor_kwargs": {"num_classes": num_classes},
        "state_dict": state_dict,
        "outputs": "logits (no softmax)",
        "input_format": input_format,
        "input_folded": folded,
        "input_transform": None if input_format == "caffe" or folded
        else f"caffe_bridge.models.senet.CaffeInput({input_format!r})",
        "preprocess": {
            "resize": 256,
            "resize_interpolation": "bilinear",
            "crop": 224,
            **pre,
            "note": "decode, resize the shorter side to `resize`, centre-crop `crop` x `crop`, "
                    "arrange channels in `channel_order` with values in `input_range`, then "
                    "(x - mean) / std per channel (mean and std in `channel_order`); set "
                    "model.input_transform as `input_transform` says",
        },
        "class_order": class_order,
        "class_order_note": "caffe: ILSVRC2012 devkit order (SENet training order); "
                            "torchvision: sorted synsets (torchvision, timm, ImageFolder)",
        "num_classes": num_classes,
        "wnids": wnids,
        "source": {
            "prototxt": os.fspath(prototxt) if prototxt is not None else None,
            "caffemodel": os.fspath(caffemodel) if caffemodel is not None else None,
        },
    }


def _save_weights(state: dict[str, torch.Tensor], fmt: str, path: Path) -> None:
    """Save as a torch ``.pth`` or a ``.safetensors`` file, and check it loads back the same."""
    if fmt == "safetensors":
        save_file, load_file = _safetensors()
        save_file(state, str(path))
        loaded = load_file(str(path))
    else:
        torch.save(state, path)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    if set(loaded) != set(state) or not all(
            loaded[k].dtype == v.dtype and torch.equal(loaded[k], v) for k, v in state.items()):
        raise CaffeBridgeError("the saved state dict does not load back identically",
                               file=str(path))


def _safetensors() -> tuple[Any, Any]:
    try:
        from safetensors.torch import load_file, save_file
    except ImportError:
        raise CaffeBridgeError("--format safetensors needs the safetensors package "
                               "(pip install 'caffe-bridge[safetensors]')") from None
    return save_file, load_file


def convert_senet(
    prototxt: PathLike,
    caffemodel: PathLike | None,
    outdir: PathLike,
    class_order: str = "caffe",
    input_format: str = "caffe",
    force: bool = False,
    *,
    fold: bool = False,
    formats: tuple[str, ...] = ("pth",),
) -> list[Path]:
    """Write ``<stem>.pth`` (and/or ``.safetensors``) and ``<stem>.preset.json``; return paths.

    ``stem`` is the prototxt's file name without its suffix; ``outdir`` is created if missing.
    ``caffemodel=None`` converts the definition alone (freshly initialised weights). ``fold``
    folds the ``input_format`` conversion into the weights (:func:`fold_input`).
    """
    from caffe_bridge.atomic import atomic_outputs
    from caffe_bridge.ir import load_net
    from caffe_bridge.models.senet_caffe import from_caffe, recognise

    _check_options(class_order, input_format)
    if not formats or any(f not in WEIGHT_FORMATS for f in formats):
        raise CaffeBridgeError(f"weight formats must be among {', '.join(WEIGHT_FORMATS)}")
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise CaffeBridgeError("is not a directory", file=str(out))
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(prototxt).stem
    weights = [out / f"{stem}.{f}" for f in dict.fromkeys(formats)]
    js = out / f"{stem}.preset.json"
    with atomic_outputs([*weights, js], force=force) as temps:
        model = from_caffe(prototxt, caffemodel, class_order=class_order)
        if fold:
            fold_input(model, input_format)
        arch = recognise(load_net(prototxt))
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        for path, tmp in zip(weights, temps, strict=False):
            _save_weights(state, path.suffix[1:], tmp)
        num_classes = model.get_submodule("last_linear").out_features
        obj = preset(arch, num_classes, class_order, input_format, prototxt=prototxt,
                     caffemodel=caffemodel, state_dict=weights[0].name, folded=fold)
        temps[-1].write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    return [*weights, js]


def load_senet(preset_path: PathLike, state_dict_path: PathLike | None = None) -> nn.Module:
    """Rebuild the model a preset describes, with its weights and input stage, in eval mode.

    ``state_dict_path`` (a ``.pth`` or ``.safetensors``) defaults to the one the preset names.
    """
    from caffe_bridge import models

    path = Path(preset_path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CaffeBridgeError(f"cannot read the preset: {err}", file=str(path)) from None
    if obj.get("format_version") != FORMAT_VERSION:
        raise CaffeBridgeError(f"unsupported preset format_version {obj.get('format_version')!r}",
                               file=str(path))
    name = str(obj.get("constructor", "")).rpartition(".")[2]
    if name not in CONSTRUCTORS.values():
        raise CaffeBridgeError(f"unknown constructor {obj.get('constructor')!r}", file=str(path))
    model: nn.Module = getattr(models, name)(**obj.get("constructor_kwargs", {}))
    weights = Path(state_dict_path) if state_dict_path is not None else \
        path.with_name(str(obj["state_dict"]))
    if weights.suffix == ".safetensors":
        state = _safetensors()[1](str(weights))
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    fmt = obj.get("input_format", "caffe")
    if fmt != "caffe" and not obj.get("input_folded", False):
        model.input_transform = S.CaffeInput(fmt)
    return model.eval()
