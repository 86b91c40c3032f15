"""The SENet (devkit) <-> torchvision (sorted synset) class-order table and its uses."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from caffe_bridge import CaffeBridgeError
from caffe_bridge.models import class_order as co
from caffe_bridge.models import senet as S
from caffe_bridge.models.senet_caffe import from_caffe, to_caffe

ROOT = Path(__file__).resolve().parents[2]

# --- the packaged table (no label files needed) -------------------------------------------------


def test_is_a_permutation() -> None:
    p, q = co.senet_to_sorted(), co.sorted_to_senet()
    assert p.dtype == q.dtype == np.int64 and p.shape == q.shape == (co.CLASSES,)
    assert np.array_equal(np.sort(p), np.arange(co.CLASSES))
    assert np.array_equal(p[q], np.arange(co.CLASSES)) and np.array_equal(q[p], np.arange(1000))
    assert not np.any(p == np.arange(co.CLASSES))  # not one class keeps its index


@pytest.mark.parametrize(
    ("senet", "wnid", "sorted_index", "name"),
    [
        pytest.param(0, "n02119789", 278, "kit fox", id="class0-kit-fox"),
        pytest.param(489, "n01751748", 65, "sea snake", id="first-val-image"),
        pytest.param(1, "n02100735", 212, "English setter", id="class1-english-setter"),
    ],
)
def test_known_classes(senet: int, wnid: str, sorted_index: int, name: str) -> None:
    assert co.senet_to_sorted()[senet] == sorted_index
    assert co.sorted_to_senet()[sorted_index] == senet
    assert co.wnids("caffe")[senet] == wnid == co.wnids("torchvision")[sorted_index]
    assert co.names("caffe")[senet].startswith(name)
    assert co.names("torchvision")[sorted_index] == co.names("caffe")[senet]


def test_sorted_order_is_sorted_wnids() -> None:
    assert co.wnids("torchvision") == sorted(co.wnids("caffe"))
    assert [co.wnids("caffe")[k] for k in co.sorted_to_senet()] == co.wnids("torchvision")


def test_results_are_copies() -> None:
    co.senet_to_sorted()[0] = -1
    co.wnids()[0] = "x"
    assert co.senet_to_sorted()[0] == 278 and co.wnids()[0] == "n02119789"


def test_unknown_order() -> None:
    with pytest.raises(CaffeBridgeError, match="class order"):
        co.wnids("sorted")


def test_table_ships_with_its_documentation() -> None:
    res = ROOT / "caffe_bridge" / "resources"
    doc = (res / "CLASS_ORDER.md").read_text(encoding="utf-8")
    assert "tensorflow/models" in doc and "derive_class_order.py" in doc
    assert (res / "senet_class_order.tsv").read_text(encoding="utf-8").count("\n") == 1001


# --- against the vendored label files (tests/fixtures) --------------------------------------------


def _shared_tables(shared_dir: Path) -> tuple[list[int], list[str]]:
    labels = _derive_script().read_val_labels(shared_dir / "senet" / "ILSVRC2017_val.txt.gz")
    synsets = [line.strip().strip("'").split()[0] for line in
               (shared_dir / "zoo" / "synset.txt").read_text().splitlines() if line.strip()]
    return labels, synsets


def test_first_val_image(shared_dir: Path) -> None:
    labels, synsets = _shared_tables(shared_dir)
    assert labels[0] == 489
    assert co.senet_to_sorted()[labels[0]] == 65
    assert synsets == co.wnids("torchvision")  # line i of synset.txt = sorted class i


def _derive_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("derive_class_order",
                                                  ROOT / "scripts" / "derive_class_order.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_derivation_reproduces_table(shared_dir: Path) -> None:
    """Per-image WNIDs made from the table itself: the script must give the table back."""
    d = _derive_script()
    labels = d.read_val_labels(shared_dir / "senet" / "ILSVRC2017_val.txt.gz")
    synsets = d.read_synsets(shared_dir / "zoo" / "synset.txt")
    per_image = [co.wnids()[k] for k in labels[:5000]]
    rows = d.derive(per_image, labels, synsets)
    text = (ROOT / "caffe_bridge" / "resources" / "senet_class_order.tsv").read_text("utf-8")
    assert d.render(rows) == text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(lambda w: w[:4000], "never seen", id="too-few-lines"),
        pytest.param(lambda w: [w[1], *w[1:]], "before", id="label-meets-two-wnids"),
        pytest.param(lambda w: ["n99999999", *w[1:]], "not one of", id="unknown-wnid"),
    ],
)
def test_derivation_checks_every_line(
    edit: Callable[[list[str]], list[str]], message: str, shared_dir: Path
) -> None:
    d = _derive_script()
    labels = d.read_val_labels(shared_dir / "senet" / "ILSVRC2017_val.txt.gz")
    synsets = d.read_synsets(shared_dir / "zoo" / "synset.txt")
    per_image = [co.wnids()[k] for k in labels[:5000]]
    with pytest.raises(d.DerivationError, match=message):
        d.derive(edit(per_image), labels, synsets)


# --- from_caffe(class_order="torchvision") --------------------------------------------------------


def test_from_caffe_torchvision_order(tmp_path: Path) -> None:
    """Outputs are exactly the Caffe-order outputs, permuted to sorted order."""
    torch.manual_seed(3)
    proto, weights = tmp_path / "n.prototxt", tmp_path / "n.caffemodel"
    to_caffe(S.se_bn_inception().eval(), proto, weights)
    caffe = from_caffe(proto, weights)
    tv = from_caffe(proto, weights, class_order="torchvision")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = caffe(x), tv(x)
    q = torch.from_numpy(co.sorted_to_senet())
    torch.testing.assert_close(b, a[:, q], rtol=0, atol=0)
    # the kit fox logit moves from column 0 to column 278
    torch.testing.assert_close(b[:, 278], a[:, 0], rtol=0, atol=0)
    assert set(tv.state_dict()) == set(caffe.state_dict())


def test_from_caffe_torchvision_order_needs_1000_classes(tmp_path: Path) -> None:
    proto, weights = tmp_path / "n.prototxt", tmp_path / "n.caffemodel"
    to_caffe(S.se_resnet50(num_classes=10).eval(), proto, weights)
    with pytest.raises(CaffeBridgeError, match="1000"):
        from_caffe(proto, weights, class_order="torchvision")
