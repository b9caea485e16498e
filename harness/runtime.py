"""Process-level facts a trial depends on: devices, seeds, threads and provenance."""

from __future__ import annotations

import hashlib
import platform
import random
import subprocess
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

PROJECT_DIR = Path(__file__).resolve().parents[1]
_PACKAGES = ("fewshot-harness", "torch", "torchvision", "numpy", "pydantic", "ray", "mlflow", "optuna", "torch-fidelity")


def derive_seed(seed: int, *purpose: object) -> int:
    """A 63-bit seed derived from ``seed`` and a purpose, so fit, sampling and evaluation draw independent streams."""
    digest = hashlib.sha256(repr((seed, *purpose)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(requested: str = "auto", gpu_share: float = 0.0) -> torch.device:
    """CUDA when it is available and the trial was granted a GPU share (or asked for it), else CPU."""
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} requested but CUDA is not available on {platform.node()}")
        return torch.device(requested)
    if requested != "auto":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {requested!r}")
    return torch.device("cuda") if gpu_share > 0 and torch.cuda.is_available() else torch.device("cpu")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The project's commit, with ``+dirty`` when tracked files differ from it; ``unknown`` outside a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_DIR, capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def host_facts(device: torch.device) -> dict[str, object]:
    facts: dict[str, object] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python_executable": sys.executable,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts
