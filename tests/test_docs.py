"""The docs cite tests that exist: every ``tests/...py::name`` in docs/*.md and README.md names
a test function (or class) defined in that file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
DOCS = sorted([*REPO.glob("docs/*.md"), REPO / "README.md"])


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.ClassDef)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_cited_tests_exist(doc: Path) -> None:
    missing = []
    for file, name in CITATION.findall(doc.read_text(encoding="utf-8")):
        path = REPO / file
        if not path.is_file() or name not in _defined(path):
            missing.append(f"{file}::{name}")
    assert not missing, f"{doc.name} cites tests that do not exist: {missing}"
