"""Caffe-identical image preprocessing and labelled image sets (shared by eval and verify).

The pipeline of one image, as the classic ImageNet Caffe models were scored:

1. decode with OpenCV, ``cv2.imread(path, cv2.IMREAD_COLOR)``: BGR ``uint8``; grayscale and
   palette images become 3 identical channels, alpha is dropped (what Caffe's ``ReadImageToCVMat``
   does with ``is_color``). OpenCV >= 3.1 applies the EXIF orientation here, as Caffe built
   against it does;
2. resize so that the SHORTER side is ``resize`` (``cv2.resize``, ``INTER_LINEAR``), keeping the
   aspect ratio. Upstream Caffe's tools only resize to a fixed ``new_height x new_width`` and the
   SENet evaluation script is not published, so the long side is rounded to nearest with ties to
   even, computed exactly: ``round(Fraction(long * resize, short))``. That is Python's
   ``round()`` and OpenCV's own ``cvRound``, i.e. the size ``cv::resize(src, dst, Size(), f, f)``
   picks for ``f = resize / short``. (torchvision's ``Resize(256)`` truncates instead: the two
   differ by one pixel on the long side for some shapes, e.g. 500x333 -> 384 here, 384 there,
   but 640x427 -> 384 here, 383 there.) ``resize=0`` keeps the decoded size;
3. centre crop ``crop`` x ``crop`` at offset ``((h - crop) // 2, (w - crop) // 2)`` (Caffe's
   ``DataTransformer`` in TEST phase);
4. ``float32``; subtract the mean: per-channel values given in B, G, R order, or a mean image
   (``.binaryproto``, shape ``1x3xHxW`` or ``3xHxW``, BGR as Caffe stores it) centre-cropped to
   the crop size, as Caffe reads the mean at the crop's own offset when image and mean share a
   size. Then multiply by ``scale`` (Caffe's ``transform_param.scale``), all in float32:
   ``(pixel - mean) * scale``, as Caffe computes it;
5. ``channel_order="rgb"`` reverses the channels last (the mean is always given in B, G, R);
6. ``HWC -> CHW``, contiguous ``float32``.

Label files are Caffe's ``ImageData`` lists: ``relative/path.JPEG <int label>`` per line (the
label is the last whitespace-separated field, so paths may contain spaces; blank lines are
skipped). An ImageFolder tree (``root/<class>/**/<image>``, classes sorted by name) is also read,
exactly as torchvision indexes it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch.utils.data

from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.opencv_import import import_cv2

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "ImageDataset",
    "Preprocess",
    "Sample",
    "image_folder",
    "list_images",
    "load_images",
    "make_preprocess",
    "opencv_fork_safe",
    "parse_mean",
    "preprocess_images",
    "read_label_file",
    "read_mean_file",
    "resized_size",
    "worker_init",
]

# torchvision's ImageFolder extensions (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CHANNEL_ORDERS = ("bgr", "rgb")
_LABEL = re.compile(r"[+-]?[0-9]+")


class DataError(CaffeBridgeError):
    """An image, label file or mean file that cannot be used."""


# -- geometry ----------------------------------------------------------------------------------


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """``(h, w)`` after resizing the shorter side to ``short``; long side rounded half to even."""
    if height <= width:
        return short, max(1, round(Fraction(width * short, height)))
    return max(1, round(Fraction(height * short, width))), short


def _centre_crop(img: np.ndarray, crop: int, what: str) -> np.ndarray:
    h, w = img.shape[:2]
    if h < crop or w < crop:
        raise DataError(f"{h}x{w} is smaller than the {crop}x{crop} crop", file=what)
    y0, x0 = (h - crop) // 2, (w - crop) // 2
    return img[y0:y0 + crop, x0:x0 + crop]


# -- mean --------------------------------------------------------------------------------------


def parse_mean(text: str) -> tuple[float, float, float]:
    """``"104,117,123"`` -> ``(104.0, 117.0, 123.0)`` (B, G, R); one value applies to all three."""
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise DataError(f"mean {text!r} is not B,G,R numbers") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(np.isfinite(values)):
        raise DataError(f"mean {text!r} must be three finite numbers B,G,R (or one)")
    return values[0], values[1], values[2]


def read_mean_file(path: str | os.PathLike[str]) -> np.ndarray:
    """A ``.binaryproto`` mean image (one serialized ``BlobProto``) as a ``3xHxW`` float32 array."""
    from google.protobuf.message import DecodeError

    from caffe_bridge import schema

    spath = os.fspath(path)
    try:
        data = Path(spath).read_bytes()
    except OSError as err:
        raise DataError(f"cannot read mean file: {err.strerror or err}", file=spath) from None
    blob = schema.BlobProto()
    try:
        blob.ParseFromString(data)
    except DecodeError:
        raise DataError("not a BlobProto (.binaryproto) mean file", file=spath) from None
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    values = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3 or shape[0] != 3 or min(shape) < 1:
        raise DataError(f"mean blob has shape {shape}, expected 1x3xHxW or 3xHxW", file=spath)
    if values.size != int(np.prod(shape)):
        raise DataError(f"mean blob holds {values.size} values, its shape {shape} needs "
                        f"{int(np.prod(shape))}", file=spath)
    return values.reshape(shape)


# -- preprocessing -----------------------------------------------------------------------------


def check_complete(path: str) -> None:
    """Raise DataError for a truncated JPEG or PNG, which OpenCV decodes without an error.

    libjpeg fills the missing rows with grey and only prints "Premature end of JPEG file" on
    stderr; a score or a comparison on such an image would silently be wrong. A JPEG is complete
    when an end-of-image marker follows its last start-of-scan (entropy-coded data stuffs every
    0xFF, so neither marker can occur inside it); a PNG when its IEND chunk is there.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\xff\xd8":
        complete = data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") >= 0
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        complete = data.rfind(b"IEND") >= len(data) - 64
    else:
        return
    if not complete:
        raise DataError(f"truncated image ({len(data):,} bytes; its end marker is missing)",
                        file=path)


@dataclass(frozen=True, eq=False)
class Preprocess:
    """One image file -> ``3 x crop x crop`` float32, as described in the module docstring.

    ``mean`` is ``None``, 3 values (B, G, R) or a ``crop x crop x 3`` BGR image (HWC).
    Picklable, so DataLoader workers can run it.
    """

    resize: int = 256
    crop: int = 224
    mean: np.ndarray | None = None
    scale: float | None = None
    channel_order: str = "bgr"

    def __call__(self, path: str | os.PathLike[str]) -> np.ndarray:
        return self.from_bgr(self.decode(path), os.fspath(path))

    @staticmethod
    def decode(path: str | os.PathLike[str]) -> np.ndarray:
        """Decode as Caffe does: BGR uint8 ``HxWx3``."""
        cv2 = import_cv2("image preprocessing", error=DataError)
        spath = os.fspath(path)
        if os.path.isfile(spath):
            check_complete(spath)  # before libjpeg decodes a cut-off file with a stderr line only
        img = cv2.imread(spath, cv2.IMREAD_COLOR)
        if img is None:
            what = "no such image file" if not os.path.isfile(spath) else "cannot decode image"
            raise DataError(what, file=spath)
        return img


    def from_bgr(self, img: np.ndarray, what: str = "<image>") -> np.ndarray:
        """Resize, crop, subtract, scale and reorder a decoded ``HxWx3`` BGR uint8 image."""
        if self.resize:
            h, w = img.shape[:2]
            nh, nw = resized_size(h, w, self.resize)
            if (nh, nw) != (h, w):
                cv2 = import_cv2("image preprocessing", error=DataError)
                img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        out = _centre_crop(img, self.crop, what).astype(np.float32)
        if self.mean is not None:
            out -= self.mean
        if self.scale is not None:
            out *= np.float32(self.scale)
        if self.channel_order == "rgb":
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out.transpose(2, 0, 1))


def make_preprocess(
    *,
    resize: int = 256,
    crop: int = 224,
    mean: Sequence[float] | str | None = None,
    mean_file: str | os.PathLike[str] | None = None,
    scale: float | None = None,
    channel_order: str = "bgr",
) -> Preprocess:
    """Check the options and build a :class:`Preprocess` (loading and cropping a mean file)."""
    if crop < 1:
        raise DataError(f"crop must be at least 1, not {crop}")
    if resize < 0 or 0 < resize < crop:
        raise DataError(f"resize {resize} is smaller than crop {crop} (0 keeps the image size)")
    if channel_order not in CHANNEL_ORDERS:
        raise DataError(f"channel order must be one of {', '.join(CHANNEL_ORDERS)}, "
                        f"not {channel_order!r}")
    if mean is not None and mean_file is not None:
        raise DataError("give either mean values or a mean file, not both")
    if scale is not None and not np.isfinite(scale):
        raise DataError(f"scale must be a finite number, not {scale}")
    mean_arr: np.ndarray | None = None
    if mean_file is not None:
        image = read_mean_file(mean_file)  # 3 x H x W
        mean_arr = np.ascontiguousarray(
            _centre_crop(image.transpose(1, 2, 0), crop, os.fspath(mean_file)))
    elif mean is not None:
        values = parse_mean(mean) if isinstance(mean, str) else tuple(float(v) for v in mean)
        if len(values) != 3:
            raise DataError(f"mean needs 3 values (B, G, R), got {len(values)}")
        mean_arr = np.asarray(values, dtype=np.float32)
    return Preprocess(resize, crop, mean_arr, None if scale is None else float(scale),
                      channel_order)


# -- labelled image sets -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One labelled image; ``origin`` is where its label comes from (``file:line`` or a dir)."""

    path: str
    label: int
    origin: str


def read_label_file(
    path: str | os.PathLike[str], root: str | os.PathLike[str], *, check_files: bool = True
) -> list[Sample]:
    """Read a Caffe ``ImageData`` list: ``relative/path <label>`` per line, paths under ``root``."""
    spath, sroot = os.fspath(path), os.fspath(root)
    try:
        with open(spath, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise DataError(f"cannot read label file: {err.strerror or err}", file=spath) from None
    except UnicodeDecodeError:
        raise DataError("label file is not UTF-8 text", file=spath) from None
    samples: list[Sample] = []
    for n, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        parts = text.rsplit(None, 1)
        if len(parts) != 2:
            raise DataError(f"expected '<image path> <label>', got {text!r}", file=spath, line=n)
        rel, label = parts
        if not _LABEL.fullmatch(label) or int(label) < 0:
            raise DataError(f"label {label!r} is not a non-negative integer (expected "
                            f"'<image path> <label>')", file=spath, line=n)
        image = os.path.join(sroot, rel)
        if check_files and not os.path.isfile(image):
            raise DataError(f"image {image} does not exist", file=spath, line=n)
        samples.append(Sample(image, int(label), f"{spath}:{n}"))
    if not samples:
        raise DataError("label file lists no images", file=spath)
    return samples


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def image_folder(root: str | os.PathLike[str]) -> tuple[list[Sample], list[str]]:
    """An ImageFolder tree: sorted class directories -> 0, 1, ...; images found recursively."""
    sroot = os.fspath(root)
    if not os.path.isdir(sroot):
        raise DataError("not a directory", file=sroot)
    classes = sorted(e.name for e in os.scandir(sroot) if e.is_dir())
    if not classes:
        raise DataError("no class directories (expected root/<class>/<image>)", file=sroot)
    samples: list[Sample] = []
    for index, name in enumerate(classes):
        folder = os.path.join(sroot, name)
        found = 0
        for dirpath, _, files in sorted(os.walk(folder, followlinks=True)):
            for file in sorted(files):
                if _is_image(file):
                    samples.append(Sample(os.path.join(dirpath, file), index, folder))
                    found += 1
        if not found:
            raise DataError(f"class directory has no images ({', '.join(IMAGE_EXTENSIONS)})",
                            file=folder)
    return samples, classes


class ImageDataset(torch.utils.data.Dataset):
    """``(image CHW float32, label, error)`` per sample; ``error`` is ``""`` unless it failed.

    A failure is returned, not raised, so that a DataLoader worker hands back a clean message
    (the caller raises it) instead of a wrapped traceback.
    """

    def __init__(self, samples: Sequence[Sample], preprocess: Preprocess) -> None:
        self.samples = list(samples)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, str]:
        sample = self.samples[index]
        try:
            return self.preprocess(sample.path), sample.label, ""
        except CaffeBridgeError as err:
            empty = np.zeros((3, self.preprocess.crop, self.preprocess.crop), np.float32)
            return empty, sample.label, f"{err} (listed at {sample.origin})"


def worker_init(_: int = 0) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker (the workers are the parallelism).

    OpenCV's thread count is not touched here: changing it in a forked child whose parent ran
    OpenCV's thread pool deadlocks. Fork the workers inside :func:`opencv_fork_safe` instead.
    """
    torch.set_num_threads(1)


@contextlib.contextmanager
def opencv_fork_safe(active: bool = True) -> Iterator[None]:
    """Switch OpenCV's thread pool off while DataLoader workers are forked and run, then restore.

    A child forked while the parent's pool exists inherits a pool without threads; with no pool,
    every worker decodes and resizes on its own single thread (same pixels: OpenCV's parallel
    resize splits rows, never changes the arithmetic).
    """
    try:
        import cv2
    except ImportError:
        active = False
    if not active:
        yield
        return
    previous = cv2.getNumThreads()
    cv2.setNumThreads(0)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


# -- single images (verify --images) -----------------------------------------------------------


def list_images(dir_or_files: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]
                ) -> list[str]:
    """Image files of a directory (recursive, sorted, by extension), or the given files."""
    if isinstance(dir_or_files, (str, os.PathLike)):
        path = os.fspath(dir_or_files)
        if os.path.isdir(path):
            found = sorted(os.path.join(d, f) for d, _, files in os.walk(path, followlinks=True)
                           for f in files if _is_image(f))
            if not found:
                raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the directory",
                                file=path)
            return found
        return [path]
    files = [os.fspath(p) for p in dir_or_files]
    if not files:
        raise DataError("no image files given")
    return files


def load_images(
    dir_or_files: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    preprocess: Preprocess,
) -> np.ndarray:
    """Preprocess every image of a directory (or list of files) into one ``N x 3 x crop x crop``."""
    return np.stack([preprocess(p) for p in list_images(dir_or_files)])


def preprocess_images(
    dir_or_files: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    resize: int = 256,
    crop: int = 224,
    mean: Sequence[float] | str | None = None,
    mean_file: str | os.PathLike[str] | None = None,
    scale: float | None = None,
    channel_order: str = "bgr",
) -> np.ndarray:
    """The eval pipeline for ``verify --images``: real images -> ``N x 3 x crop x crop`` float32."""
    pre = make_preprocess(resize=resize, crop=crop, mean=mean, mean_file=mean_file, scale=scale,
                          channel_order=channel_order)
    return load_images(dir_or_files, pre)
