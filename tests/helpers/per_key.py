"""Results computed once per key for a test module (whole-net comparisons are expensive)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def computed_once(compute: Callable[[str, Path], T],
                  tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], T]:
    """key -> ``compute(key, a fresh temporary folder)``, run on first use and kept."""
    cache: dict[str, T] = {}

    def get(key: str) -> T:
        if key not in cache:
            cache[key] = compute(key, tmp_path_factory.mktemp(key))
        return cache[key]

    return get
