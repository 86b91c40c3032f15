"""Caffe-identical preprocessing against plain OpenCV calls; label lists; mean files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from caffe_bridge import schema
from caffe_bridge.data import (
    DataError,
    ImageDataset,
    Sample,
    image_folder,
    load_images,
    make_preprocess,
    preprocess_images,
    read_label_file,
    read_mean_file,
    resized_size,
)

cv2 = pytest.importorskip("cv2")

RESIZE, CROP = 64, 56

# (height, width, channels) of the test images; 1 channel = a grayscale PNG.
SIZES = {
    "portrait": (150, 97, 3),
    "landscape": (91, 141, 3),
    "square": (80, 80, 3),
    "smaller-than-crop": (30, 41, 3),
    "exactly-resize": (64, 77, 3),
    "tie-rounds-to-even": (128, 129, 3),  # 129 * 64 / 128 = 64.5 -> 64
    "grayscale": (70, 101, 1),
}


def plain_caffe(path: str, resize: int, crop: int, mean: np.ndarray | None, scale: float | None,
                rgb: bool) -> np.ndarray:
    """The pipeline written out with plain cv2 calls, independent of the module under test."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    # cv2 sizes are (width, height); the shorter side becomes `resize`
    size = (round(w * resize / h), resize) if h <= w else (resize, round(h * resize / w))
    if size != (w, h):
        img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    h, w = img.shape[:2]
    top, left = (h - crop) // 2, (w - crop) // 2
    img = img[top:top + crop, left:left + crop].astype(np.float32)
    if mean is not None:
        img = img - mean
    if scale is not None:
        img = img * np.float32(scale)
    if rgb:
        img = img[:, :, ::-1]
    return img.transpose(2, 0, 1)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    rng = np.random.default_rng(1234)
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for name, (h, w, c) in SIZES.items():
        img = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        path = folder / f"{name}.png"
        assert cv2.imwrite(str(path), img[:, :, 0] if c == 1 else img)
        paths[name] = str(path)
    return paths


def write_mean(path: Path, mean: np.ndarray, legacy: bool = False) -> Path:
    """A .binaryproto mean through our schema (modern 1x3xHxW shape, or legacy 3-d fields)."""
    blob = schema.BlobProto()
    if legacy:
        blob.channels, blob.height, blob.width = mean.shape
        blob.num = 1
    else:
        blob.shape.dim.extend([1, *mean.shape])
    blob.data.extend(mean.astype(np.float32).ravel().tolist())
    path.write_bytes(blob.SerializeToString())
    return path


OPTIONS = {
    "plain": {},
    "mean-values": {"mean": (104.0, 117.0, 123.0)},
    "mean-scale": {"mean": (103.94, 116.78, 123.68), "scale": 0.017},
    "rgb-mean": {"mean": (104.0, 117.0, 123.0), "channel_order": "rgb"},
}


@pytest.mark.parametrize("option", list(OPTIONS), ids=list(OPTIONS))
@pytest.mark.parametrize("name", list(SIZES), ids=list(SIZES))
def test_pixel_exact_against_plain_opencv(images: dict[str, str], name: str, option: str) -> None:
    opts = OPTIONS[option]
    pre = make_preprocess(resize=RESIZE, crop=CROP, **opts)
    got = pre(images[name])
    mean = np.asarray(opts["mean"], np.float32) if "mean" in opts else None
    want = plain_caffe(images[name], RESIZE, CROP, mean, opts.get("scale"),
                       opts.get("channel_order") == "rgb")
    assert got.dtype == np.float32 and got.shape == (3, CROP, CROP) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("legacy", [False, True], ids=["shape-1x3xHxW", "legacy-3xHxW"])
@pytest.mark.parametrize("name", ["portrait", "grayscale"], ids=["portrait", "grayscale"])
def test_mean_file_is_centre_cropped(images: dict[str, str], tmp_path: Path, name: str,
                                     legacy: bool) -> None:
    rng = np.random.default_rng(7)
    mean = rng.uniform(0, 255, (3, 64, 70)).astype(np.float32)
    path = write_mean(tmp_path / "mean.binaryproto", mean, legacy)
    np.testing.assert_array_equal(read_mean_file(path), mean)
    pre = make_preprocess(resize=RESIZE, crop=CROP, mean_file=path, scale=0.5)
    top, left = (64 - CROP) // 2, (70 - CROP) // 2
    crop_mean = mean[:, top:top + CROP, left:left + CROP].transpose(1, 2, 0)
    want = plain_caffe(images[name], RESIZE, CROP, crop_mean, 0.5, False)
    np.testing.assert_array_equal(pre(images[name]), want)


@pytest.mark.parametrize(
    ("h", "w", "short", "want"),
    [(375, 500, 256, (256, 341)), (500, 375, 256, (341, 256)), (427, 640, 256, (256, 384)),
     (333, 500, 256, (256, 384)), (512, 513, 256, (256, 256)), (512, 515, 256, (256, 258)),
     (100, 100, 256, (256, 256)), (7, 1000, 3, (3, 429))],
    ids=["375x500", "500x375", "427x640", "333x500", "tie-down", "tie-up", "square-up", "thin"],
)
def test_resized_size(h: int, w: int, short: int, want: tuple[int, int]) -> None:
    assert resized_size(h, w, short) == want


def test_resize_zero_keeps_size(images: dict[str, str]) -> None:
    pre = make_preprocess(resize=0, crop=CROP)
    want = cv2.imread(images["landscape"])[17:17 + CROP, 42:42 + CROP]
    np.testing.assert_array_equal(pre(images["landscape"]), want.transpose(2, 0, 1))
    with pytest.raises(DataError, match="smaller-than-crop.png: 30x41 is smaller than"):
        pre(images["smaller-than-crop"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"crop": 0}, "crop must be at least 1"),
     ({"resize": 50}, "resize 50 is smaller than crop 56"),
     ({"channel_order": "gbr"}, "channel order must be one of bgr, rgb"),
     ({"mean": "1,2"}, "three finite numbers"),
     ({"mean": "a,b,c"}, "not B,G,R numbers"),
     ({"scale": float("nan")}, "scale must be a finite number")],
    ids=["crop-zero", "resize-below-crop", "bad-order", "two-means", "text-mean", "nan-scale"],
)
def test_bad_options(kwargs: dict, message: str) -> None:
    opts = {"resize": RESIZE, "crop": CROP, **kwargs}
    with pytest.raises(DataError, match=message):
        make_preprocess(**opts)


def test_mean_file_errors(tmp_path: Path) -> None:
    small = write_mean(tmp_path / "small.binaryproto", np.zeros((3, 40, 60), np.float32))
    with pytest.raises(DataError, match=r"small.binaryproto: 40x60 is smaller than the 56x56"):
        make_preprocess(resize=RESIZE, crop=CROP, mean_file=small)
    gray = write_mean(tmp_path / "gray.binaryproto", np.zeros((1, 64, 64), np.float32))
    with pytest.raises(DataError, match=r"gray.binaryproto: mean blob has shape \(1, 64, 64\)"):
        read_mean_file(gray)
    junk = tmp_path / "junk.binaryproto"
    junk.write_bytes(b"\xff\xff\xff\xff")
    with pytest.raises(DataError, match="junk.binaryproto: not a BlobProto"):
        read_mean_file(junk)
    with pytest.raises(DataError, match="either mean values or a mean file"):
        make_preprocess(mean=(1, 2, 3), mean_file=small)


# -- label lists and ImageFolder trees -----------------------------------------------------------


def test_label_file(tmp_path: Path) -> None:
    (tmp_path / "a b").mkdir()
    for rel in ("x.png", "a b/y z.JPEG"):
        (tmp_path / rel).write_bytes(b"")
    labels = tmp_path / "val.txt"
    labels.write_text("x.png 3\n\n  a b/y z.JPEG\t0  \r\n", encoding="utf-8")
    got = read_label_file(labels, tmp_path)
    assert got == [Sample(str(tmp_path / "x.png"), 3, f"{labels}:1"),
                   Sample(str(tmp_path / "a b" / "y z.JPEG"), 0, f"{labels}:3")]


@pytest.mark.parametrize(
    ("text", "message"),
    [("x.png 1\nx.png\n", r"val.txt:2: expected '<image path> <label>'"),
     ("x.png 1\nx.png one\n", r"val.txt:2: label 'one' is not a non-negative integer"),
     ("x.png -1\n", r"val.txt:1: label '-1' is not a non-negative integer"),
     ("x.png 1\n\nmissing.png 2\n", r"val.txt:3: image .*missing.png does not exist"),
     ("\n\n", r"val.txt: label file lists no images")],
    ids=["no-label", "word-label", "negative", "missing-image", "empty"],
)
def test_label_file_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "x.png").write_bytes(b"")
    labels = tmp_path / "val.txt"
    labels.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        read_label_file(labels, tmp_path)
    assert "\n" not in str(info.value)


def test_image_folder(tmp_path: Path) -> None:
    files = ["n02/b.png", "n02/a.JPG", "n01/deep/c.jpeg", "n01/notes.txt", "n10/d.bmp"]
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    samples, classes = image_folder(tmp_path)
    assert classes == ["n01", "n02", "n10"]
    assert [(Path(s.path).relative_to(tmp_path).as_posix(), s.label) for s in samples] == [
        ("n01/deep/c.jpeg", 0), ("n02/a.JPG", 1), ("n02/b.png", 1), ("n10/d.bmp", 2)]
    (tmp_path / "n11").mkdir()
    with pytest.raises(DataError, match="n11: class directory has no images"):
        image_folder(tmp_path)


# -- datasets and single images ------------------------------------------------------------------


def test_dataset_reports_bad_images_without_raising(images: dict[str, str], tmp_path: Path
                                                    ) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    pre = make_preprocess(resize=RESIZE, crop=CROP)
    ds = ImageDataset([Sample(images["square"], 4, "val.txt:1"),
                       Sample(str(broken), 2, "val.txt:2")], pre)
    img, label, error = ds[0]
    assert label == 4 and error == "" and img.shape == (3, CROP, CROP)
    img, label, error = ds[1]
    assert error == f"{broken}: cannot decode image (listed at val.txt:2)"
    assert img.shape == (3, CROP, CROP)


def test_load_images_dir_and_files(images: dict[str, str], tmp_path: Path) -> None:
    folder = Path(images["square"]).parent
    pre = make_preprocess(resize=RESIZE, crop=CROP, mean=(104, 117, 123))
    batch = load_images(folder, pre)
    names = sorted(Path(p).name for p in images.values())
    assert batch.shape == (len(names), 3, CROP, CROP) and batch.dtype == np.float32
    for i, name in enumerate(names):
        np.testing.assert_array_equal(batch[i], pre(folder / name))
    picked = [images["grayscale"], images["portrait"]]
    np.testing.assert_array_equal(
        preprocess_images(picked, resize=RESIZE, crop=CROP, mean="104,117,123"),
        np.stack([pre(p) for p in picked]))
    with pytest.raises(DataError, match="no images"):
        load_images(tmp_path, pre)


FORK_SCRIPT = """
import sys
import cv2, numpy as np, torch
from caffe_bridge.data import ImageDataset, Sample, make_preprocess
from caffe_bridge.evaluate import evaluate
big = np.random.default_rng(0).integers(0, 256, (2000, 3000, 3), dtype=np.uint8)
pre = make_preprocess(resize=64, crop=56)
ds = ImageDataset([Sample(p, 0, "-") for p in sys.argv[1:]] * 4, pre)
for _ in range(3):
    for _ in range(10):
        cv2.resize(big, (1500, 1000))  # the parent's OpenCV thread pool is busy and alive
    print(evaluate(torch.nn.Flatten(), ds, batch_size=4, workers=2).count, flush=True)
"""


def test_workers_fork_safely_after_opencv_threads(images: dict[str, str]) -> None:
    """Forked DataLoader workers must not deadlock on the parent's OpenCV thread pool."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FORK_SCRIPT, *list(images.values())[:3]],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["12"] * 3


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image_is_an_error_naming_the_file(tmp_path: Path, suffix: str) -> None:
    """OpenCV decodes a cut-off JPEG with only a libjpeg stderr line: we refuse it."""
    rng = np.random.default_rng(7)
    whole = tmp_path / f"whole{suffix}"
    assert cv2.imwrite(str(whole), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert cv2.imread(str(cut)) is not None or suffix == ".png"  # the trap (JPEG): it decodes
    pre = make_preprocess(resize=0, crop=32)
    assert pre(whole).shape == (3, 32, 32)
    with pytest.raises(DataError, match="truncated image") as info:
        pre(cut)
    assert str(cut) in str(info.value)
    ds = ImageDataset([Sample(str(cut), 0, "val.txt:3")], pre)
    assert "truncated image" in ds[0][2] and str(cut) in ds[0][2]
