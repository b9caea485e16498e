"""The full decode of a dataset's image files (harness.data.verify): every bad file found, by path and reason, the
same way the loader decodes; its cache by size and mtime; and the loader's own error for a file damaged later."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data import dataset_config, dataset_info, load_dataset
from harness.data.errors import DataSourceError, ImageDecodeError
from harness.data.verify import check_cache_path, verify_images
from harness.suite import SuiteError, check_images, parse_suite


def _folder(root: Path, classes: str = "abc", per_class: int = 4, mode: str = "RGB") -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = root / c / f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).convert(mode).save(path)
            paths.append(path)
    return paths


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"IDAT") + 8])


def _cfg(root: Path, **fields):
    return dataset_config(name="image_folder", root=str(root), **fields)


def test_every_bad_file_is_reported_in_load_order_with_the_decoders_reason(tmp_path: Path) -> None:
    _folder(tmp_path)
    _truncate(tmp_path / "b" / "1.png")
    (tmp_path / "a" / "3.png").write_bytes(b"")
    (tmp_path / "c" / "x.jpg").write_text("not a picture")
    check = verify_images(_cfg(tmp_path))
    assert check is not None and not check.ok
    assert check.total == 13 and check.decoded == 13 and check.cached == 0
    assert [b.path for b in check.bad] == [tmp_path / "b" / "1.png", tmp_path / "a" / "3.png", tmp_path / "c" / "x.jpg"]
    reasons = [b.reason for b in check.bad]
    assert "truncated" in reasons[0].lower(), reasons[0]
    assert reasons[1].startswith("not an image file PIL recognises") and reasons[2] == reasons[1]


def test_a_second_check_decodes_only_what_changed_and_never_remembers_a_bad_file(tmp_path: Path) -> None:
    paths = _folder(tmp_path)
    (tmp_path / "a" / "bad.png").write_bytes(b"\x89PNG junk")
    first = verify_images(_cfg(tmp_path))
    assert first.decoded == 13 and len(first.bad) == 1
    again = verify_images(_cfg(tmp_path))
    assert (again.decoded, again.cached, [b.path.name for b in again.bad]) == (1, 12, ["bad.png"])

    st = paths[5].stat()
    os.utime(paths[5], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched: decoded again
    touched = verify_images(_cfg(tmp_path))
    assert (touched.decoded, touched.cached) == (2, 11)

    gray = verify_images(_cfg(tmp_path, channels=1))  # other decode settings: every file again
    assert gray.decoded == 13
    entries = json.loads(check_cache_path(tmp_path).read_text())["files"]
    assert str((tmp_path / "a" / "bad.png").absolute()) not in entries and len(entries) == 12
    assert entries[str(paths[0].absolute())] == [paths[0].stat().st_size, paths[0].stat().st_mtime_ns, "L/32/folder"]


def test_a_damaged_cache_is_ignored_with_a_warning_and_rewritten(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    _folder(tmp_path / "data")
    verify_images(_cfg(tmp_path / "data"))
    cache = check_cache_path(tmp_path / "data")
    for damage in ('{"version": 1, "files": {"x": [1, 2]}}', "{not json", "[]", '{"version": 99, "files": {}}'):
        cache.write_text(damage)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="harness.data.verify"):
            check = verify_images(_cfg(tmp_path / "data"))
        assert check.decoded == 12 and check.ok, damage
        assert f"{cache}: damaged image-check cache ignored" in caplog.text, damage
        assert len(json.loads(cache.read_text())["files"]) == 12, damage
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind


def test_progress_is_reported_for_each_decoded_file(tmp_path: Path) -> None:
    _folder(tmp_path, per_class=3)
    calls: list[tuple[int, int]] = []
    verify_images(_cfg(tmp_path), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 9) for i in range(1, 10)]
    calls.clear()
    verify_images(_cfg(tmp_path), progress=lambda done, total: calls.append((done, total)))
    assert calls == []  # all cached: nothing decoded, no bar


def test_only_the_capped_files_the_loader_reads_are_checked(tmp_path: Path) -> None:
    _folder(tmp_path, per_class=5)
    _truncate(tmp_path / "a" / "3.png")  # the 4th training image of class a: beyond a cap of 2 per class
    assert [b.path.name for b in verify_images(_cfg(tmp_path)).bad] == ["3.png"]
    capped = verify_images(_cfg(tmp_path, max_images_per_class=2))
    assert capped.ok and capped.total == 9  # per class 2 train + the 1 test image


def test_datasets_without_image_files_are_not_checked(tmp_path: Path) -> None:
    assert verify_images(dataset_config(name="mnist", source="embedded")) is None
    assert verify_images(dataset_config(name="celeba", root=str(tmp_path))) is None  # no annotation files yet


def test_celeba_listed_images_that_are_missing_or_damaged_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, 5)]
    (folder / "list_eval_partition.txt").write_text("".join(f"{n} {0 if i < 2 else 2}\n" for i, n in enumerate(names)))
    (folder / "list_attr_celeba.txt").write_text("4\nSmiling Male\n" + "".join(
        f"{n} 1 {1 if i % 2 else -1}\n" for i, n in enumerate(names)))
    for n in names[:3]:
        Image.new("RGB", (20, 24), (9, 9, 9)).save(folder / "img_align_celeba" / n)
    damaged = folder / "img_align_celeba" / names[1]
    damaged.write_bytes(damaged.read_bytes()[:100])
    check = verify_images(dataset_config(name="celeba", root=str(tmp_path)))
    assert [(b.path.name, b.reason) for b in check.bad][1] == (names[3], "the file is missing")
    assert check.bad[0].path.name == names[1] and check.total == 4


def test_the_loader_names_a_file_damaged_after_the_check(tmp_path: Path) -> None:
    _folder(tmp_path)
    assert verify_images(_cfg(tmp_path)).ok
    bad = tmp_path / "c" / "2.png"
    _truncate(bad)
    with pytest.raises(ImageDecodeError) as info:
        load_dataset(_cfg(tmp_path))
    assert info.value.path == bad and str(info.value) == f"cannot read image {bad}: {info.value.reason}"
    assert isinstance(info.value, DataSourceError)
    copy = pickle.loads(pickle.dumps(info.value))  # Ray and process pools pickle it
    assert (copy.path, copy.reason, str(copy)) == (info.value.path, info.value.reason, str(info.value))


def test_an_unreadable_header_does_not_stop_suite_metadata(tmp_path: Path) -> None:
    """dataset_info (suite validation) skips a file it cannot open, so the full check can list every bad one; the
    channels of the readable ones still decide."""
    _folder(tmp_path, mode="L")
    (tmp_path / "a" / "bad.png").write_bytes(b"")
    assert dataset_info(_cfg(tmp_path)).image_shape == (1, 32, 32)
    Image.new("RGB", (4, 4), (200, 10, 10)).save(tmp_path / "b" / "red.png")
    assert dataset_info(_cfg(tmp_path)).image_shape == (3, 32, 32)


SUITE = {
    "name": "imgs",
    "dataset": {"name": "image_folder", "root": "data"},
    "protocol": {"base_classes": ["a", "b"], "novel_classes": ["c"], "shots": [1], "seeds": [0]},
    "methods": [{"name": "dcgan"}],
    "budget": {"steps": 2},
    "evaluation": {"metrics": []},
}


def test_check_images_names_the_suite_file_and_field_and_caps_the_list(tmp_path: Path) -> None:
    _folder(tmp_path / "data")
    bad = [tmp_path / "data" / "b" / f"z{i:02d}.png" for i in range(23)]
    for path in bad:
        path.write_bytes(b"")
    suite = parse_suite(SUITE, "imgs.yaml", base_dir=tmp_path)
    with pytest.raises(SuiteError) as info:
        check_images(suite, "imgs.yaml")
    problems = info.value.problems
    assert all(loc == "dataset.root" for loc, _ in problems)
    assert [msg.split(": ")[0] for _, msg in problems[:20]] == [str(p) for p in bad[:20]]
    assert problems[20][1] == "... and 3 more bad images"
    assert problems[21][1] == f"23 of the 35 images under {tmp_path / 'data'} cannot be decoded; fix or remove them"
    assert str(info.value).splitlines()[0] == f"imgs.yaml: dataset.root: {bad[0]}: {problems[0][1].split(': ', 1)[1]}"
    for path in bad:
        path.unlink()
    assert check_images(suite, "imgs.yaml").ok
