"""The fx GraphModule: re-traceable by torch.fx, and the opt-in inference optimisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_bridge import load_net
from caffe_bridge.build import build_module, optimize_for_inference
from caffe_bridge.ir import with_weights
from caffe_bridge.random_weights import random_inputs, random_weights

NETS = ["senet/SE-ResNet-50", "senet/SE-BN-Inception", "senet/SENet-154", "zoo/mobilenet_v2_deploy",
        "zoo/densenet121_deploy", "zoo/squeezenet_v1.1_deploy"]


def _model(shared_dir, name: str):  # noqa: ANN001, ANN202
    net = load_net(shared_dir / f"{name}.prototxt")
    net = with_weights(net, random_weights(net, 0))
    x = torch.from_numpy(random_inputs(net, 1)[next(iter(net.inputs))])
    return build_module(net), x


@pytest.mark.parametrize("name", NETS)
def test_symbolic_trace_reproduces_the_model(shared_dir, name: str) -> None:  # noqa: ANN001
    """Every module in the graph is fx-traceable (e.g. Axpy takes its rank from the IR)."""
    model, x = _model(shared_dir, name)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


@pytest.mark.parametrize("name", ["senet/SE-ResNet-50", "senet/SE-BN-Inception"])
def test_optimize_for_inference_stays_within_float32_rounding(shared_dir, name: str) -> None:  # noqa: ANN001
    model, x = _model(shared_dir, name)
    fast = optimize_for_inference(model)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert n_bn > 0 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    with torch.no_grad():
        want = model(x).numpy()
        got = fast(x.contiguous(memory_format=torch.channels_last)).numpy()
    err = float(np.abs(got - want).max() / np.abs(want).max())
    assert 0 < err <= 1e-5  # folded: not bit-exact, but float32-close
