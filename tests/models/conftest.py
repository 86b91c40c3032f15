"""Fixtures of the model tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from caffe_bridge.models import se_bn_inception
from caffe_bridge.models.senet_caffe import to_caffe


@pytest.fixture(scope="session")
def caffe_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """SE-BN-Inception (the smallest released architecture), seeded, in the released layout."""
    d = tmp_path_factory.mktemp("net")
    torch.manual_seed(0)
    model = se_bn_inception()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.normal_(0, 0.1)
    proto, weights = d / "SE-BN-Inception.prototxt", d / "SE-BN-Inception.caffemodel"
    to_caffe(model.eval(), proto, weights)
    return proto, weights
