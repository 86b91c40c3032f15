"""Shared fixtures. ``tests/`` is on sys.path (pytest's rootdir conftest), so tests may
``import reference`` (the pure-numpy Caffe reference) and ``import layer_check``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tiny ops on a loaded 2-core machine spend more time in the thread pool than computing.
torch.set_num_threads(1)

# ../shared beside the checkout, or wherever CAFFE_BRIDGE_SHARED points (a git worktree).
SHARED = Path(os.environ.get("CAFFE_BRIDGE_SHARED")
              or Path(__file__).resolve().parents[1].parent / "shared")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout (released definitions); skip where it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared (released SENet and zoo definitions) is not beside this checkout")
    return SHARED
