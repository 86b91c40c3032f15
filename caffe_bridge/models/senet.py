"""The SENet family, written the torchvision/timm way, with the numerics of the released Caffe nets.

State-dict keys follow the legacy SENet layout of Cadene's ``pretrainedmodels`` (also timm's
``legacy_senet``): ``layer0.conv1.weight``, ``layer0.bn1.running_mean``,
``layer1.0.conv1.weight``, ``layer1.0.se_module.fc1.weight``, ``layer1.0.downsample.0.weight``,
``last_linear.weight``; SENet-154 has the three-conv stem ``layer0.conv1/2/3`` and a ``dropout``
before ``last_linear``. A checkpoint in that layout loads with ``load_state_dict(strict=True)``.

The numerics are those of the seven released Caffe definitions (``SE-*.prototxt``,
``SENet-154.prototxt``), which differ from timm's (non-legacy) SENets in places; each quirk is
commented where it lives, tagged ``Caffe:``. Summary of what the prototxts fix:

* stem max pooling is 3x3 / stride 2 *without* padding in Caffe's default CEIL rounding, so
  112 -> 56 needs ``ceil_mode=True`` (timm's ResNet-style stem pads by 1 and floors instead);
* SE-ResNet puts a bottleneck's stride on its first 1x1 conv (``conv*_1_1x1_reduce``,
  stride 2), SE-ResNeXt and SENet-154 on the grouped 3x3 (``conv*_1_3x3``);
* SENet-154's projection shortcut is a 3x3/2 conv with pad 1 in stages 3-5 (1x1 in stage 2);
* the SE branch is global AVE pooling -> 1x1 Convolution (with bias; not an InnerProduct) ->
  ReLU -> 1x1 Convolution -> Sigmoid, and ``Axpy(scale, branch, shortcut)`` computes
  ``scale * branch + shortcut`` followed by a ReLU;
* the head is AVE pooling 7x7 / stride 1 (not global pooling), so only 224x224 inputs give the
  7x7 map the InnerProduct weights were shaped for;
* no BatchNorm sets ``eps``: Caffe's default 1e-5 everywhere (== PyTorch's default);
* Caffe's BatchNorm has no affine part; each BatchNorm + Scale(bias_term) pair is one
  ``nn.BatchNorm2d`` here (the Caffe mapping lives in ``senet_caffe.py``).

SE-BN-Inception has no PyTorch precedent; its layout (``SEBNInception``) is documented there.
All models expect Caffe input: BGR, 0-255, per-channel mean (104, 117, 123) subtracted (or set
``model.input_transform = CaffeInput(fmt)`` for other layouts); they return logits (no softmax)
in the class order the Caffe models were trained with (ILSVRC2012 devkit ID - 1).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

__all__ = [
    "CAFFE_BN_EPS",
    "CAFFE_MEAN_BGR",
    "CaffeInput",
    "ConvBnReLU",
    "SEBNInception",
    "SEBottleneck",
    "SEInceptionBlock",
    "SEInceptionReductionBlock",
    "SEModule",
    "SENet",
    "SEResNetBottleneck",
    "SEResNeXtBottleneck",
    "se_bn_inception",
    "se_resnet50",
    "se_resnet101",
    "se_resnet152",
    "se_resnext50_32x4d",
    "se_resnext101_32x4d",
    "senet154",
]

# Caffe: none of the released BatchNorm layers sets `eps`, so Caffe's default 1e-5 applies.
CAFFE_BN_EPS = 1e-5


def _bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm2d standing for a Caffe BatchNorm (stats) + Scale(bias_term: true) (affine) pair."""
    return nn.BatchNorm2d(channels, eps=CAFFE_BN_EPS)


def _stem_max_pool() -> nn.MaxPool2d:
    """MAX 3x3/2, no pad: Caffe rounds pooling output sizes up (CEIL), 112 -> 56, 56 -> 28."""
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


def _head_avg_pool() -> nn.AvgPool2d:
    """Caffe ``pool5/7x7_s1``: AVE 7x7 / stride 1, not global pooling (equal only on 7x7 maps)."""
    return nn.AvgPool2d(kernel_size=7, stride=1, ceil_mode=True)


# Caffe: the released nets were trained on BGR 0-255 images minus this per-channel mean (the
# `# mean_value: 104, 117, 123` comment at the top of every prototxt).
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)


class CaffeInput(nn.Module):
    """Turns images given in ``input_format`` into the Caffe input the released nets expect.

    ``"caffe"``: BGR, 0-255, mean subtracted (identity); ``"bgr255"``: BGR, 0-255 (OpenCV
    ``imread`` as float); ``"rgb255"``: RGB, 0-255; ``"torchvision"``: RGB, 0-1, normalised by
    the ImageNet mean/std of torchvision and timm. The constants are non-persistent buffers, so
    a model's ``state_dict`` keeps the legacy layout.
    """

    FORMATS = ("caffe", "bgr255", "rgb255", "torchvision")

    def __init__(self, input_format: str = "caffe") -> None:
        super().__init__()
        if input_format not in self.FORMATS:
            raise ValueError(f"input_format must be one of {self.FORMATS}, not {input_format!r}")
        self.input_format = input_format
        self.flip = input_format in ("rgb255", "torchvision")  # RGB -> BGR first
        mean = torch.tensor(CAFFE_MEAN_BGR)
        if input_format == "caffe":
            scale, shift = torch.ones(3), torch.zeros(3)
        elif input_format in ("bgr255", "rgb255"):
            scale, shift = torch.ones(3), -mean
        else:  # x_bgr255 = (x * std + m) * 255, all in BGR order after the flip
            std = torch.tensor(TORCHVISION_STD_RGB[::-1], dtype=torch.float64)
            m = torch.tensor(TORCHVISION_MEAN_RGB[::-1], dtype=torch.float64)
            scale = (std * 255).float()
            shift = (m * 255 - mean.double()).float()
        self.register_buffer("scale", scale.reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.reshape(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip:
            x = x.flip(1)
        return x * self.scale + self.shift

    def extra_repr(self) -> str:
        return repr(self.input_format)


class TimmInterface:
    """timm's classifier interface, shared by :class:`SENet` and :class:`SEBNInception`.

    ``forward_features`` -> ``(N, C, 7, 7)``; ``forward_head(x, pre_logits=True)`` -> the pooled
    ``(N, num_features)`` features, else the logits; ``get_classifier`` / ``reset_classifier``
    swap ``last_linear`` (``num_classes=0``: an ``nn.Identity``, the model returns features).
    """

    num_features: int
    num_classes: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # type: ignore[attr-defined]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avg_pool(x)  # type: ignore[attr-defined]
        dropout = getattr(self, "dropout", None)  # SENet-154 only
        if dropout is not None:
            x = dropout(x)
        # Caffe: InnerProduct flattens from axis 1 (C x 1 x 1 at 224x224 input).
        x = torch.flatten(x, 1)
        return x if pre_logits else self.last_linear(x)  # type: ignore[attr-defined]

    def get_classifier(self) -> nn.Module:
        return self.last_linear  # type: ignore[attr-defined]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError("only the Caffe head's average pooling is available")
        self.num_classes = num_classes
        self.last_linear = (nn.Linear(self.num_features, num_classes) if num_classes > 0
                            else nn.Identity())

    def _set_input_format(self, input_format: str) -> None:
        self.input_transform = None if input_format == "caffe" else CaffeInput(input_format)


class SEModule(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(fc2(relu(fc1(avgpool(x)))))``.

    Caffe: ``*_global_pool`` (Pooling AVE, global_pooling) -> ``*_1x1_down`` (Convolution 1x1,
    bias) -> ReLU -> ``*_1x1_up`` (Convolution 1x1, bias) -> ``*_prob`` (Sigmoid). Both FC layers
    are 1x1 Convolutions in the prototxts, hence ``nn.Conv2d`` (weights ``(out, in, 1, 1)``).
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1)
        self.sigmoid = nn.Sigmoid()

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel scale, shape ``(N, C, 1, 1)``."""
        return self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class Bottleneck(nn.Module):
    """Shared layers and forward of the SE bottlenecks (conv1/bn1, conv2/bn2, conv3/bn3, se_module).

    ``1x1 (inplanes -> mid1) -> 3x3 (mid1 -> mid2, groups) -> 1x1 (mid2 -> out)``, SE on ``out``;
    the stride sits on the 3x3, or on the first 1x1 with ``stride_on_1x1``.
    """

    def __init__(
        self,
        inplanes: int,
        mid1: int,
        mid2: int,
        out: int,
        groups: int,
        reduction: int,
        stride: int,
        downsample: nn.Module | None,
        *,
        stride_on_1x1: bool = False,
    ) -> None:
        super().__init__()
        stride1, stride3 = (stride, 1) if stride_on_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, mid1, kernel_size=1, stride=stride1, bias=False)
        self.bn1 = _bn(mid1)
        self.conv2 = nn.Conv2d(
            mid1, mid2, kernel_size=3, stride=stride3, padding=1, groups=groups, bias=False
        )
        self.bn2 = _bn(mid2)
        self.conv3 = nn.Conv2d(mid2, out, kernel_size=1, bias=False)
        self.bn3 = _bn(out)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = SEModule(out, reduction)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        # Caffe: Axpy(bottom = [scale, branch, shortcut]) = scale * branch + shortcut (the scale
        # multiplies the residual branch, not the shortcut), then an in-place ReLU (conv*_*/relu).
        out = self.se_module(out) + shortcut
        return self.relu(out)


class SEBottleneck(Bottleneck):
    """SENet-154 bottleneck: 1x1 (2p) -> grouped 3x3 (4p, stride) -> 1x1 (4p), SE."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        groups: int,
        reduction: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        # Caffe: the stride sits on the grouped 3x3 (conv*_1_3x3, group 64, stride 2).
        super().__init__(inplanes, planes * 2, planes * 4, planes * self.expansion, groups,
                         reduction, stride, downsample)


class SEResNetBottleneck(Bottleneck):
    """SE-ResNet bottleneck: 1x1 (p, stride) -> 3x3 (p) -> 1x1 (4p), SE."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        groups: int,
        reduction: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        # Caffe: SE-ResNet puts the stride on the first 1x1 (conv*_1_1x1_reduce, stride 2), unlike
        # torchvision/timm ResNets, which stride the 3x3.
        super().__init__(inplanes, planes, planes, planes * self.expansion, groups, reduction,
                         stride, downsample, stride_on_1x1=True)


class SEResNeXtBottleneck(Bottleneck):
    """SE-ResNeXt bottleneck (type C): 1x1 (w) -> grouped 3x3 (w, stride) -> 1x1 (4p), SE."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        groups: int,
        reduction: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        base_width: int = 4,
    ) -> None:
        width = math.floor(planes * base_width / 64) * groups
        # Caffe: SE-ResNeXt puts the stride on the grouped 3x3 (conv*_1_3x3, group 32, stride 2).
        super().__init__(inplanes, width, width, planes * self.expansion, groups, reduction,
                         stride, downsample)


BottleneckType = type[SEBottleneck] | type[SEResNetBottleneck] | type[SEResNeXtBottleneck]


def _senet_stem(inplanes: int, input_3x3: bool) -> nn.Sequential:
    """``layer0``: one 7x7 conv (or SENet-154's three 3x3 convs), BatchNorm, ReLU, max pool."""
    stem: list[tuple[str, nn.Module]]
    if input_3x3:
        # Caffe (SENet-154): conv1_1/3x3_s2 (64), conv1_2/3x3 (64), conv1_3/3x3 (128).
        stem = [
            ("conv1", nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)),
            ("bn1", _bn(64)),
            ("relu1", nn.ReLU(inplace=True)),
            ("conv2", nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1, bias=False)),
            ("bn2", _bn(64)),
            ("relu2", nn.ReLU(inplace=True)),
            ("conv3", nn.Conv2d(64, inplanes, kernel_size=3, stride=1, padding=1, bias=False)),
            ("bn3", _bn(inplanes)),
            ("relu3", nn.ReLU(inplace=True)),
        ]
    else:
        # Caffe: conv1/7x7_s2, 64 outputs, pad 3, no bias.
        stem = [
            ("conv1", nn.Conv2d(3, inplanes, kernel_size=7, stride=2, padding=3, bias=False)),
            ("bn1", _bn(inplanes)),
            ("relu1", nn.ReLU(inplace=True)),
        ]
    # Caffe: pool1/3x3_s2 is MAX 3x3/2 with no pad; CEIL rounding gives 112 -> 56 (FLOOR: 55).
    # Named `layer0.pool` as in pretrainedmodels (timm calls it `pool0`; no parameters).
    stem.append(("pool", _stem_max_pool()))
    return nn.Sequential(OrderedDict(stem))


class SENet(TimmInterface, nn.Module):
    """SE-ResNet / SE-ResNeXt / SENet-154 (the legacy ``pretrainedmodels`` layout).

    Args:
        block: bottleneck class of every stage.
        layers: blocks per stage (``layer1`` ... ``layer4``; Caffe ``conv2_*`` ... ``conv5_*``).
        groups: groups of each bottleneck's 3x3 conv.
        reduction: SE reduction ratio (16 in every released net).
        dropout_p: dropout before ``last_linear`` (SENet-154: 0.2), ``None`` for none.
        inplanes: channels out of the stem.
        input_3x3: three 3x3 stem convs (SENet-154) instead of one 7x7.
        downsample_kernel_size, downsample_padding: projection conv of stages 2-4.
        num_classes: outputs of ``last_linear``.
        input_format: the images it takes, ``"caffe"`` or another ``CaffeInput.FORMATS``
            (then ``input_transform`` converts them to Caffe input first).
    """

    def __init__(
        self,
        block: BottleneckType,
        layers: list[int],
        groups: int,
        reduction: int,
        dropout_p: float | None = None,
        inplanes: int = 64,
        input_3x3: bool = False,
        downsample_kernel_size: int = 1,
        downsample_padding: int = 0,
        num_classes: int = 1000,
        input_format: str = "caffe",
    ) -> None:
        super().__init__()
        self.inplanes = inplanes
        self.num_classes = num_classes
        # Optional conversion of other image layouts to Caffe input (see ``CaffeInput``).
        self.input_transform: nn.Module | None = None
        self._set_input_format(input_format)
        self.layer0 = _senet_stem(inplanes, input_3x3)
        # Caffe: conv2_1's projection is always 1x1/1; SENet-154 uses 3x3/2 pad 1 from conv3_1 on.
        self.layer1 = self._make_layer(block, 64, layers[0], groups, reduction)
        self.layer2 = self._make_layer(
            block, 128, layers[1], groups, reduction, 2, downsample_kernel_size, downsample_padding
        )
        self.layer3 = self._make_layer(
            block, 256, layers[2], groups, reduction, 2, downsample_kernel_size, downsample_padding
        )
        self.layer4 = self._make_layer(
            block, 512, layers[3], groups, reduction, 2, downsample_kernel_size, downsample_padding
        )
        self.num_features = 512 * block.expansion
        self.avg_pool = _head_avg_pool()
        # Caffe (SENet-154): pool5/dropout_7x7_s1, ratio 0.2; identity at test time.
        self.dropout = nn.Dropout(dropout_p) if dropout_p is not None else None
        self.last_linear = nn.Linear(self.num_features, num_classes)
        _init_weights(self)

    def _make_layer(
        self,
        block: BottleneckType,
        planes: int,
        blocks: int,
        groups: int,
        reduction: int,
        stride: int = 1,
        downsample_kernel_size: int = 1,
        downsample_padding: int = 0,
    ) -> nn.Sequential:
        """One stage; its first block takes the stride and, if shapes change, a projection."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            # Caffe: conv*_1_1x1_proj (no bias) + its BatchNorm/Scale.
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes,
                    planes * block.expansion,
                    kernel_size=downsample_kernel_size,
                    stride=stride,
                    padding=downsample_padding,
                    bias=False,
                ),
                _bn(planes * block.expansion),
            )
        mods = [block(self.inplanes, planes, groups, reduction, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes, groups, reduction) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and the four stages: ``(N, 3, 224, 224) -> (N, 2048, 7, 7)``."""
        if self.input_transform is not None:
            x = self.input_transform(x)
        x = self.layer0(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Head: AVE 7x7/1, (dropout), InnerProduct ``classifier``."""
        return self.forward_head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


# ---------------------------------------------------------------------------------------------
# SE-BN-Inception
#
# No PyTorch precedent exists, so the layout below is ours, built by analogy with the SENet one
# and torchvision's Inception (`BasicConv2d` = conv + bn): every Caffe "X" + "X/bn" +
# "X/bn/scale" + "X/relu" quadruple is one `ConvBnReLU` (keys `.conv.weight`, `.bn.*`).
#
#   layer0.{conv1,bn1,relu1}        conv1/7x7_s2            layer0.pool1   pool1/3x3_s2
#   layer0.{conv2,bn2,relu2}        conv2/3x3_reduce        layer0.{conv3,bn3,relu3}  conv2/3x3
#   layer0.pool2                    pool2/3x3_s2
#   layer1.0 .. layer1.2            inception_3a, 3b, 3c    (3c: reduction block, 28 -> 14)
#   layer2.0 .. layer2.4            inception_4a .. 4e      (4e: reduction block, 14 -> 7)
#   layer3.0 .. layer3.1            inception_5a, 5b
#   layerK.i.branch1x1              inception_Xy/1x1
#   layerK.i.branch3x3_reduce       inception_Xy/3x3_reduce   .branch3x3       inception_Xy/3x3
#   layerK.i.branch3x3dbl_reduce    inception_Xy/double3x3_reduce
#   layerK.i.branch3x3dbl_a / _b    inception_Xy/double3x3a / double3x3b
#   layerK.i.branch_pool            inception_Xy/pool (reduction blocks: inception_Xy/pool/3x3_s2)
#   layerK.i.branch_pool_proj       inception_Xy/pool_proj
#   layerK.i.se_module.fc1 / fc2    inception_Xy_1x1_down / inception_Xy_1x1_up
#   avg_pool, last_linear           pool5/7x7_s1, classifier
# ---------------------------------------------------------------------------------------------


class ConvBnReLU(nn.Module):
    """Caffe Convolution (no bias) + BatchNorm + Scale + ReLU."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = _bn(out_ch)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class _SEInceptionBase(nn.Module):
    """Shared tail: channel concat, then SE scaling (no residual, no ReLU after it)."""

    se_module: SEModule

    def _branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat(self._branches(x), dim=1)  # Caffe: Concat along axis 1
        # Caffe: inception_Xy_prob (Sigmoid) -> inception_Xy_prob_reshape (Reshape `dim: 0
        # dim: 0`, N x C x 1 x 1 -> N x C) -> inception_Xy_scale, a two-bottom Scale with
        # `axis: 0`: bottom[1] (N x C) is broadcast over bottom[0] from axis 0, i.e. one factor
        # per (sample, channel) -- the same as multiplying by the N x C x 1 x 1 gate.
        return out * self.se_module.gate(out)


class SEInceptionBlock(_SEInceptionBase):
    """BN-Inception block (1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool-1x1), SE on the concat."""

    def __init__(
        self,
        in_ch: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch3x3dblred: int,
        ch3x3dbl: int,
        pool_proj: int,
        pool: str = "avg",
        reduction: int = 16,
    ) -> None:
        super().__init__()
        self.branch1x1 = ConvBnReLU(in_ch, ch1x1, 1)
        self.branch3x3_reduce = ConvBnReLU(in_ch, ch3x3red, 1)
        self.branch3x3 = ConvBnReLU(ch3x3red, ch3x3, 3, padding=1)
        self.branch3x3dbl_reduce = ConvBnReLU(in_ch, ch3x3dblred, 1)
        self.branch3x3dbl_a = ConvBnReLU(ch3x3dblred, ch3x3dbl, 3, padding=1)
        self.branch3x3dbl_b = ConvBnReLU(ch3x3dbl, ch3x3dbl, 3, padding=1)
        # Caffe: inception_Xy/pool is AVE 3x3/1 pad 1, and the padded zeros count in the divisor
        # (count_include_pad=True); inception_5b/pool alone is MAX 3x3/1 pad 1.
        self.branch_pool: nn.Module
        if pool == "avg":
            self.branch_pool = nn.AvgPool2d(
                3, stride=1, padding=1, ceil_mode=True, count_include_pad=True
            )
        elif pool == "max":
            self.branch_pool = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
        else:
            raise ValueError(f"pool must be 'avg' or 'max', not {pool!r}")
        self.branch_pool_proj = ConvBnReLU(in_ch, pool_proj, 1)
        self.out_channels = ch1x1 + ch3x3 + ch3x3dbl + pool_proj
        self.se_module = SEModule(self.out_channels, reduction)

    def _branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [
            self.branch1x1(x),
            self.branch3x3(self.branch3x3_reduce(x)),
            self.branch3x3dbl_b(self.branch3x3dbl_a(self.branch3x3dbl_reduce(x))),
            self.branch_pool_proj(self.branch_pool(x)),
        ]


class SEInceptionReductionBlock(_SEInceptionBase):
    """BN-Inception reduction block (1x1-3x3/2 | 1x1-3x3-3x3/2 | max 3x3/2), SE on the concat."""

    def __init__(
        self,
        in_ch: int,
        ch3x3red: int,
        ch3x3: int,
        ch3x3dblred: int,
        ch3x3dbl: int,
        reduction: int = 16,
    ) -> None:
        super().__init__()
        self.branch3x3_reduce = ConvBnReLU(in_ch, ch3x3red, 1)
        self.branch3x3 = ConvBnReLU(ch3x3red, ch3x3, 3, stride=2, padding=1)
        self.branch3x3dbl_reduce = ConvBnReLU(in_ch, ch3x3dblred, 1)
        self.branch3x3dbl_a = ConvBnReLU(ch3x3dblred, ch3x3dbl, 3, padding=1)
        self.branch3x3dbl_b = ConvBnReLU(ch3x3dbl, ch3x3dbl, 3, stride=2, padding=1)
        # Caffe: inception_3c/pool/3x3_s2 is MAX 3x3/2 without pad: CEIL gives 28 -> 14 and
        # 14 -> 7, matching the stride-2 convs (FLOOR would give 13 and 6 and break the Concat).
        self.branch_pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.out_channels = ch3x3 + ch3x3dbl + in_ch
        self.se_module = SEModule(self.out_channels, reduction)

    def _branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [
            self.branch3x3(self.branch3x3_reduce(x)),
            self.branch3x3dbl_b(self.branch3x3dbl_a(self.branch3x3dbl_reduce(x))),
            self.branch_pool(x),
        ]


# (1x1, 3x3 reduce, 3x3, double-3x3 reduce, double-3x3, pool proj, pool) per inception_Xy block,
# reduction blocks as (3x3 reduce, 3x3, double-3x3 reduce, double-3x3); from the prototxt.
_BN_INCEPTION_STAGES: tuple[tuple[tuple[int | str, ...], ...], ...] = (
    ((64, 64, 64, 64, 96, 32, "avg"), (64, 64, 96, 64, 96, 64, "avg"), (128, 160, 64, 96)),
    (
        (224, 64, 96, 96, 128, 128, "avg"),
        (192, 96, 128, 96, 128, 128, "avg"),
        (160, 128, 160, 128, 160, 128, "avg"),
        (96, 128, 192, 160, 192, 128, "avg"),
        (128, 192, 192, 256),
    ),
    ((352, 192, 320, 160, 224, 128, "avg"), (352, 192, 320, 192, 224, 128, "max")),
)


class SEBNInception(TimmInterface, nn.Module):
    """SE-BN-Inception (layout in the comment block above)."""

    def __init__(self, num_classes: int = 1000, reduction: int = 16,
                 input_format: str = "caffe") -> None:
        super().__init__()
        self.num_classes = num_classes
        # Optional conversion of other image layouts to Caffe input (see ``CaffeInput``).
        self.input_transform: nn.Module | None = None
        self._set_input_format(input_format)
        self.layer0 = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)),
                    ("bn1", _bn(64)),
                    ("relu1", nn.ReLU(inplace=True)),
                    # Caffe: pool1/3x3_s2, MAX 3x3/2 no pad, CEIL: 112 -> 56.
                    ("pool1", _stem_max_pool()),
                    ("conv2", nn.Conv2d(64, 64, kernel_size=1, bias=False)),
                    ("bn2", _bn(64)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("conv3", nn.Conv2d(64, 192, kernel_size=3, padding=1, bias=False)),
                    ("bn3", _bn(192)),
                    ("relu3", nn.ReLU(inplace=True)),
                    # Caffe: pool2/3x3_s2, MAX 3x3/2 no pad, CEIL: 56 -> 28.
                    ("pool2", _stem_max_pool()),
                ]
            )
        )
        in_ch = 192
        for i, stage in enumerate(_BN_INCEPTION_STAGES, start=1):
            blocks: list[nn.Module] = []
            for cfg in stage:
                if len(cfg) == 4:
                    blk: SEInceptionBlock | SEInceptionReductionBlock = SEInceptionReductionBlock(
                        in_ch, *(int(c) for c in cfg), reduction=reduction
                    )
                else:
                    blk = SEInceptionBlock(
                        in_ch, *(int(c) for c in cfg[:6]), pool=str(cfg[6]), reduction=reduction
                    )
                blocks.append(blk)
                in_ch = blk.out_channels
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.num_features = in_ch
        self.avg_pool = _head_avg_pool()
        self.last_linear = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and the three inception stages: ``(N, 3, 224, 224) -> (N, 1024, 7, 7)``."""
        if self.input_transform is not None:
            x = self.input_transform(x)
        x = self.layer0(x)
        x = self.layer1(x)
        x = self.layer2(x)
        return self.layer3(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Head: AVE 7x7/1, InnerProduct ``classifier``."""
        return self.forward_head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


def _init_weights(model: nn.Module) -> None:
    """He (fan-out) init for convs, identity BatchNorm; the released weights replace all of it."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def se_resnet50(num_classes: int = 1000, **kwargs: Any) -> SENet:
    """SE-ResNet-50 (SE-ResNet-50.prototxt); ``kwargs`` go to :class:`SENet`."""
    return SENet(SEResNetBottleneck, [3, 4, 6, 3], 1, 16, num_classes=num_classes, **kwargs)


def se_resnet101(num_classes: int = 1000, **kwargs: Any) -> SENet:
    """SE-ResNet-101 (SE-ResNet-101.prototxt); ``kwargs`` go to :class:`SENet`."""
    return SENet(SEResNetBottleneck, [3, 4, 23, 3], 1, 16, num_classes=num_classes, **kwargs)


def se_resnet152(num_classes: int = 1000, **kwargs: Any) -> SENet:
    """SE-ResNet-152 (SE-ResNet-152.prototxt); ``kwargs`` go to :class:`SENet`."""
    return SENet(SEResNetBottleneck, [3, 8, 36, 3], 1, 16, num_classes=num_classes, **kwargs)


def se_resnext50_32x4d(num_classes: int = 1000, **kwargs: Any) -> SENet:
    """SE-ResNeXt-50 (32x4d) (SE-ResNeXt-50.prototxt); ``kwargs`` go to :class:`SENet`."""
    return SENet(SEResNeXtBottleneck, [3, 4, 6, 3], 32, 16, num_classes=num_classes, **kwargs)


def se_resnext101_32x4d(num_classes: int = 1000, **kwargs: Any) -> SENet:
    """SE-ResNeXt-101 (32x4d) (SE-ResNeXt-101.prototxt); ``kwargs`` go to :class:`SENet`."""
    return SENet(SEResNeXtBottleneck, [3, 4, 23, 3], 32, 16, num_classes=num_classes, **kwargs)


def senet154(num_classes: int = 1000, **kwargs: Any) -> SENet:
    """SENet-154 (SENet-154.prototxt); ``kwargs`` go to :class:`SENet`."""
    return SENet(
        SEBottleneck,
        [3, 8, 36, 3],
        64,
        16,
        dropout_p=0.2,
        inplanes=128,
        input_3x3=True,
        downsample_kernel_size=3,
        downsample_padding=1,
        num_classes=num_classes,
        **kwargs,
    )


def se_bn_inception(num_classes: int = 1000, **kwargs: Any) -> SEBNInception:
    """SE-BN-Inception (SE-BN-Inception.prototxt); ``kwargs`` go to :class:`SEBNInception`."""
    return SEBNInception(num_classes=num_classes, **kwargs)
