"""The Caffe side of the SENet family: ``from_caffe`` (loader) and ``to_caffe`` (writer).

The released layout lives in :mod:`caffe_bridge.models.senet_layout`, recognition and the
layer-by-layer check in :mod:`caffe_bridge.models.senet_recognise`.

``from_caffe`` reads a definition (and its weights), recognises which of the seven released
architectures it is from its structure alone (stem, residual blocks per stage, group counts,
inception blocks; never the file or layer names), then checks it layer by layer against the
released definition of that architecture: type, dataflow, output shapes, parameter shapes and
every setting that changes the numbers (conv/pooling geometry, groups, bias terms, pooling
rounding, Scale axes, ...). Layers are paired by position, so parameter-free layers may be named
differently; weights come from the caffemodel by layer name (through ``load_net``) and are
copied into the module that the released layer name maps to. Each BatchNorm (mean, variance,
moving-average factor f, eps) + Scale (gamma, beta) pair is folded into one ``BatchNorm2d``.

``to_caffe`` writes a model back in the released layout: for the seven architectures the
definition equals the released prototxt layer for layer (names, types, bottoms, tops, params).

``class_order="torchvision"`` permutes the rows of ``last_linear`` (weight and bias) so that
output ``j`` is the class of sorted-synset index ``j`` (torchvision/timm/``ImageFolder``) instead
of the devkit order the nets were trained in; the table is ``caffe_bridge.models.class_order``.

``input_format="torchvision"`` (RGB, 0-1, normalised by the ImageNet mean/std) is a separate
``CaffeInput`` stage, ``x_caffe = flip(x) * std * 255 + (mean * 255 - (104, 117, 123))``, run
before conv1 pads the image, so it is exact everywhere: on a calibrated SE-ResNet-50 and uniform
random images, 6.6e-7 relative max error at conv1 (border and interior alike) and 2.0e-6 at the
logits, i.e. float32 rounding. It is deliberately *not* folded into conv1 (``W * scale`` plus a
bias ``W . shift``): that cannot be exact at the zero-padded border, because the zeros padded in
the normalised space stand for Caffe pixels equal to the shift, (-0.47, -0.72, +0.675) for B, G,
R, instead of 0. Measured on the same model: interior 5.7e-7, but 4.9e-3 at conv1's border
outputs (rows/columns 0, 1 and 111 of 112; exactly conv1 applied to that constant in the
padding) and 1.8e-3 at the logits (top-5 unchanged there). Folding would also add a
``layer0.conv1.bias`` key the legacy state-dict layout does not have.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from caffe_bridge.atomic import write_text
from caffe_bridge.errors import CaffeBridgeError, CaffemodelError
from caffe_bridge.ir import Layer, load_net
from caffe_bridge.models import senet as S
from caffe_bridge.models.senet_layout import (
    ARCHITECTURES,
    Layout,
    ParamRef,
    arch_name,
    caffe_prototxt_text,
    layout_of,
    render,
)
from caffe_bridge.models.senet_recognise import canonical_net, pair_layers, recognise
from caffe_bridge.numeric import f32_array

__all__ = ["ARCHITECTURES", "caffe_prototxt_text", "from_caffe", "recognise", "to_caffe"]

PathLike = str | os.PathLike[str]


def _blobs(model: nn.Module, ref: ParamRef) -> list[np.ndarray]:
    mod = model.get_submodule(ref.path)
    if ref.kind in ("conv", "fc"):
        out = [f32_array(mod.weight)]
        if mod.bias is not None:
            out.append(f32_array(mod.bias))
        return out
    if ref.kind == "bn":  # moving-average factor 1: the stored statistics are the effective ones
        return [f32_array(mod.running_mean), f32_array(mod.running_var), np.ones(1, np.float32)]
    return [f32_array(mod.weight), f32_array(mod.bias)]  # scale: gamma, beta


def to_caffe(
    model: nn.Module, prototxt_path: PathLike, caffemodel_path: PathLike, name: str | None = None
) -> None:
    """Write ``model`` as a Caffe definition + weights in the released layout.

    BatchNorm2d becomes BatchNorm (running stats, factor 1, ``eps`` only if not Caffe's 1e-5)
    + Scale (gamma, beta). ``name`` defaults to the architecture's released name.
    """
    from caffe_bridge.caffemodel import write_caffemodel

    lay = layout_of(model)
    net_name = name or arch_name(model)
    text = render(lay, net_name)
    weights = {ref.layer: _blobs(model, ref) for ref in lay.params}
    types = {spec.name: spec.type for spec in lay.layers}
    write_caffemodel(caffemodel_path, weights, net_name, types={k: types[k] for k in weights})
    write_text(prototxt_path, text, force=True)


# -- weights -------------------------------------------------------------------------------------


def _tensor(a: np.ndarray, shape: torch.Size) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True).reshape(tuple(shape)))


def _fold_bn(bn: nn.BatchNorm2d, layer: Layer) -> None:
    """Caffe BatchNorm: mean/f, var/f (f == 0 gives 0, as Caffe), + eps from the layer."""
    mean, var, factor = (np.asarray(b, dtype=np.float32) for b in layer.blobs)
    f = np.float32(factor.reshape(-1)[0])
    # Caffe multiplies by the float reciprocal: scale_factor = f == 0 ? 0 : 1 / f.
    sf = np.float32(0.0) if f == 0 else np.float32(1.0) / f
    assert bn.running_mean is not None and bn.running_var is not None
    bn.running_mean.copy_(_tensor(mean * sf, bn.running_mean.shape))
    bn.running_var.copy_(_tensor(var * sf, bn.running_var.shape))
    bn.eps = float(np.float32(layer.param.batch_norm_param.eps))


@torch.no_grad()
def _load(model: nn.Module, lay: Layout, paired: dict[str, Layer]) -> None:
    for ref in lay.params:
        layer = paired[ref.layer]
        mod = model.get_submodule(ref.path)
        blobs = layer.blobs
        if not blobs:
            raise CaffemodelError("no weights for this layer", **layer.error_kwargs())
        if ref.kind == "bn":
            _fold_bn(mod, layer)
        elif ref.kind == "scale":  # bias_term: true was checked against the released net
            mod.weight.copy_(_tensor(blobs[0], mod.weight.shape))
            mod.bias.copy_(_tensor(blobs[1], mod.bias.shape))
        else:
            w = np.asarray(blobs[0], dtype=np.float32)
            if ref.kind == "fc" and layer.param.inner_product_param.transpose:
                w = w.reshape(mod.in_features, mod.out_features).T  # stored (K, N)
            mod.weight.copy_(_tensor(w, mod.weight.shape))
            if mod.bias is not None:
                mod.bias.copy_(_tensor(blobs[1], mod.bias.shape))


def _class_permutation(class_order: str | Sequence[int], n: int) -> list[int] | None:
    if isinstance(class_order, str):
        if class_order == "caffe":
            return None
        if class_order == "torchvision":
            from caffe_bridge.models.class_order import CLASSES, sorted_to_senet

            if n != CLASSES:
                raise CaffeBridgeError(
                    f"class_order 'torchvision' maps the {CLASSES} ImageNet classes; this net "
                    f"has {n} outputs"
                )
            return [int(k) for k in sorted_to_senet()]
        raise CaffeBridgeError(
            f"class_order {class_order!r} is not available: use 'caffe' (the order the models "
            f"were trained with, ILSVRC2012 devkit ID - 1), 'torchvision' (sorted synsets, as "
            f"torchvision/timm/ImageFolder) or pass a sequence of {n} ints, "
            f"new class j = Caffe class order[j]"
        )
    order = [int(i) for i in class_order]
    if sorted(order) != list(range(n)):
        raise CaffeBridgeError(f"class_order must be a permutation of range({n})")
    return order


def from_caffe(
    prototxt: PathLike,
    caffemodel: PathLike | None = None,
    class_order: str | Sequence[int] = "caffe",
    input_format: str = "caffe",
) -> nn.Module:
    """Build the idiomatic model for a released SENet definition, with its Caffe weights.

    Args:
        prototxt: deploy definition of one of the seven released architectures (recognised
            from its structure; layer names of parameter-free layers may differ).
        caffemodel: its weights; ``None`` gives the architecture with freshly initialised weights.
        class_order: ``"caffe"`` keeps the training order (ILSVRC2012 devkit ID - 1);
            ``"torchvision"`` gives sorted-synset order (torchvision, timm, ``ImageFolder``;
            output ``j`` = the class of sorted index ``j``, see ``models.class_order``); a
            sequence of ints reorders the logits (output ``j`` = Caffe class ``class_order[j]``).
            Rows of ``last_linear`` (weight and bias) are permuted: no extra module.
        input_format: ``"caffe"`` (BGR, 0-255, mean 104/117/123 subtracted), or ``"bgr255"``,
            ``"rgb255"``, ``"torchvision"`` (RGB, 0-1, ImageNet mean/std) through a
            ``CaffeInput`` stage.

    Returns the model in eval mode; it returns logits (the final Softmax is left out).
    """
    if not isinstance(input_format, str) or input_format not in S.CaffeInput.FORMATS:
        raise CaffeBridgeError(
            f"input_format must be one of {', '.join(S.CaffeInput.FORMATS)}, not {input_format!r}"
        )
    net = load_net(prototxt, caffemodel)
    if net.unused_weights:
        raise CaffemodelError(
            f"parameter layers present in the weights but not in the definition: "
            f"{', '.join(net.unused_weights)}",
            file=os.fspath(caffemodel) if caffemodel is not None else None,
        )
    arch = recognise(net)
    fcs = [layer for layer in net.layers if layer.type == "InnerProduct"]
    num_classes = fcs[-1].param.inner_product_param.num_output if fcs else 1000
    order = _class_permutation(class_order, num_classes)
    model = ARCHITECTURES[arch](num_classes=num_classes)
    lay = layout_of(model)
    paired = pair_layers(net, canonical_net(lay, arch), arch)
    if caffemodel is not None:
        _load(model, lay, paired)
    last = model.get_submodule("last_linear")
    if order is not None:
        with torch.no_grad():
            idx = torch.tensor(order)
            last.weight.copy_(last.weight[idx].clone())
            last.bias.copy_(last.bias[idx].clone())
    if input_format != "caffe":
        model.input_transform = S.CaffeInput(input_format)
    return model.eval()
