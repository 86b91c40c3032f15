"""``inspect --json`` works on every real public definition in tests/fixtures/wild/: a full table
where the net loads, a partial one (unknown shapes, unsupported types named) where it does not,
and the dropped layers and created inputs of train/test files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from caffe_bridge.summary import inspect_files, summary_json
from tests.helpers.wild import WILD

FILES = sorted(WILD.glob("*.prototxt")) if WILD.is_dir() else []
SHAPES_FILE = WILD / "input_shapes.json"
SHAPES = json.loads(SHAPES_FILE.read_text()) if SHAPES_FILE.is_file() else {}


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_inspect_json_works_on_every_wild_definition(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bare = summary_json(inspect_files(path))
        given = SHAPES.get(path.stem)
        shaped = summary_json(inspect_files(path, input_shapes=given)) if given else bare
    json.dumps(bare)
    assert bare["layers"] and bare["outputs"]
    if given:  # a data layer without a stated shape: unknown until given
        made = {c["name"]: c for c in bare["created_inputs"]}
        assert any(made[n]["shape_from"].startswith("unknown") for n in given if n in made)
        assert {c["name"]: c["shape"] for c in shaped["created_inputs"]
                if c["name"] in given} == {n: s for n, s in given.items() if n in made}
    for row in shaped["layers"]:
        assert row["top_shapes"] is None or all(all(d > 0 for d in s)
                                                for s in row["top_shapes"])
    unsupported = shaped["unsupported"]
    assert all(u["type"] and u["message"] for u in unsupported)
