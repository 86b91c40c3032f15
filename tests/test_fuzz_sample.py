"""A seeded sample of ``scripts/fuzz.py`` (every target), and the inputs it once failed on.

The sample runs in a child process, where the fuzzer caps its address space: a regression that
allocates without bound fails there instead of exhausting the machine. The full campaign is
``python scripts/fuzz.py --target caffemodel parse load_net convert --n 10000``; the sample
seeds from a dozen definitions, wild-corpus ones among them.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from caffe_bridge.errors import CaffeBridgeError, PrototxtError, ShapeError

REPO = Path(__file__).resolve().parents[1]
FUZZ = REPO / "scripts" / "fuzz.py"
TARGETS = ("caffemodel", "parse", "load_net", "convert")
N = 200
SEED_FILES = 12  # definitions seeding the sample (fixtures, zoo, SENet, wild corpus)
SUMMARY = re.compile(r"target=(\w+) seed=\d+ inputs=(\d+) accepted=(\d+)(?: \([^)]*\))? "
                     r"rejected=(\d+) failures=(\d+)")


def _fuzz_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("caffe_bridge_fuzz_script", FUZZ)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fuzz() -> ModuleType:
    return _fuzz_module()


def test_seeded_sample_of_every_target_has_no_failure() -> None:
    proc = subprocess.run(
        [sys.executable, str(FUZZ), "--target", *TARGETS, "--n", str(N), "--seed", "0",
         "--timeout", "10", "--seed-files", str(SEED_FILES)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    report = proc.stdout + proc.stderr[-4000:]
    found = {m.group(1): tuple(int(g) for g in m.groups()[1:])
             for m in SUMMARY.finditer(proc.stdout)}
    assert set(found) == set(TARGETS), report
    for name, (inputs, accepted, rejected, failures) in found.items():
        assert inputs == N, report
        assert failures == 0, report
        assert accepted > 0 and rejected > 0, f"{name} exercises one path only:\n{report}"
        assert accepted + rejected == inputs
    assert proc.returncode == 0, report


def test_seeds_include_the_wild_corpus(fuzz: ModuleType) -> None:
    paths = fuzz.definition_paths()
    assert sum(p.parent.name == "wild" for p in paths) >= 70
    assert {"senet", "zoo"} <= {p.parent.name for p in paths}


def test_mutations_are_seeded(fuzz: ModuleType) -> None:
    import random

    seeds = fuzz.prototxt_seeds()
    a = [fuzz.mutate_text(random.Random(5), seeds) for _ in range(3)]
    b = [fuzz.mutate_text(random.Random(5), seeds) for _ in range(3)]
    assert a == b
    assert fuzz.random_net(random.Random(9)) == fuzz.random_net(random.Random(9))


# Inputs the fuzzer failed on before the fixes (each must now run, or be a clean error).
INPUT = 'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {} }} }} }}\n'


def _dims(*dims: int) -> str:
    return INPUT.format(" ".join(f"dim: {d}" for d in dims))


FOUND: dict[str, tuple[str, type[BaseException] | None]] = {
    # stride_h/stride_w on a 1-D convolution: a ValueError from zip(strict=True) in shapes.py
    "stride_w_1d": (_dims(2, 3, 6) + 'layer { name: "d" type: "Deconvolution" bottom: "data" '
                    'top: "d" convolution_param { num_output: 6 kernel_size: 1 stride_w: 2 } }',
                    ShapeError),
    # a negative BatchNorm eps: torch's batch_norm raised ValueError
    "bn_negative_eps": (_dims(1, 4, 5, 6) + 'layer { name: "bn" type: "BatchNorm" bottom: '
                        '"data" top: "bn" batch_norm_param { use_global_stats: true '
                        'eps: -1e30 } }', CaffeBridgeError),
    # batch statistics over one value per channel: torch's batch_norm raised ValueError
    "bn_single_value": (_dims(1, 4) + 'layer { name: "bn" type: "BatchNorm" bottom: "data" '
                        'top: "bn" batch_norm_param { use_global_stats: false } }',
                        CaffeBridgeError),
    # Exp with a huge shift: OverflowError from math.exp (Caffe's float exp gives inf)
    "exp_overflow": (_dims(1, 3, 4) + 'layer { name: "e" type: "Exp" bottom: "data" top: "e" '
                     'exp_param { shift: 1e30 } }', None),
    # LRN across 2**31 - 1 channels: an 8 GB channel-padded buffer was allocated
    "lrn_huge_across": (_dims(1, 2, 1, 1) + 'layer { name: "n" type: "LRN" bottom: "data" '
                        'top: "n" lrn_param { local_size: 2147483647 } }', ShapeError),
    # LRN within channel, local_size past int: RuntimeError from avg_pool2d
    "lrn_huge_within": (_dims(2, 2, 3, 10) + 'layer { name: "n" type: "LRN" bottom: "data" '
                        'top: "n" lrn_param { local_size: 4294967295 norm_region: '
                        'WITHIN_CHANNEL } }', ShapeError),
    # ArgMax of a 1-D blob: IndexError in the converter (Caffe handles it)
    "argmax_1d": (_dims(1) + 'layer { name: "a" type: "ArgMax" bottom: "data" top: "a" }', None),
    # an empty input blob: RuntimeError from torch pooling
    "zero_dim": (_dims(1, 0, 6, 2) + 'layer { name: "n" type: "LRN" bottom: "data" top: "n" '
                 'lrn_param { local_size: 1 norm_region: WITHIN_CHANNEL } }', ShapeError),
    # a pooling stride past int: RuntimeError from max_pool2d
    "pool_stride_overflow": (_dims(1, 1, 5, 5) + 'layer { name: "p" type: "Pooling" bottom: '
                             '"data" top: "p" pooling_param { pool: MAX kernel_size: 3 '
                             'stride: 2147483648 pad: 1 } }', ShapeError),
    # a huge pooling stride: its trailing window was reached by padding the input 2**31 wide
    "pool_huge_stride": (_dims(2, 3, 5, 7) + 'layer { name: "p" type: "Pooling" bottom: '
                         '"data" top: "p" pooling_param { pool: MAX kernel_size: 2 '
                         'stride: 2147483647 } }', None),
    "pool_huge_stride_ave": (_dims(1, 2, 4, 4) + 'layer { name: "p" type: "Pooling" bottom: '
                             '"data" top: "p" pooling_param { pool: AVE kernel_size: 3 '
                             'stride: 1000000 } }', None),
    # blobs over Caffe's INT_MAX values are rejected before anything is allocated
    "huge_input": (_dims(1, 3, 99999999999, 5), ShapeError),
    "huge_num_output": (_dims(1, 3, 4, 4) + 'layer { name: "ip" type: "InnerProduct" bottom: '
                        '"data" top: "ip" inner_product_param { num_output: 4294967295 } }',
                        ShapeError),
    # a zero PriorBox aspect ratio with flip: ZeroDivisionError (Caffe lists 1./0 = inf)
    "prior_box_zero_ratio": (_dims(1, 1, 2, 2) + INPUT.replace('"data"', '"img"').format(
        "dim: 1 dim: 3 dim: 8 dim: 8") + 'layer { name: "p" type: "PriorBox" bottom: "data" '
        'bottom: "img" top: "p" prior_box_param { min_size: 4 aspect_ratio: 0 flip: true } }',
        None),
    # a second Input of one blob name: the module wanted two arguments for one input
    "input_twice": (_dims(1, 2) + _dims(1, 2), ShapeError),
    "huge_deconv": (_dims(1, 1, 3, 3) + 'layer { name: "d" type: "Deconvolution" bottom: '
                    '"data" top: "d" convolution_param { num_output: 1 kernel_size: 1 '
                    'stride: 2147483647 } }', ShapeError),
}


@pytest.mark.parametrize("name", sorted(FOUND))
def test_found_input(fuzz: ModuleType, tmp_path: Path, name: str) -> None:
    text, error = FOUND[name]
    path = tmp_path / f"{name}.prototxt"
    path.write_text(text, encoding="utf-8")
    if error is not None:
        with pytest.raises(error):
            fuzz._convert_run(path)
        return
    result = fuzz._convert_run(path)
    assert result is not fuzz.SKIPPED
    fuzz._convert_oracle(text.encode(), result)


@pytest.mark.parametrize("text", [
    'name: "x"\n' + "layer { " * 10000 + "}" * 10000,
    'name: "x"\n' + "layers { layer { " * 10000,
    "input_shape { " * 100000,
])
def test_deep_nesting_is_a_prototxt_error(tmp_path: Path, text: str) -> None:
    from caffe_bridge.ir import load_net

    path = tmp_path / "deep.prototxt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PrototxtError) as err:
        load_net(path)
    assert err.value.file == str(path) and err.value.line is not None


def test_recursion_error_is_a_prototxt_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from caffe_bridge import prototxt, textparse

    def deep(*_args: object, **_kwargs: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(textparse, "parse_text", deep)
    with pytest.raises(PrototxtError, match="recursion"):
        prototxt.parse_prototxt_text('name: "x"', "deep.prototxt")
