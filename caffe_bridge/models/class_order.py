"""The two ImageNet class orders: SENet's (ILSVRC2012 devkit) and torchvision's (sorted synsets).

The released SENet models output class ``k`` = ILSVRC2012 devkit ID ``k + 1`` (class 0 is
n02119789, kit fox); torchvision, timm and ``ImageFolder`` use sorted-synset order (kit fox is
278). The mapping is package data (``caffe_bridge/resources/senet_class_order.tsv``; its
derivation is in ``CLASS_ORDER.md`` beside it). Order names: ``"caffe"`` (SENet / devkit) and
``"torchvision"`` (sorted).

To score SENet logits against sorted-order labels, take ``logits[:, sorted_to_senet()]``
(column ``j`` = SENet class ``sorted_to_senet()[j]``, the class of sorted index ``j``).
"""

from __future__ import annotations

import functools
import re
from importlib import resources

import numpy as np

from caffe_bridge.errors import CaffeBridgeError

__all__ = ["CLASSES", "ORDERS", "names", "senet_to_sorted", "sorted_to_senet", "wnids"]

CLASSES = 1000
ORDERS = ("caffe", "torchvision")
_TABLE = "senet_class_order.tsv"
_HEADER = ["senet_index", "wnid", "sorted_index", "name"]
_WNID = re.compile(r"n\d{8}")


@functools.cache
def _table() -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    """(wnids, names) in SENet order, and SENet index -> sorted index; validated once."""
    where = f"caffe_bridge/resources/{_TABLE}"
    try:
        text = resources.files("caffe_bridge.resources").joinpath(_TABLE).read_text("utf-8")
    except OSError as err:
        raise CaffeBridgeError(f"cannot read the class-order table: {err}", file=where) from None
    lines = text.splitlines()
    if not lines or lines[0].split("\t") != _HEADER:
        raise CaffeBridgeError(f"header must be {' '.join(_HEADER)}", file=where, line=1)
    wnid_list, name_list, to_sorted = [], [], []
    for n, line in enumerate(lines[1:], start=2):
        cols = line.split("\t")
        if (
            len(cols) != 4
            or cols[0] != str(n - 2)
            or not _WNID.fullmatch(cols[1])
            or not cols[2].isdigit()
        ):
            raise CaffeBridgeError("malformed row", file=where, line=n)
        wnid_list.append(cols[1])
        to_sorted.append(int(cols[2]))
        name_list.append(cols[3])
    perm = np.asarray(to_sorted, dtype=np.int64)
    if len(perm) != CLASSES or not np.array_equal(np.sort(perm), np.arange(CLASSES)):
        raise CaffeBridgeError(f"sorted_index is not a permutation of 0..{CLASSES - 1}", file=where)
    # The sorted index of a WNID is its rank among the 1000 WNIDs: the table must agree.
    if not np.array_equal(perm, np.argsort(np.argsort(np.asarray(wnid_list)))):
        raise CaffeBridgeError("sorted_index disagrees with the WNIDs' sorted order", file=where)
    perm.setflags(write=False)
    return tuple(wnid_list), tuple(name_list), perm


def senet_to_sorted() -> np.ndarray:
    """Permutation ``p`` (int64, 1000): SENet class ``k`` is sorted-order class ``p[k]``."""
    return _table()[2].copy()


def sorted_to_senet() -> np.ndarray:
    """Inverse permutation ``q``: sorted-order class ``j`` is SENet class ``q[j]``.

    ``logits[:, q]`` reorders SENet logits to sorted (torchvision) order; it is also the
    ``class_order`` that ``from_caffe(..., class_order="torchvision")`` applies.
    """
    return np.argsort(_table()[2]).astype(np.int64)


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise CaffeBridgeError(f"class order must be one of {', '.join(ORDERS)}, not {order!r}")


def wnids(order: str = "caffe") -> list[str]:
    """The 1000 WordNet IDs in ``order`` (``"caffe"``: SENet/devkit, ``"torchvision"``: sorted)."""
    _check_order(order)
    ids = list(_table()[0])
    return ids if order == "caffe" else sorted(ids)


def names(order: str = "caffe") -> list[str]:
    """The 1000 class names (``"kit fox, Vulpes macrotis"``, ...) in ``order``."""
    _check_order(order)
    all_names = list(_table()[1])
    return all_names if order == "caffe" else [all_names[k] for k in sorted_to_senet()]
