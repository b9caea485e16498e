"""Process-level facts a trial depends on: devices, seeds, threads and provenance."""

from __future__ import annotations

import hashlib
import os
import platform
import re
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


_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# (key, pattern) over torch.__config__.show(): the two kernel libraries whose versions change float results
_BUILD_LIBRARIES = (("mkl", r"Math Kernel Library Version ([\d.]+)"), ("onednn", r"MKL-DNN v([\d.]+)"))


def parse_cpuinfo(text: str) -> dict[str, object]:
    """``cpu_model`` and ``cpu_flags`` (sorted) of the first processor in ``/proc/cpuinfo`` text; empty when absent.
    x86 names them ``model name``/``flags``, ARM ``CPU part``/``Features``; the first match wins."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # one processor is enough: the others are the same package
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu part")
    flags = fields.get("flags") or fields.get("features") or ""
    out: dict[str, object] = {}
    if model:
        out["cpu_model"] = model
    if flags:
        out["cpu_flags"] = sorted(set(flags.split()))
    return out


@lru_cache(maxsize=1)
def _static_facts() -> dict[str, object]:
    """The facts that cannot change while the process lives (the CPU, torch's build), read once: parsing cpuinfo and
    torch's build configuration costs milliseconds, and every trial records them."""
    facts: dict[str, object] = {}
    try:
        facts.update(parse_cpuinfo(Path("/proc/cpuinfo").read_text()))
    except OSError:
        pass
    facts.setdefault("cpu_model", platform.processor() or platform.machine() or "unknown")
    facts.setdefault("cpu_flags", [])
    facts["cpu_count"] = os.cpu_count()
    facts["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # the ISA torch's kernels dispatch to
    facts["mkldnn_enabled"] = bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
    config = torch.__config__.show()
    for key, pattern in _BUILD_LIBRARIES:
        match = re.search(pattern, config)
        facts[f"{key}_version"] = match.group(1) if match else None
    facts["cuda_version"] = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    facts["cudnn_version"] = str(cudnn) if cudnn else None
    return facts


def host_facts(device: torch.device) -> dict[str, object]:
    """What a result's numbers depend on beyond the code and seed: the CPU (model, flags, the ISA torch uses), the
    kernel libraries (MKL, oneDNN, CUDA, cuDNN), threads and determinism. Bit-identical results are only promised
    where these match (see README, "Devices and reproducibility"); ``harness reproduce`` compares them. Thread
    counts and the determinism switch are read on every call (a trial sets its threads just before)."""
    facts: dict[str, object] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python_executable": sys.executable,
        "device": str(device),
        **_static_facts(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "thread_env": {name: os.environ[name] for name in _THREAD_ENV if name in os.environ},
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts
