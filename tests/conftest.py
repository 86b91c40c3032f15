"""Shared fixtures. ``tests`` is a package: the pure-numpy Caffe reference is
``tests.reference``, shared helpers live in ``tests.helpers``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Tiny ops on a loaded 2-core machine spend more time in the thread pool than computing.
torch.set_num_threads(1)

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The vendored reference definitions: ``senet/`` (the released SENets, ``nsfw_deploy``, the
    SENet validation labels) and ``zoo/`` (classic nets, ``cat.jpg``, ``synset.txt``); sources and
    licences in each folder's SOURCES.md."""
    return FIXTURES

