"""Writing the files the harness reads back, and reading them back checked.

Everything a run leaves on disk — ``result.json``, ``run.json``, ``tracking.json``, checkpoints, saved samples,
evaluator and reference caches — goes through this module, for two reasons:

* **Writes are atomic.** A file is written to a unique temporary name beside it and renamed over it, so a reader (a
  concurrent trial, a resumed run, a report) sees the old file or the new one, never half of one, and two writers
  never share a temporary name.
* **Reads are checked and never run code.** Tensor files are loaded with ``torch.load(weights_only=True)``: tensors,
  containers and plain values only, so a crafted ``checkpoint.pt`` cannot execute anything when a trial resumes
  (with ``--storage s3://…`` anyone who can write the bucket could otherwise run code on every node). A file that
  cannot be read raises :class:`DamagedFile`, which names the file, says what is wrong with it and what to do.
  Callers decide what a damage means: a cache entry or an unfinished trial's checkpoint is *derived* (set aside with
  :func:`set_aside`, recomputed, with a warning naming it); a finished trial's result is not (reported by path, with
  ``--recompute``). Nothing is deleted: a damaged file is renamed, never overwritten.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

__all__ = [
    "DamagedFile", "load_checked_pickle", "load_samples", "load_tensors", "read_json", "read_json_object",
    "save_samples", "save_tensors", "set_aside", "write_bytes", "write_json", "write_text",
]


class DamagedFile(ValueError):
    """A file the harness wrote that cannot be read back as what it should be.

    ``problem`` says what is wrong (not JSON, cut short, holds code, a field of the wrong type), ``advice`` what the
    user can do; both are in the message, after the path."""

    def __init__(self, path: str | Path, problem: str, advice: str = "") -> None:
        self.path, self.problem, self.advice = Path(path), problem, advice
        super().__init__(f"{path}: {problem}" + (f"; {advice}" if advice else ""))


# ------------------------------------------------------------------------------------------------------- writing


def write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically (unique temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it private; run files are ordinary readable files
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | Path, data: Any, *, indent: int | None = 2, sort_keys: bool = True) -> Path:
    return write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, default=str))


def save_tensors(path: str | Path, data: Any) -> Path:
    """``torch.save`` of tensors, containers and plain values, atomically. Refuses (``TypeError``, before anything
    is written) what :func:`load_tensors` would refuse to read back, so a checkpoint that cannot be resumed from is
    found when it is made, not when it is needed."""
    import io

    import torch

    _check_plain(data, "")
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return write_bytes(path, buffer.getvalue())


_PLAIN = (str, int, float, bool, bytes, type(None))


def _check_plain(value: Any, where: str) -> None:
    import torch

    if isinstance(value, (torch.Tensor, *_PLAIN, torch.dtype, torch.device, torch.Size)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, _PLAIN):
                raise TypeError(f"state{where}: key {key!r} of type {type(key).__name__} cannot be loaded back "
                                "without unpickling code")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(f"state{where} is a {type(value).__module__}.{type(value).__qualname__}: only tensors, "
                    "containers and plain values can be loaded back without unpickling code")


# ------------------------------------------------------------------------------------------------------- reading


def read_json(path: str | Path, *, advice: str = "") -> Any:
    """The JSON in ``path``. ``FileNotFoundError`` if it is missing (callers usually test that first);
    :class:`DamagedFile` if it cannot be read or is not JSON."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedFile(path, f"cannot be read ({exc})", advice) from None
    if not text.strip():
        raise DamagedFile(path, "is empty", advice)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DamagedFile(path, f"is not valid JSON, cut short or overwritten ({exc})", advice) from None


def read_json_object(path: str | Path, *, required: tuple[str, ...] = (), advice: str = "") -> dict[str, Any]:
    """:func:`read_json`, checked to be an object holding every key of ``required``."""
    data = read_json(path, advice=advice)
    if not isinstance(data, dict):
        raise DamagedFile(path, f"holds a JSON {type(data).__name__}, not an object", advice)
    missing = [key for key in required if key not in data]
    if missing:
        raise DamagedFile(path, f"lacks the field(s) {', '.join(missing)}", advice)
    return data


def load_tensors(path: str | Path, *, advice: str = "", mmap: bool = False) -> Any:
    """What :func:`save_tensors` wrote, loaded on the CPU with ``weights_only=True`` (no code runs, whatever the
    file holds). :class:`DamagedFile` when it is cut short, not a torch file, or holds anything but tensors,
    containers and plain values."""
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        lines = str(exc).strip().splitlines()
        refused = next((line.strip() for line in lines if "global" in line.lower()), None)
        if refused:  # weights_only refused to import something: the file asks to build objects, i.e. run code
            raise DamagedFile(path, f"holds objects other than tensors and plain values, refused because loading "
                                    f"them would run code from the file ({refused})", advice) from None
        detail = lines[0] if lines else exc
        raise DamagedFile(path, f"is not a readable torch file, cut short or overwritten ({detail})", advice) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError) as exc:
        raise DamagedFile(path, f"is not a readable torch file, cut short or overwritten "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                          advice) from None


def set_aside(path: str | Path, reason: str) -> Path:
    """Rename ``path`` to ``<name>.<reason>-<UTC timestamp>`` beside it (never overwriting) and return the new
    path: how a damaged or replaced file is kept for inspection instead of being deleted."""
    path = Path(path)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target, n = path.with_name(f"{path.name}.{reason}-{stamp}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.{reason}-{stamp}-{n}"), n + 1
    os.replace(path, target)
    return target


# ------------------------------------------------------------------------------------------ a trial's samples.pt


def save_samples(path: str | Path, images: Any, labels: Any) -> Path:
    """A trial's samples as ``samples.pt``: images in [0, 1] stored as 8-bit levels (N, C, H, W) — a quarter of the
    float size, and exactly what the trial evaluated — and their int64 labels (N)."""
    return save_tensors(path, {"images": (images * 255).round().to("cpu").byte(), "labels": labels.to("cpu").long()})


def load_samples(path: str | Path, *, advice: str = "") -> dict[str, Any]:
    """``{"images": uint8 (N, C, H, W), "labels": int64 (N)}`` from a ``samples.pt``, checked: shapes, dtypes and
    counts; :class:`DamagedFile` naming what does not fit. (Files of earlier versions with float images in [0, 1]
    are accepted as such.)"""
    import torch

    data = load_tensors(path, advice=advice)
    if not isinstance(data, dict) or not {"images", "labels"} <= set(data):
        raise DamagedFile(path, "is not a samples file (expected a dict with images and labels)", advice)
    images, labels = data["images"], data["labels"]
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise DamagedFile(path, f"images are not a 4-d tensor (N, C, H, W): {_describe(images)}", advice)
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise DamagedFile(path, f"images have dtype {images.dtype}, expected uint8", advice)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point():
        raise DamagedFile(path, f"labels are not a 1-d integer tensor: {_describe(labels)}", advice)
    if len(labels) != len(images):
        raise DamagedFile(path, f"{len(images)} images but {len(labels)} labels", advice)
    return {"images": images, "labels": labels.long()}


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__}" + (f" of shape {tuple(shape)}, dtype {value.dtype}" if shape is not None else "")


# ------------------------------------------------------------------------------- the harness's own pickles, checked

_SAFE_BUILTINS = frozenset({"set", "frozenset", "dict", "list", "tuple", "int", "float", "complex", "bool", "str",
                            "bytes", "bytearray", "slice", "range", "object"})


# what pickles of NumPy arrays, random states and common containers call (not classes, so named one by one)
_SAFE_GLOBALS = frozenset({
    ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"), ("collections", "OrderedDict"),
    ("collections", "defaultdict"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy.random._pickle", "__randomstate_ctor"), ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__generator_ctor"), ("numpy.random._mt19937", "MT19937"),
    ("numpy.random._pcg64", "PCG64"),
})


class _AllowlistUnpickler(pickle.Unpickler):
    def __init__(self, handle, allowed: tuple[str, ...], functions: frozenset[tuple[str, str]], path: Path) -> None:
        super().__init__(handle)
        self.allowed, self.functions, self.path = allowed, functions, path

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle's hook
        if ((module == "builtins" and name in _SAFE_BUILTINS) or (module, name) in _SAFE_GLOBALS
                or (module, name) in self.functions):
            return super().find_class(module, name)
        if any(module == a or module.startswith(a + ".") for a in self.allowed):
            found = super().find_class(module, name)
            if isinstance(found, type):  # a class of the allowed packages; their functions could do anything
                return found
        raise DamagedFile(self.path, f"asks to load {module}.{name}, which is not among the classes the harness "
                                     "writes there; refused, because loading it could run code from the file")


def load_checked_pickle(path: str | Path, allowed: tuple[str, ...], functions: tuple[tuple[str, str], ...] = (), *,
                        advice: str = "") -> Any:
    """A pickle the harness wrote itself (the sweep searcher's snapshot), loaded with only the classes of the
    ``allowed`` module prefixes, the ``(module, name)`` ``functions`` named, plain builtins and NumPy arrays and
    random states importable: a file crafted to call anything else is refused with :class:`DamagedFile` before
    anything in it runs."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return _AllowlistUnpickler(handle, allowed, frozenset(functions), path).load()
    except DamagedFile as exc:
        raise DamagedFile(path, exc.problem, advice) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as exc:
        raise DamagedFile(path, f"is not a readable pickle, cut short or overwritten ({type(exc).__name__}: {exc})",
                          advice) from None
