"""``caffe2torch eval`` on a tiny val set whose answers are known exactly; torchrun; SENet table.

The tiny net is Input -> global AVE Pooling -> InnerProduct. Every image is one solid colour, so
after any resize and crop the pooled vector is exactly ``(colour - mean) * scale``; the
InnerProduct scores class ``k`` as ``2 c_k . x - |c_k|^2`` (= ``|x|^2 - |x - c_k|^2``), so the
ranking of the classes is the ranking of the prototypes ``c_k`` by distance to ``x``. All values
are small integers (or halves), so the net computes them without rounding.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from caffe_bridge import schema, write_caffemodel
from caffe_bridge.build import convert
from caffe_bridge.data import ImageDataset, Sample, make_preprocess
from caffe_bridge.evaluate import EvalError, evaluate
from caffe_bridge.evaluate_cli import _published_lines, eval_command
from caffe_bridge.ir import load_net
from caffe_bridge.published import PUBLISHED, published_for, structure_fingerprint

cv2 = pytest.importorskip("cv2")

REPO = Path(__file__).resolve().parents[1]
CLASSES = 8
RESIZE, CROP = 9, 8
MEAN = (10.0, 20.0, 30.0)
# (height, width) of the 7 images: portrait, landscape, square, smaller than the crop, ...
SIZES = [(12, 20), (20, 12), (9, 9), (5, 6), (30, 17), (8, 11), (13, 13)]
# Where each image's label sits in its true ranking (with MEAN, scale 1, BGR): 0 = top-1.
RANKS = [0, 0, 1, 4, 5, 7, 0]
TIMING = {"seconds", "images_per_s", "world_size"}

PROTOTXT = """name: "colours"
layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: 1 dim: 3 dim: {crop} dim: {crop} }} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param {{ pool: AVE global_pooling: true }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param {{ num_output: {classes} }} }}
"""


@dataclass(frozen=True)
class TinySet:
    root: Path  # images, listed by labels.txt
    labels: Path
    tree: Path  # the same images as an ImageFolder tree
    prototxt: Path
    caffemodel: Path
    prototypes: np.ndarray  # CLASSES x 3, in the net's input channel order
    colours: np.ndarray  # N x 3, B, G, R
    targets: np.ndarray  # N labels


def scores(prototypes: np.ndarray, x: np.ndarray) -> np.ndarray:
    return 2.0 * prototypes @ x - (prototypes**2).sum(axis=1)


def write_net(folder: Path, prototypes: np.ndarray, name: str = "net") -> tuple[Path, Path]:
    prototxt = folder / f"{name}.prototxt"
    prototxt.write_text(PROTOTXT.format(crop=CROP, classes=len(prototypes)), encoding="utf-8")
    caffemodel = folder / f"{name}.caffemodel"
    weights = [(2.0 * prototypes).astype(np.float32),
               (-(prototypes**2).sum(axis=1)).astype(np.float32)]
    write_caffemodel(caffemodel, {"fc": weights})
    return prototxt, caffemodel


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinySet:
    rng = np.random.default_rng(2024)
    base = tmp_path_factory.mktemp("tiny")
    prototypes = rng.integers(-60, 60, (CLASSES, 3)).astype(np.float64)
    colours = rng.integers(0, 256, (len(SIZES), 3))
    targets = []
    root, tree = base / "val", base / "tree"
    lines = []
    for i, ((h, w), colour, rank) in enumerate(zip(SIZES, colours, RANKS, strict=True)):
        s = scores(prototypes, colour - np.asarray(MEAN))
        assert len(set(s.tolist())) == CLASSES  # no ties: the answer is unique
        label = int(np.argsort(-s, kind="stable")[rank])
        targets.append(label)
        img = np.empty((h, w, 3), np.uint8)
        img[:] = colour.astype(np.uint8)
        rel = f"sub dir/img {i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / rel), img)
        lines.append(f"{rel} {label}")
        (tree / f"class{label}").mkdir(parents=True, exist_ok=True)
        shutil.copy(root / rel, tree / f"class{label}" / f"img{i}.png")
    for k in range(CLASSES):  # every class has a directory (sorted names -> index k)
        (tree / f"class{k}").mkdir(parents=True, exist_ok=True)
        if not any((tree / f"class{k}").iterdir()):
            shutil.copy(root / "sub dir" / "img 0.png", tree / f"class{k}" / "extra.png")
    labels = base / "labels.txt"
    labels.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prototxt, caffemodel = write_net(base, prototypes)
    return TinySet(root, labels, tree, prototxt, caffemodel, prototypes, colours,
                   np.asarray(targets))


def expected(prototypes: np.ndarray, colours: np.ndarray, targets: np.ndarray,
             mean: tuple[float, float, float] = MEAN, scale: float = 1.0, rgb: bool = False,
             limit: int | None = None) -> tuple[int, int, int]:
    """(correct top-1, correct top-5, count) computed in plain numpy."""
    c1 = c5 = 0
    n = len(targets) if limit is None else min(limit, len(targets))
    for colour, label in zip(colours[:n], targets[:n], strict=True):
        x = (colour - np.asarray(mean)) * scale
        order = np.argsort(-scores(prototypes, x[::-1] if rgb else x), kind="stable")
        c1 += int(order[0] == label)
        c5 += int(label in order[:5])
    return c1, c5, n


def folder_targets(tiny: TinySet) -> tuple[np.ndarray, np.ndarray]:
    """Colours and labels of the ImageFolder tree, in its (sorted) order."""
    colours, targets = [], []
    for k in range(CLASSES):
        for file in sorted((tiny.tree / f"class{k}").iterdir()):
            colours.append(cv2.imread(str(file))[0, 0].astype(np.int64))
            targets.append(k)
    return np.asarray(colours), np.asarray(targets)


def run_eval(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(eval_command, args, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def accuracy_lines(c1: int, c5: int, n: int) -> list[str]:
    return [f"images      {n}", f"top-1       {100 * c1 / n:.3f} %",
            f"top-5       {100 * c5 / n:.3f} %"]


def base_args(tiny: TinySet) -> list[str]:
    return [str(tiny.prototxt), str(tiny.caffemodel), "--val-dir", str(tiny.root), "--labels",
            str(tiny.labels), "--resize", str(RESIZE), "--crop", str(CROP), "--device", "cpu"]


def test_the_tiny_set_is_informative(tiny: TinySet) -> None:
    c1, c5, n = expected(tiny.prototypes, tiny.colours, tiny.targets)
    assert (c1, c5, n) == (3, 5, 7)  # neither 0 % nor 100 %, count not divisible by 2


CASES = {
    "mean-values": ["--mean", "10,20,30"],
    "workers-2": ["--mean", "10,20,30", "--workers", "2", "--batch-size", "3"],
    "batch-1": ["--mean", "10,20,30", "--batch-size", "1", "--workers", "0"],
    "limit-4": ["--mean", "10,20,30", "--limit", "4"],
    "scale-half": ["--mean", "10,20,30", "--scale", "0.5"],
    "no-mean": [],
    "rgb": ["--mean", "10,20,30", "--channel-order", "rgb", "--workers", "2"],
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_eval_prints_the_exact_accuracy(tiny: TinySet, case: str) -> None:
    extra = CASES[case]
    code, out, err = run_eval([*base_args(tiny), "--workers", "0", *extra])
    assert code == 0, err
    mean = MEAN if "--mean" in extra else (0.0, 0.0, 0.0)
    scale = float(extra[extra.index("--scale") + 1]) if "--scale" in extra else 1.0
    limit = int(extra[extra.index("--limit") + 1]) if "--limit" in extra else None
    want = expected(tiny.prototypes, tiny.colours, tiny.targets, mean, scale,
                    rgb="rgb" in extra, limit=limit)
    for line in accuracy_lines(*want):
        assert line in out.splitlines()
    assert "published" not in out


def test_eval_mean_file_centre_cropped(tiny: TinySet, tmp_path: Path) -> None:
    # The centre 8x8 holds MEAN; the border holds values that would change every answer.
    mean = np.full((3, 12, 14), 250.0, np.float32)
    mean[:, 2:10, 3:11] = np.asarray(MEAN, np.float32)[:, None, None]
    blob = schema.BlobProto()
    blob.shape.dim.extend([1, 3, 12, 14])
    blob.data.extend(mean.ravel().tolist())
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(blob.SerializeToString())
    code, out, err = run_eval([*base_args(tiny), "--mean-file", str(path), "--workers", "0"])
    assert code == 0, err
    for line in accuracy_lines(*expected(tiny.prototypes, tiny.colours, tiny.targets)):
        assert line in out.splitlines()


@pytest.mark.parametrize("workers", [0, 2], ids=["workers-0", "workers-2"])
def test_eval_image_folder(tiny: TinySet, workers: int) -> None:
    args = [str(tiny.prototxt), str(tiny.caffemodel), "--val-dir", str(tiny.tree), "--resize",
            str(RESIZE), "--crop", str(CROP), "--mean", "10,20,30", "--workers", str(workers),
            "--device", "cpu"]
    code, out, err = run_eval(args)
    assert code == 0, err
    colours, targets = folder_targets(tiny)
    for line in accuracy_lines(*expected(tiny.prototypes, colours, targets)):
        assert line in out.splitlines()


def test_topk_above_class_count_is_full(tiny: TinySet, tmp_path: Path) -> None:
    prototypes = np.asarray([[40.0, 0, 0], [0, 40, 0], [0, 0, 40]])
    prototxt, caffemodel = write_net(tmp_path, prototypes, "three")
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"sub dir/img {i}.png {i % 3}\n" for i in range(7)))
    code, out, err = run_eval([str(prototxt), str(caffemodel), "--val-dir", str(tiny.root),
                               "--labels", str(labels), "--resize", str(RESIZE), "--crop",
                               str(CROP), "--mean", "10,20,30", "--device", "cpu"])
    assert code == 0, err
    c1, _, n = expected(prototypes, tiny.colours, np.arange(7) % 3)
    assert accuracy_lines(c1, n, n) == [x for x in out.splitlines() if x[:6] in
                                        ("images", "top-1 ", "top-5 ") and "/s" not in x]


def test_class_order_torchvision(tiny: TinySet, tmp_path: Path) -> None:
    """Devkit-order outputs scored against sorted-synset labels through the packaged mapping."""
    from caffe_bridge.models.class_order import senet_to_sorted

    rng = np.random.default_rng(11)
    prototypes = rng.integers(-1000, 1000, (1000, 3)).astype(np.float64)
    prototxt, caffemodel = write_net(tmp_path, prototypes, "thousand")
    devkit = []
    for colour, rank in zip(tiny.colours, RANKS, strict=True):
        s = scores(prototypes, colour - np.asarray(MEAN))
        devkit.append(int(np.argsort(-s, kind="stable")[rank]))
    sorted_labels = senet_to_sorted()[devkit]
    assert not np.array_equal(sorted_labels, devkit)
    names = [f"sub dir/img {i}.png" for i in range(len(devkit))]
    results = {}
    for order, labels in [("caffe", devkit), ("torchvision", sorted_labels),
                          ("wrong", sorted_labels)]:
        path = tmp_path / f"{order}.txt"
        path.write_text("".join(f"{n} {k}\n" for n, k in zip(names, labels, strict=True)))
        args = [str(prototxt), str(caffemodel), "--val-dir", str(tiny.root), "--labels",
                str(path), "--resize", str(RESIZE), "--crop", str(CROP), "--mean", "10,20,30",
                "--device", "cpu", "--workers", "0",
                "--class-order", "caffe" if order == "wrong" else order]
        code, out, err = run_eval(args)
        assert code == 0, err
        assert ("assumes the net outputs the ILSVRC2012 devkit order" in err) == \
            (order == "torchvision")
        results[order] = [x for x in out.splitlines() if x.startswith("top-")]
    want = accuracy_lines(*expected(prototypes, tiny.colours, np.asarray(devkit)))[1:]
    assert results["caffe"] == results["torchvision"] == want
    assert results["wrong"] != want


def test_class_order_torchvision_needs_1000_classes(tiny: TinySet) -> None:
    code, _, err = run_eval([*base_args(tiny), "--class-order", "torchvision"])
    assert code == 2 and "error: --class-order torchvision maps the 1000 ImageNet classes; " \
        "the net has 8" in err


def test_eval_json(tiny: TinySet, tmp_path: Path) -> None:
    out_json = tmp_path / "result.json"
    code, _, err = run_eval([*base_args(tiny), "--mean", "10,20,30", "--json", str(out_json)])
    assert code == 0, err
    got = json.loads(out_json.read_text())
    c1, c5, n = expected(tiny.prototypes, tiny.colours, tiny.targets)
    assert {k: got[k] for k in ("correct1", "correct5", "count", "world_size")} == {
        "correct1": c1, "correct5": c5, "count": n, "world_size": 1}
    assert got["top1"] == 100 * c1 / n and got["top5"] == 100 * c5 / n
    assert got["images_per_s"] > 0 and got["published"] is None
    assert got["preprocess"] == {"resize": RESIZE, "crop": CROP, "channel_order": "bgr",
                                 "scale": None, "mean_file": None, "mean": list(MEAN)}


@pytest.mark.parametrize("limit", [None, 5], ids=["all-7", "limit-5"])
def test_torchrun_two_processes_equal_one(tiny: TinySet, tmp_path: Path, limit: int | None
                                          ) -> None:
    extra = ["--mean", "10,20,30", "--batch-size", "2", "--workers", "1"]
    if limit:
        extra += ["--limit", str(limit)]
    single = tmp_path / "single.json"
    code, _, err = run_eval([*base_args(tiny), *extra, "--json", str(single)])
    assert code == 0, err
    multi = tmp_path / "multi.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "caffe_bridge.evaluate", *base_args(tiny), *extra, "--json", str(multi)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = json.loads(single.read_text()), json.loads(multi.read_text())
    assert two["world_size"] == 2 and one["count"] % 2 == 1
    assert {k: v for k, v in two.items() if k not in TIMING} == \
        {k: v for k, v in one.items() if k not in TIMING}
    lines = proc.stdout.splitlines()
    for line in accuracy_lines(one["correct1"], one["correct5"], one["count"]):
        assert lines.count(line) == 1  # printed once, by rank 0


def test_torchrun_reports_a_bad_image_of_one_shard(tiny: TinySet, tmp_path: Path) -> None:
    root = tmp_path / "val"
    shutil.copytree(tiny.root, root)
    (root / "sub dir" / "img 3.png").write_bytes(b"broken")  # sample 3 -> rank 1's shard
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = base_args(tiny)
    args[args.index("--val-dir") + 1] = str(root)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "caffe_bridge.evaluate", *args, "--workers", "0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "error: evaluation failed in another process" in proc.stderr
    assert f"error: [rank 1] {root}/sub dir/img 3.png: cannot decode image (listed at " \
           f"{tiny.labels}:4)" in proc.stderr


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label_text", "message"),
    [("sub dir/img 0.png 1\nsub dir/img 1.png\n",
      r"labels.txt:2: label '1.png' is not a non-negative integer \(expected '<image path> "),
     ("sub dir/img 0.png 1\nsub dir/img 1.png x\n", r"labels.txt:2: label 'x' is not a"),
     ("sub dir/img 0.png 1\nsub dir/img 1.png 8\n", r"labels.txt:2: label 8 is outside the "
                                                    r"net's 8 classes \(0..7\)"),
     ("sub dir/nope.png 1\n", r"labels.txt:1: image .*nope.png does not exist")],
    ids=["missing-label", "word-label", "label-too-big", "missing-image"],
)
def test_bad_label_file_is_a_clean_error(tiny: TinySet, tmp_path: Path, label_text: str,
                                         message: str) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text(label_text, encoding="utf-8")
    args = base_args(tiny)
    args[args.index("--labels") + 1] = str(labels)
    code, out, err = run_eval(args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1  # before the loop
    assert re.search(message, err), err


def test_broken_image_is_a_clean_error(tiny: TinySet, tmp_path: Path) -> None:
    root = tmp_path / "val"
    shutil.copytree(tiny.root, root)
    (root / "sub dir" / "img 2.png").write_bytes(b"broken")
    args = base_args(tiny)
    args[args.index("--val-dir") + 1] = str(root)
    code, _, err = run_eval([*args, "--workers", "2"])
    assert code == 2
    assert err.strip().splitlines()[-1] == (f"error: {root}/sub dir/img 2.png: cannot decode image "
                           f"(listed at {tiny.labels}:3)")


def test_bad_mean_is_a_usage_error(tiny: TinySet) -> None:
    code, _, err = run_eval([*base_args(tiny), "--mean", "1,2"])
    assert code == 2 and "Invalid value for '--mean'" in err


# -- the library function ----------------------------------------------------------------------


def tiny_dataset(tiny: TinySet) -> ImageDataset:
    lines = tiny.labels.read_text().splitlines()
    samples = [Sample(str(tiny.root / line.rsplit(" ", 1)[0]), int(line.rsplit(" ", 1)[1]), "-")
               for line in lines]
    return ImageDataset(samples, make_preprocess(resize=RESIZE, crop=CROP, mean=MEAN))


def test_evaluate_class_order_perm(tiny: TinySet, tmp_path: Path) -> None:
    """A net whose outputs are permuted scores the same once told the permutation."""
    rng = np.random.default_rng(5)
    perm = rng.permutation(CLASSES)  # label class j is output perm[j] of the shuffled net
    shuffled = np.empty_like(tiny.prototypes)
    shuffled[perm] = tiny.prototypes
    prototxt, caffemodel = write_net(tmp_path, shuffled, "shuffled")
    ds = tiny_dataset(tiny)
    plain = evaluate(convert(tiny.prototxt, tiny.caffemodel), ds, batch_size=4)
    fixed = evaluate(convert(prototxt, caffemodel), ds, batch_size=4, class_order_perm=perm)
    wrong = evaluate(convert(prototxt, caffemodel), ds, batch_size=4)
    c1, c5, n = expected(tiny.prototypes, tiny.colours, tiny.targets)
    assert (plain.correct1, plain.correct5, plain.count) == (c1, c5, n)
    assert (fixed.correct1, fixed.correct5, fixed.count) == (c1, c5, n)
    assert (wrong.correct1, wrong.correct5) != (c1, c5)
    with pytest.raises(EvalError, match="permutation"):
        evaluate(convert(prototxt, caffemodel), ds, class_order_perm=[0, 0, 1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"batch_size": 0}, "batch size"), ({"workers": -1}, "workers"), ({"limit": 0}, "limit")],
    ids=["batch-0", "workers-negative", "limit-0"],
)
def test_evaluate_rejects_bad_arguments(tiny: TinySet, kwargs: dict, message: str) -> None:
    with pytest.raises(EvalError, match=message):
        evaluate(torch.nn.Identity(), tiny_dataset(tiny), **kwargs)


# -- released SENets ---------------------------------------------------------------------------

RELEASED = {
    "SE-BN-Inception": (76.38, 92.96),
    "SE-ResNet-50": (77.63, 93.64),
    "SE-ResNet-101": (78.25, 94.28),
    "SE-ResNet-152": (78.66, 94.46),
    "SE-ResNeXt-50": (79.03, 94.46),
    "SE-ResNeXt-101": (80.19, 95.04),
    "SENet-154": (81.32, 95.53),
}


@pytest.mark.parametrize("name", list(RELEASED), ids=list(RELEASED))
def test_released_senets_are_recognised(shared_dir: Path, name: str, tmp_path: Path) -> None:
    path = shared_dir / "senet" / f"{name}.prototxt"
    pub = published_for(load_net(path))
    assert pub is not None and (pub.top1, pub.top5) == RELEASED[name]
    assert pub.name.replace(" (32x4d)", "") == name
    # renamed, reformatted, another batch size: the same structure
    text = path.read_text().replace("dim: 1 ", "dim: 4 ", 1).replace('name: "', 'name: "x_')
    copy = tmp_path / "copy.prototxt"
    copy.write_text(text)
    assert load_net(copy).inputs != load_net(path).inputs
    assert structure_fingerprint(load_net(copy)) == structure_fingerprint(load_net(path))


def test_other_nets_are_not_recognised(shared_dir: Path, tiny: TinySet) -> None:
    assert published_for(load_net(shared_dir / "senet" / "nsfw_deploy.prototxt")) is None
    assert published_for(load_net(tiny.prototxt)) is None


def test_eval_prints_published_numbers_beside_ours(shared_dir: Path, tmp_path: Path) -> None:
    prototxt = shared_dir / "senet" / "SE-ResNet-50.prototxt"
    rng = np.random.default_rng(3)
    weights = {layer.name: [rng.uniform(0.5, 1.0, s).astype(np.float32) * 0.05
                            for s in layer.param_shapes]
               for layer in load_net(prototxt).layers if layer.param_shapes}
    caffemodel = tmp_path / "senet.caffemodel"
    write_caffemodel(caffemodel, weights)  # not the released weights: only the table is checked
    root = tmp_path / "val"
    root.mkdir()
    cv2.imwrite(str(root / "0.jpg"), rng.integers(0, 256, (300, 260, 3), dtype=np.uint8))
    labels = tmp_path / "val.txt"
    labels.write_text("0.jpg 999\n")
    code, out, err = run_eval([str(prototxt), str(caffemodel), "--val-dir", str(root),
                               "--labels", str(labels), "--device", "cpu", "--workers", "0"])
    assert code == 0, err
    assert "no mean given; using the published protocol's mean 104,117,123 (B,G,R)" in err
    assert "recognised  released SE-ResNet-50" in out and "differs" not in out
    top = [line for line in out.splitlines() if line.startswith("top-")]
    assert [line.split("published")[1] for line in top] == [" 77.63 %", " 93.64 %"]


@pytest.mark.parametrize(
    ("kwargs", "differ"),
    [({"mean": (104, 117, 123)}, ""), ({"mean": (1, 2, 3), "crop": 200}, "crop, mean"),
     ({"mean": (104, 117, 123), "scale": 0.017, "channel_order": "rgb"}, "scale, channel_order")],
    ids=["protocol", "crop-and-mean", "scale-and-rgb"],
)
def test_protocol_deviations_are_named(kwargs: dict, differ: str) -> None:
    pub = PUBLISHED["0e9fdba65fef5440fe3f"]
    lines = _published_lines(pub, make_preprocess(**kwargs), None)
    assert lines[0].startswith("recognised  released SE-ResNet-50; published numbers scored")
    assert lines[1:] == ([f"note        this run differs from that protocol in: {differ}"]
                         if differ else [])


def test_eval_finds_the_caffemodel_beside_the_prototxt(tiny: TinySet) -> None:
    """Like every command: no WEIGHTS means NET.caffemodel, never silently random weights."""
    assert tiny.caffemodel == tiny.prototxt.with_suffix(".caffemodel")
    explicit = run_eval(base_args(tiny))
    args = base_args(tiny)
    del args[1]
    beside = run_eval(args)
    assert explicit[0] == beside[0] == 0
    drop_speed = [line for line in explicit[1].splitlines() if not line.startswith("images/s")]
    assert drop_speed == [line for line in beside[1].splitlines()
                          if not line.startswith("images/s")]
    assert "random" not in beside[2].lower()


def test_eval_without_any_weights_is_an_error(tiny: TinySet, tmp_path: Path) -> None:
    lone = tmp_path / "lone.prototxt"
    lone.write_text(tiny.prototxt.read_text())
    args = base_args(tiny)
    args[:2] = [str(lone)]
    code, out, err = run_eval(args)
    assert code == 2 and out == ""
    assert "no weights" in err and "--random-weights" in err and "lone.caffemodel" in err


def test_eval_random_weights_only_on_the_flag(tiny: TinySet, tmp_path: Path) -> None:
    lone = tmp_path / "lone.prototxt"
    lone.write_text(tiny.prototxt.read_text())
    args = base_args(tiny)
    args[:2] = [str(lone), "--random-weights"]
    code, out, err = run_eval(args)
    assert code == 0 and "--random-weights: seeded random weights" in err
    assert "weights     SEEDED RANDOM" in out and "images      7" in out.splitlines()
    both = run_eval([*base_args(tiny), "--random-weights"])
    assert both[0] == 2 and "not both" in both[2]


def test_eval_truncated_jpeg_is_an_error_naming_it(tiny: TinySet, tmp_path: Path) -> None:
    """libjpeg decodes a cut-off file with a stderr line only; eval must refuse it by name."""
    root = tmp_path / "val"
    shutil.copytree(tiny.root, root)
    whole = tmp_path / "whole.jpg"
    assert cv2.imwrite(str(whole), np.full((40, 40, 3), 90, np.uint8))
    (root / "cut.jpg").write_bytes(whole.read_bytes()[:300])
    labels = tmp_path / "labels.txt"
    labels.write_text(tiny.labels.read_text() + "cut.jpg 0\n")
    args = [str(tiny.prototxt), str(tiny.caffemodel), "--val-dir", str(root), "--labels",
            str(labels), "--workers", "0"]
    code, out, err = run_eval(args)
    assert code == 2 and "truncated image" in err and "cut.jpg" in err


def test_conflicting_mean_options_are_a_usage_error(tiny: TinySet, tmp_path: Path) -> None:
    mean_file = tmp_path / "m.binaryproto"
    mean_file.write_bytes(b"x")
    code, _, err = run_eval([*base_args(tiny), "--mean", "1,2,3", "--mean-file", str(mean_file)])
    assert code == 2 and err.startswith("Usage: ") and "not both" in err
