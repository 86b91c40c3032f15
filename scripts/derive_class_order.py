"""Rebuild ``caffe_bridge/resources/senet_class_order.tsv`` from its three inputs.

The SENet models output their classes in ILSVRC2012 devkit order (devkit ID - 1); torchvision,
timm and ImageFolder use sorted-synset order. Joining, image by image, the validation labels in
devkit order (``ILSVRC2017_val.txt``) with the same images' WordNet IDs (a per-image WNID file,
one WNID per line for ILSVRC2012_val_00000001.JPEG, ..._00000002.JPEG, ...) gives devkit label ->
WNID; the WNID's line in the sorted synset list (``synset.txt``) is its sorted index. Every line
read is checked: one label always maps to the same WNID and one WNID to one label, every WNID is
one of the 1000 synsets, and the 1000 classes end up a permutation. See
``caffe_bridge/resources/CLASS_ORDER.md`` for the source of the per-image file.

    python scripts/derive_class_order.py VAL_WNIDS.txt [--check]

A prefix of the per-image file is enough once it has shown all 1000 classes (the first 4,971
validation images do).
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
OUT = ROOT / "caffe_bridge" / "resources" / "senet_class_order.tsv"
CLASSES = 1000
HEADER = "senet_index\twnid\tsorted_index\tname"
_WNID = re.compile(r"n\d{8}")


class DerivationError(Exception):
    """An input contradicts itself or another input."""


def read_synsets(path: Path) -> list[tuple[str, str]]:
    """``synset.txt``: one ``wnid name`` per line (optionally quoted), in sorted order."""
    out = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip().strip("'\"").strip()
        if not line:
            continue
        wnid, _, name = line.partition(" ")
        if not _WNID.fullmatch(wnid):
            raise DerivationError(f"{path}:{n}: not a WordNet ID: {wnid!r}")
        out.append((wnid, name.strip()))
    if len(out) != CLASSES or [w for w, _ in out] != sorted(w for w, _ in out):
        raise DerivationError(f"{path}: expected {CLASSES} WNIDs in sorted order")
    return out


def read_val_labels(path: Path) -> list[int]:
    """``ILSVRC2017_val.txt`` (or its ``.gz``): ``ILSVRC2012_val_<8 digits>.JPEG <devkit label>``,
    image i on line i."""
    labels = []
    text = (gzip.decompress(path.read_bytes()).decode("utf-8") if path.suffix == ".gz"
            else path.read_text(encoding="utf-8"))
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        image, label = raw.split()
        if image != f"ILSVRC2012_val_{n:08d}.JPEG":
            raise DerivationError(f"{path}:{n}: expected image {n}, found {image!r}")
        labels.append(int(label))
    return labels


def read_val_wnids(path: Path) -> list[str]:
    """The per-image WNID file: one WNID per line, image i on line i."""
    wnids = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        wnid = raw.strip()
        if not _WNID.fullmatch(wnid):
            raise DerivationError(f"{path}:{n}: not a WordNet ID: {wnid!r}")
        wnids.append(wnid)
    return wnids


def derive(
    val_wnids: list[str], val_labels: list[int], synsets: list[tuple[str, str]]
) -> list[tuple[int, str, int, str]]:
    """Rows ``(senet_index, wnid, sorted_index, name)`` for the 1000 classes, by senet_index."""
    if len(val_wnids) > len(val_labels):
        raise DerivationError(
            f"{len(val_wnids)} per-image WNIDs but only {len(val_labels)} labelled images"
        )
    sorted_index = {w: i for i, (w, _) in enumerate(synsets)}
    label_to_wnid: dict[int, str] = {}
    wnid_to_label: dict[str, int] = {}
    for n, (wnid, label) in enumerate(zip(val_wnids, val_labels, strict=False), start=1):
        if wnid not in sorted_index:
            raise DerivationError(f"image {n}: {wnid} is not one of the {CLASSES} synsets")
        if not 0 <= label < CLASSES:
            raise DerivationError(f"image {n}: label {label} is outside 0..{CLASSES - 1}")
        if label_to_wnid.setdefault(label, wnid) != wnid:
            raise DerivationError(
                f"image {n}: label {label} is {wnid} here but {label_to_wnid[label]} before"
            )
        if wnid_to_label.setdefault(wnid, label) != label:
            raise DerivationError(
                f"image {n}: {wnid} has label {label} here but {wnid_to_label[wnid]} before"
            )
    missing = sorted(set(range(CLASSES)) - set(label_to_wnid))
    if missing:
        raise DerivationError(
            f"{len(missing)} classes never seen in the {len(val_wnids)} images read "
            f"(first: {missing[:5]}); use more lines of the per-image file"
        )
    rows = []
    for k in range(CLASSES):
        wnid = label_to_wnid[k]
        rows.append((k, wnid, sorted_index[wnid], synsets[sorted_index[wnid]][1]))
    return rows


def render(rows: list[tuple[int, str, int, str]]) -> str:
    return "\n".join([HEADER, *(f"{k}\t{w}\t{s}\t{name}" for k, w, s, name in rows)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("val_wnids", type=Path, help="per-image WNID file (one WNID per line)")
    p.add_argument("--val-labels", type=Path, default=FIXTURES / "senet" / "ILSVRC2017_val.txt.gz",
                   help="validation labels in devkit order (default: %(default)s)")
    p.add_argument("--synsets", type=Path, default=FIXTURES / "zoo" / "synset.txt",
                   help="the 1000 synsets in sorted order (default: %(default)s)")
    p.add_argument("--out", type=Path, default=OUT, help="table to write (default: %(default)s)")
    p.add_argument("--check", action="store_true",
                   help="compare with --out instead of writing; exit 1 if it differs")
    args = p.parse_args(argv)
    try:
        wnids = read_val_wnids(args.val_wnids)
        rows = derive(wnids, read_val_labels(args.val_labels), read_synsets(args.synsets))
    except (DerivationError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = render(rows)
    fixed = sum(1 for k, _, s, _ in rows if k == s)
    print(f"{len(wnids)} images read, {CLASSES} classes, consistent; "
          f"{fixed} classes keep their index", file=sys.stderr)
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'identical' if same else 'DIFFERS'}", file=sys.stderr)
        return 0 if same else 1
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
