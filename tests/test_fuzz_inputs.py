"""Fuzzing `harness validate` with malformed suite files and image folders.

A seeded generator (the same few hundred cases on every run; a failure names its case, which reproduces alone)
mutates a valid suite -- wrong types, unknown keys, missing fields, huge numbers, wrong enum values, bad class splits
-- and writes broken files -- bad YAML, a non-mapping top level, empty files, binary junk -- and damages image
folders -- truncated PNG/JPEG/GIF/BMP, zero-byte and non-image files with image extensions, headers claiming
billions of pixels, broken links, junk in nested folders. Each case runs the real command (in this process, through
Typer's runner: a subprocess per case would take minutes) and must end as a user can act on: the suite accepted, or
exit code 1 with every problem on a line ``FILE: field: message`` -- never an exception escaping the command.
"""

from __future__ import annotations

import copy
import io
import random
import re
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from harness.cli import app

SEED = 14  # the number; change it to explore other cases (every case must still pass)
RUNNER = CliRunner()

# A valid suite touching most of the schema: explicit class splits, validation classes, a sweep, method params.
BASE: dict[str, Any] = {
    "name": "fuzz",
    "version": 1,
    "dataset": {"name": "mnist", "source": "embedded"},
    "protocol": {
        "base_classes": [0, 1, 2, 5],
        "novel_classes": [3, 4],
        "shots": [5],
        "seeds": [0, 1],
        "eval_images_per_class": 50,
        "validation_classes": [2],
        "class_splits": [{"base": [0, 1, 2, 3], "novel": [4, 5], "validation": [2]}],
    },
    "methods": [
        {"name": "dcgan", "params": {"width": 16, "lr_g": 0.0002}},
        {"name": "cgan", "label": "cgan-small", "params": {"width": 16}, "budget": {"steps": 10}},
    ],
    "budget": {"steps": 20, "batch_size": 32, "log_every": 5},
    "evaluation": {"samples_per_class": 64, "metrics": ["fid", "kid"]},
    "resources": {"cpu": 1, "gpu": 0},
    "sweep": {"method": "dcgan", "metric": "fid", "mode": "min", "num_samples": 2,
              "space": {"lr_g": {"loguniform": [1.0e-5, 1.0e-3]}}},
}

JUNK_VALUES: list[Any] = [
    None, True, False, 0, -1, -(10**30), 10**30, 10**400, 3.5, float("inf"), float("-inf"), float("nan"), "", "x",
    "🙂 ünïcode", "-1", "1e400", "x" * 2000, [], [[]], [None], {}, {"a": 1}, {"": None}, [1, "two", 3.0],
]
ENUMS: dict[tuple, list[Any]] = {  # paths whose value is one of a few literals, with wrong ones
    ("dataset", "name"): ["mnst", "MNIST", "image-folder", ""],
    ("dataset", "source"): ["download", "Embedded", 1],
    ("protocol", "score_on"): ["train", "Test", "both"],
    ("methods", 0, "data"): ["half", "FULL", 0],
    ("methods", 0, "name"): ["dcgna", "DCGAN", "dc gan"],
    ("sweep", "mode"): ["minimise", "MAX", ""],
    ("sweep", "select_on"): ["train", "valid"],
    ("resources", "gpu"): [-1, "all"],
}
CLASS_SPLITS: list[Any] = [
    "random",
    [{"base": [0, 1], "novel": [1, 2]}],  # overlap
    [{"base": [0, 1], "novel": []}],  # no novel class
    [{"base": [0, 1], "novel": ["eleven"]}],  # unknown class
    [{"base": [0, 99], "novel": [3]}],  # id out of range
    [{"base": [0, 1], "novel": [3], "validation": [7]}],  # validation class not a base class
    [{"base": [0, 0, 1], "novel": [3]}],  # listed twice
    [{"novel": [3]}],
    [[0, 1], [3]],
    {"random": 0, "novel_count": 1},
    {"random": 3, "novel_count": 6},  # leaves no base class
    {"random": 10**6, "novel_count": 1},  # more distinct partitions than exist
    {"random": 2, "novel_count": 1, "seed": -1},
    {"random": 2, "novel_count": 1, "base": [0]},
]
SYNTAX_JUNK = ["[", "]", "{", "}", ": ", ":\n", "- ", "\t", "&a ", "*nope ", "!!python/object/apply:os.system ['true'] ",
               "%YAML 9.9\n", "@", "`", '"', "'", "|\n", "? ", "\x00", "\ufeff", "\x1b", ": :", "\n  - ", ",", "#"]
FIELD = re.compile(r"^[A-Za-z_][\w-]*(?:\.[\w\-\[\]]+|\[\d+\])*$")


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and list indices) into ``node``, parents before children."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


def _field(path: tuple) -> str:
    """A path as the harness writes fields: ``protocol.shots[0]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _related(reported: str, mutated: str) -> bool:
    """The same field, one inside the other (pydantic may report a union member's inner field)."""
    return reported == mutated or any(a.startswith(b) and a[len(b)] in ".[" for a, b in
                                      ((reported, mutated), (mutated, reported)) if len(a) > len(b))


def _validate(file: Path):
    result = RUNNER.invoke(app, ["validate", str(file)], env={"COLUMNS": "200", "NO_COLOR": "1"})
    return result


def _check(result, file: Path, case: str) -> list[str]:
    """The common contract; returns the fields the error lines name (empty when the suite was accepted)."""
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{case}: {type(result.exception).__name__}: {result.exception} escaped `harness validate`\n{output}")
    assert "Traceback" not in output, f"{case}: a traceback was printed\n{output}"
    assert result.exit_code in (0, 1), f"{case}: exit code {result.exit_code}\n{output}"
    if result.exit_code == 0:
        assert f"✓ {file}:" in result.stdout, f"{case}: accepted without the ✓ line\n{output}"
        return []
    lines = [line.removeprefix("✗ ") for line in result.stderr.splitlines() if line.strip()]
    problems = [line for line in lines if line.startswith(f"{file}: ")]
    assert problems, f"{case}: exit 1 but no error line names {file}\n{output}"
    fields = []
    for line in problems:
        head = line[len(f"{file}: "):].split(": ", 1)[0]
        if FIELD.match(head):
            fields.append(head)
    return fields


def _write_suite(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def _structured_cases(rng: random.Random) -> list[tuple[str, str, Any, str | None, bool]]:
    """(kind, description, suite data, field that must be named or None, must it fail?)."""
    cases = []
    paths = _paths(BASE)
    for _ in range(90):  # a value of the wrong type (or an absurd one) anywhere
        path = rng.choice(paths)
        data = copy.deepcopy(BASE)
        value = rng.choice(JUNK_VALUES)
        _get(data, path[:-1])[path[-1]] = value
        cases.append(("type", f"{_field(path)} = {value!r:.40}", data, _field(path), False))
    for _ in range(50):  # an unknown key in any mapping: refused by name
        parents = [p for p in [(), *paths] if isinstance(_get(BASE, p), dict)]
        parent = rng.choice(parents)
        data = copy.deepcopy(BASE)
        key = rng.choice(["zz_unknown", "Name", "shot", "seeds_", "metrics_", "lr_x"])  # a field nowhere
        if key in _get(data, parent):
            key += "_x"
        _get(data, parent)[key] = rng.choice(JUNK_VALUES[:8])
        cases.append(("unknown key", _field((*parent, key)), data, _field((*parent, key)), True))
    for _ in range(40):  # a field left out
        path = rng.choice([p for p in paths if isinstance(p[-1], str)])
        data = copy.deepcopy(BASE)
        del _get(data, path[:-1])[path[-1]]
        cases.append(("missing", f"without {_field(path)}", data, None, False))
    for path, values in ENUMS.items():
        for value in values:
            data = copy.deepcopy(BASE)
            _get(data, path[:-1])[path[-1]] = value
            cases.append(("enum", f"{_field(path)} = {value!r}", data, _field(path), True))
    for value in CLASS_SPLITS:
        data = copy.deepcopy(BASE)
        data["protocol"]["class_splits"] = value
        cases.append(("class splits", f"class_splits = {value!r:.60}", data, "protocol.class_splits", True))
    for number in (10**30, 10**400, -(10**30), 2**63, 2**64 + 1):  # huge numbers where counts go
        for path in (("protocol", "shots", 0), ("protocol", "eval_images_per_class"), ("budget", "steps"),
                     ("sweep", "num_samples"), ("evaluation", "samples_per_class")):
            data = copy.deepcopy(BASE)
            _get(data, path[:-1])[path[-1]] = number
            must_fail = path[0] == "protocol" or number < 0
            cases.append(("huge", f"{_field(path)} = {str(number)[:8]}… ({len(str(number))} digits)", data, _field(path) if must_fail else None,
                          must_fail))
    for top in ([1, 2], "a string", 42, None, [BASE], True):
        cases.append(("top level", f"top level {type(top).__name__}", top, None, True))
    return cases


def test_malformed_suite_files_are_refused_with_file_and_field(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    for n, (kind, what, data, field, must_fail) in enumerate(_structured_cases(rng)):
        file = _write_suite(tmp_path / f"s{n}.yaml", data)
        case = f"case {n} ({kind}: {what})"
        result = _validate(file)
        fields = _check(result, file, case)
        if must_fail:
            assert result.exit_code == 1, f"{case}: accepted\n{result.output}"
        if result.exit_code == 1 and data is not None and isinstance(data, dict):
            assert fields, f"{case}: no error line names a field\n{result.output}"
        if field is not None and result.exit_code == 1:
            assert any(_related(f, field) for f in fields), f"{case}: {field} not named in {fields}\n{result.output}"


def test_broken_yaml_empty_and_binary_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    text = yaml.safe_dump(BASE, sort_keys=False)
    files: list[tuple[str, bytes, bool]] = [
        ("empty", b"", True), ("blank", b"  \n\n", True), ("comment only", b"# nothing\n", True),
        ("not UTF-8", b"name: \xff\xfe\x00bad\n", True), ("UTF-16", text.encode("utf-16"), True),
        ("NUL bytes", b"\x00" * 64, True), ("deep nesting", b"[" * 5000 + b"]" * 5000, True),
        ("deep mapping", b"a: " + b"{b: " * 3000 + b"1" + b"}" * 3000 + b"\n", True),
        ("unclosed", b"name: [fuzz\n", True), ("tabs", text.replace("  ", "\t", 3).encode(), True),
        ("duplicate anchor alias", b"a: &x 1\nb: *y\n", True), ("python tag", b"!!python/object/apply:os.getcwd []\n", True),
    ]
    for i in range(60):  # random binary junk, some with a valid-looking start
        junk = rng.randbytes(rng.randint(1, 600))
        files.append((f"binary {i}", (text[: rng.randint(0, 80)].encode() if i % 2 else b"") + junk, False))
    for i in range(80):  # a valid suite with YAML syntax broken somewhere
        at = rng.randint(0, len(text))
        broken = text[:at] + rng.choice(SYNTAX_JUNK) + text[at:]
        files.append((f"syntax {i} at {at}", broken.encode("utf-8", "surrogatepass"), False))
    for n, (what, content, must_fail) in enumerate(files):
        file = tmp_path / f"y{n}.yaml"
        file.write_bytes(content)
        case = f"case {n} ({what})"
        result = _validate(file)
        _check(result, file, case)
        if must_fail:
            assert result.exit_code == 1, f"{case}: accepted\n{result.output}"


# --- image folders ---------------------------------------------------------------------------------------------------


def _image_bytes(rng: random.Random, fmt: str = "PNG", mode: str = "RGB", size: tuple[int, int] = (8, 8)) -> bytes:
    im = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    im = Image.new(mode, size, rng.randrange(1 << 16)) if mode.startswith("I") else im.convert(mode)
    out = io.BytesIO()
    im.save(out, fmt)
    return out.getvalue()


def _good_folder(root: Path, rng: random.Random, per_class: int = 4) -> None:
    for c in "abc":
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            (root / c / f"{i}.png").write_bytes(_image_bytes(rng))


IMAGE_SUITE = {
    "name": "fuzz-images",
    "dataset": {"name": "image_folder", "root": "images"},
    "protocol": {"base_classes": ["a", "b"], "novel_classes": ["c"], "shots": [1], "seeds": [0]},
    "methods": [{"name": "dcgan", "params": {"width": 16}}],
    "budget": {"steps": 2, "batch_size": 4},
    "evaluation": {"samples_per_class": 4, "metrics": []},
}


def _truncated(rng: random.Random, fmt: str) -> bytes:
    """A strict prefix that cannot decode: PNG cut inside its pixel data (past it Pillow needs no more), the other
    formats anywhere before their last bytes."""
    data = _image_bytes(rng, fmt)
    if fmt == "PNG":
        idat = data.index(b"IDAT") + 4
        (length,) = struct.unpack(">I", data[idat - 8:idat - 4])
        return data[: rng.randint(0, idat + length // 2)]
    return data[: rng.randint(0, len(data) - 3)]


def _bomb_bmp() -> bytes:
    """A 54-byte BMP header claiming 60000×60000 pixels: Pillow refuses it on open (DecompressionBombError)."""
    info = struct.pack("<IiiHHIIiiII", 40, 60000, 60000, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + len(info), 0, 0, 54) + info


def _image_cases(rng: random.Random) -> list[tuple[str, Any]]:
    """(description, damage) where damage(root, rng) changes a good folder and returns (paths that must be named --
    None when the folder is still valid -- and may the suite be refused anyway?)."""

    def put(relative: str, content: bytes):
        def damage(root: Path, rng: random.Random):
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            return [path]
        return damage

    def valid(relative: str, content: bytes):
        def damage(root: Path, rng: random.Random) -> None:  # None: nothing to name, the folder stays valid
            put(relative, content)(root, rng)
        return damage

    cases: list[tuple[str, Any]] = []
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif"), ("BMP", "bmp"), ("WEBP", "webp"),
                     ("TIFF", "tif")):
        for i in range(4):
            cases.append((f"truncated {fmt} {i}", put(f"{rng.choice('abc')}/t{i}.{ext}", _truncated(rng, fmt))))
    for ext in ("png", "jpg", "jpeg", "PNG", "webp"):
        cases.append((f"zero-byte .{ext}", put(f"a/empty.{ext}", b"")))
        cases.append((f"text as .{ext}", put(f"b/readme.{ext}", b"this is not an image\n" * 3)))
        cases.append((f"junk as .{ext}", put(f"c/junk.{ext}", b"\x89PNG\r\n\x1a\n" + rng.randbytes(200))))
    cases.append(("header claims 3.6e9 pixels", put("a/bomb.bmp", _bomb_bmp())))
    cases.append(("junk two folders down", put("b/nested/deeper/bad.png", rng.randbytes(100))))
    for i in range(12):  # random byte flips: may still decode; if not, the file must be named
        data = bytearray(_image_bytes(rng, rng.choice(["PNG", "JPEG", "GIF"])))
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cases.append((f"flipped bytes {i}", ("maybe", put(f"c/flip{i}.img.png", bytes(data)))))
    for mode in ("L", "LA", "P", "RGBA", "1", "I;16", "CMYK"):  # other modes: converted as the loader does
        fmt = "TIFF" if mode == "CMYK" else "PNG"
        cases.append((f"mode {mode}", valid(f"a/mode.{fmt.lower()}", _image_bytes(rng, fmt, mode))))
    for size in ((1, 1), (3, 50), (64, 8), (40, 40)):  # mismatched sizes: resized as the loader does
        cases.append((f"size {size}", valid("b/size.png", _image_bytes(rng, size=size))))
    cases.append(("PNG named .jpg", valid("c/really_png.jpg", _image_bytes(rng, "PNG"))))
    cases.append(("junk without an image extension", valid("a/notes.txt", rng.randbytes(50))))
    cases.append(("hidden junk", valid("a/.DS_Store.png", rng.randbytes(50))))
    cases.append(("an empty extra class folder", lambda root, rng: (root / "d").mkdir() or None))

    def broken_link(root: Path, rng: random.Random):
        link = root / "a" / "gone.png"
        link.symlink_to(root / "nowhere.png")
        return [link]

    def many_bad(root: Path, rng: random.Random):
        bad = [root / "b" / f"bad{i:02d}.png" for i in range(25)]
        for path in bad:
            path.write_bytes(b"")
        return bad

    cases += [("a broken link", broken_link), ("25 bad files", many_bad)]
    return cases


def test_damaged_image_folders_are_refused_naming_every_bad_file(tmp_path: Path) -> None:
    rng = random.Random(SEED + 2)
    for n, (what, damage) in enumerate(_image_cases(rng)):
        maybe = isinstance(damage, tuple)
        damage = damage[1] if maybe else damage
        case_dir = tmp_path / f"i{n}"
        _good_folder(case_dir / "images", rng)
        named = damage(case_dir / "images", rng)
        file = _write_suite(case_dir / "suite.yaml", IMAGE_SUITE)
        case = f"case {n} ({what})"
        result = _validate(file)
        fields = _check(result, file, case)
        if named is None:
            assert result.exit_code == 0, f"{case}: a valid folder was refused\n{result.output}"
            assert "images: all" in result.stdout, f"{case}: no image summary\n{result.output}"
            continue
        if maybe and result.exit_code == 0:
            continue
        assert result.exit_code == 1, f"{case}: accepted\n{result.output}"
        assert "dataset.root" in fields, f"{case}: dataset.root not named in {fields}\n{result.output}"
        shown = [p for p in named if f"dataset.root: {p.absolute()}: " in result.stderr]
        assert len(shown) == min(len(named), 20), f"{case}: {len(shown)} of {len(named)} named\n{result.output}"
        if len(named) > 20:
            assert f"... and {len(named) - 20} more bad images" in result.stderr, result.output


def test_an_emptied_novel_class_or_a_missing_root_names_the_field(tmp_path: Path) -> None:
    rng = random.Random(SEED + 3)
    _good_folder(tmp_path / "images", rng)
    for path in (tmp_path / "images" / "c").iterdir():
        path.unlink()
    file = _write_suite(tmp_path / "empty_novel.yaml", IMAGE_SUITE)
    result = _validate(file)
    fields = _check(result, file, "emptied novel class")
    assert result.exit_code == 1 and "protocol.shots[0]" in fields, result.output
    assert "0 training images of class 'c'" in result.stderr

    suite = copy.deepcopy(IMAGE_SUITE)
    suite["dataset"]["root"] = "no/such/folder"
    file = _write_suite(tmp_path / "no_root.yaml", suite)
    result = _validate(file)
    fields = _check(result, file, "missing root")
    assert result.exit_code == 1 and "dataset" in fields, result.output
    assert str(tmp_path / "no" / "such" / "folder") in result.stderr


@pytest.mark.parametrize("root", ["a\x00b", "~nobody_such_user/x", "/dev/null"])
def test_odd_dataset_roots_are_refused_at_the_field(tmp_path: Path, root: str) -> None:
    suite = copy.deepcopy(IMAGE_SUITE)
    suite["dataset"]["root"] = root
    file = _write_suite(tmp_path / "odd.yaml", suite)
    result = _validate(file)
    fields = _check(result, file, f"root {root!r}")
    assert result.exit_code == 1, result.output
    assert any(f.startswith("dataset") for f in fields), result.output
