"""Whole segmentation nets from tests/fixtures/wild/ made runnable at a small size.

The files stay unchanged; a test runs a temporary rewrite of one: data layers the loader does not
know yet (DeepLab's ImageSegData, SegNet's DenseImageData) become an ``Input`` of a small shape,
output-only layers (MatWrite, Silence) are dropped, and literal substrings are replaced where a
net's sizes are fixed in its layers (PSPNet's pyramid pooling kernels and Interp sizes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.wild import WILD


def layer_blocks(text: str) -> list[tuple[int, int]]:
    """(start, end) of every top-level ``layer { ... }`` block (braces counted, comments
    skipped)."""
    spans, depth, start = [], 0, -1
    clean = re.sub(r"#[^\n]*", lambda m: " " * len(m.group()), text)
    clean = re.sub(r'"[^"\n]*"', lambda m: '"' + "x" * (len(m.group()) - 2) + '"', clean)
    for m in re.finditer(r"\blayers?\s*\{|\{|\}", clean):
        tok = m.group()
        if tok != "}" and tok != "{" and depth == 0:
            start = m.start()
            depth = 1
        elif tok == "}":
            depth -= 1
            if depth == 0 and start >= 0:
                spans.append((start, m.end()))
                start = -1
        else:
            depth += 1
    return spans


@dataclass(frozen=True)
class Rewrite:
    """How to make one wild file runnable small."""

    file: str
    shape: tuple[int, ...]  # of the Input "data"
    replace_types: tuple[str, ...] = ()  # layers replaced by the Input (data layers)
    drop_types: tuple[str, ...] = ()
    subs: tuple[tuple[str, str], ...] = field(default=())  # literal (old, new), each must occur

    def text(self) -> str:
        text = (WILD / self.file).read_text(encoding="utf-8")
        for old, new in self.subs:
            if old not in text:
                raise ValueError(f"{self.file}: {old!r} not found")
            text = text.replace(old, new)
        dims = "".join(f" dim: {d}" for d in self.shape)
        new_input = (f'layer {{ name: "data" type: "Input" top: "data" '
                     f"input_param {{ shape {{{dims} }} }} }}")
        out, last, placed = [], 0, False
        for a, b in layer_blocks(text):
            block = text[a:b]
            kind = re.search(r'\btype:\s*"?([A-Za-z_]+)"?', block)
            kind_name = kind.group(1) if kind else ""
            out.append(text[last:a])
            if kind_name in self.replace_types or kind_name == "Input":
                if not placed:
                    out.append(new_input)
                    placed = True
            elif kind_name not in self.drop_types:
                out.append(block)
            last = b
        out.append(text[last:])
        text = "".join(out)
        if not placed:  # legacy input: / input_dim: fields
            text = re.sub(r"^input:.*?(?=^layer)", "", text, count=1, flags=re.S | re.M)
            text = new_input + "\n" + text
        return text

    def write(self, directory: Path) -> Path:
        path = directory / self.file
        path.write_text(self.text(), encoding="utf-8")
        return path


DEEPLAB_V2 = Rewrite("deeplab_v2_vgg16_aspp_test_val.prototxt", (1, 3, 41, 49),
                     replace_types=("ImageSegData",), drop_types=("MatWrite", "Silence"))
# CamVid's 360 x 480 pools to 23 x 30 and 45 x 60 (fixed upsample sizes); 40 x 64 to 3 x 4, 5 x 8.
SEGNET = Rewrite("segnet_inference.prototxt", (1, 3, 40, 64), replace_types=("DenseImageData",),
                 subs=(("upsample_w: 30\n    upsample_h: 23", "upsample_w: 4\n    upsample_h: 3"),
                       ("upsample_w: 60\n    upsample_h: 45", "upsample_w: 8\n    upsample_h: 5")))
SEGNET_BASIC = Rewrite("segnet_basic_inference.prototxt", (1, 3, 40, 64),
                       replace_types=("DenseImageData",))
ENET = Rewrite("enet_deploy_final.prototxt", (1, 3, 64, 96))
# 473 -> a 60 x 60 feature map pooled by 60/30/20/10; 89 -> 12 x 12 pooled by 12/6/4/2.
PSPNET = Rewrite("pspnet50_ade20k_473.prototxt", (1, 3, 89, 89), subs=(
    ("kernel_size: 60\n    stride: 60", "kernel_size: 12\n    stride: 12"),
    ("kernel_size: 30\n    stride: 30", "kernel_size: 6\n    stride: 6"),
    ("kernel_size: 20\n    stride: 20", "kernel_size: 4\n    stride: 4"),
    ("kernel_size: 10\n    stride: 10", "kernel_size: 2\n    stride: 2"),
    ("height: 60\n    width: 60", "height: 12\n    width: 12"),
))
