"""The corpus of real public definitions (tests/fixtures/wild/, sources in SOURCES*.md)."""

from __future__ import annotations

import json
from pathlib import Path

WILD = Path(__file__).resolve().parents[1] / "fixtures" / "wild"
FILES = sorted(WILD.glob("*.prototxt"))
# Shapes for data layers that state none (train/test files), by file stem.
INPUT_SHAPES: dict[str, dict[str, list[int]]] = {
    k: v for k, v in json.loads((WILD / "input_shapes.json").read_text()).items()
    if not k.startswith("_")}
