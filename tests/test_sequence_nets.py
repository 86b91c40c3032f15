"""Whole OCR nets that OpenCV refuses, against the numpy reference with seeded weights:
jolibrain's CRNN (captcha) and CTPN's deploy definition (tests/fixtures/wild/SOURCES-seq.md).

CRNN runs as published, and once more with its `Permute` (SSD fork) spelled as the identical
OCR-fork `Transpose`; CTPN's input is shrunk (VGG-16 at 600 x 900 is slow in numpy).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from caffe_bridge.build import build_module
from caffe_bridge.ir import Net, build_net, with_weights
from caffe_bridge.numeric import rel_err
from caffe_bridge.prototxt import parse_prototxt_text
from caffe_bridge.random_weights import random_inputs, random_weights
from caffe_bridge.upgrade import upgrade
from tests import reference
from tests.helpers.wild import WILD


def net_of(text: str, name: str) -> Net:
    parsed = parse_prototxt_text(text, name)
    return build_net(upgrade(parsed), name=parsed.net.name, source=name)


def run_all(net: Net, seed: int, **fixed: np.ndarray) -> dict[str, float]:
    """Relative max error of every net output (ours float32 vs the float64 reference);
    ``fixed`` inputs replace the random ones."""
    net = with_weights(net, random_weights(net, seed))
    feeds = {**random_inputs(net, seed + 1), **fixed}
    ref = reference.run_net(net, feeds)
    model = build_module(net)
    with torch.no_grad():
        out = model(*(torch.from_numpy(feeds[n]) for n in net.inputs))
    outs = out if isinstance(out, tuple) else (out,)
    errors = {}
    for value, tensor in zip(net.outputs, outs, strict=True):
        assert tensor.shape == net.blobs[value].shape
        errors[value] = rel_err(tensor.numpy().astype(np.float64), ref[value])
    return errors


def crnn_text() -> str:
    """jolibrain's CRNN deploy with its Permute (order 2 0 1) spelled as Transpose (dim 2 0 1)."""
    text = (WILD / "crnn_jolibrain_deploy.prototxt").read_text()
    text, n = re.subn(r'type: "Permute"(\s*)bottom: "reshape"(\s*)top: "permuted_data"(\s*)'
                      r"permute_param \{\s*order: 2\s*order: 0\s*order: 1\s*\}",
                      r'type: "Transpose"\1bottom: "reshape"\2top: "permuted_data"\3'
                      r"transpose_param { dim: 2 dim: 0 dim: 1 }", text)
    assert n == 1
    return text


def test_crnn_matches_reference() -> None:
    net = net_of(crnn_text(), "crnn_jolibrain_deploy.prototxt (Permute -> Transpose)")
    assert [layer.type for layer in net.layers].count("LSTM") == 2
    assert net.blobs[net.value("indicator")].shape == (32, 1)
    errors = run_all(net, 0)
    assert net.outputs == ("probs",)
    assert max(errors.values()) < 1e-5, errors


def test_crnn_unchanged_file_matches_reference() -> None:
    """The file as published (its Permute converted by the SSD layers)."""
    net = net_of((WILD / "crnn_jolibrain_deploy.prototxt").read_text(), "crnn")
    errors = run_all(net, 0)
    assert max(errors.values()) < 1e-5, errors


def ctpn_text(height: int = 48, width: int = 80) -> str:
    """CTPN's deploy with a small input (VGG-16 at 600 x 900 is slow in numpy)."""
    text = (WILD / "ctpn_deploy.prototxt").read_text()
    text, n = re.subn(r"dim: 600\s*dim: 900", f"dim: {height}\n    dim: {width}", text)
    assert n == 1
    return text


@pytest.mark.slow
def test_ctpn_matches_reference() -> None:
    """VGG-16, Im2col, the row-wise BLSTM (Lstm, Reverse), and the Python text proposals."""
    net = net_of(ctpn_text(), "ctpn_deploy.prototxt (small input)")
    types = [layer.type for layer in net.layers]
    assert types.count("Lstm") == 2 and types.count("Reverse") == 2
    assert types.count("Transpose") == 2 and "Im2col" in types and "Python" in types
    # T = feature width 5, N = feature rows 3: the streams are the rows
    assert net.blobs[net.value("lstm_input")].shape == (5, 3, 512 * 9)
    assert set(net.outputs) == {"rois", "scores"}
    assert net.blobs["rois"].shape == (3 * 5 * 10, 4)
    im_info = np.array([[40.0, 70.0, 1.0]], np.float32)  # clips some boxes
    errors = run_all(net, 0, im_info=im_info)
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("which", ["crnn", "ctpn"])
def test_nets_retrace_with_torch_fx(which: str) -> None:
    """symbolic_trace of the whole converted net (time loops unrolled) gives the same outputs."""
    text = crnn_text() if which == "crnn" else ctpn_text()
    net = net_of(text, which)
    net = with_weights(net, random_weights(net, 3))
    model = build_module(net)
    traced = torch.fx.symbolic_trace(model)
    args = [torch.from_numpy(v) for v in random_inputs(net, 4).values()]
    with torch.no_grad():
        a, b = model(*args), traced(*args)
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,),
                    strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.slow
def test_crnn_exports_to_onnx(tmp_path: Path) -> None:
    """The unrolled LSTMs export: ONNX Runtime agrees with PyTorch. Static batch: CRNN's
    Reshape states batch 1 (and T is fixed at conversion, as in Caffe)."""
    from caffe_bridge.export import export_net

    net = net_of(crnn_text(), "crnn")
    net = with_weights(net, random_weights(net, 0))
    (result,) = export_net(net, onnx=tmp_path / "crnn.onnx", dynamic_batch=False)
    assert result.max_rel_err < 1e-5


def test_captcha_lstm_as_published() -> None:
    """jolibrain's two-LSTM captcha reader: x is 128 steps of 3 x 32 image columns."""
    net = net_of((WILD / "lstm_ctc_jolibrain_deploy.prototxt").read_text(), "lstm_ctc")
    assert net.blobs[net.value("indicator")].shape == (128, 1)
    errors = run_all(net, 0)
    assert max(errors.values()) < 1e-5, errors
