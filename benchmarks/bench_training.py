"""Benchmark: training throughput and model-FLOP utilisation (MFU) of the methods' ``fit`` against a plain PyTorch loop.

Per method (28×28 embedded MNIST, batch 64; digits 0-4 base, 5-9 novel with 10 shots; unconditional methods fit digit
5's shots) two loops run the same networks, batch and losses, measured side by side in one run:

* ``plain``: the loop of the usual PyTorch example scripts (the DCGAN example): batches from a ``DataLoader``
  (``shuffle=True``, default collate, ``num_workers=0``, over a ``TensorDataset`` of the training images in [-1, 1];
  a pool smaller than a batch is repeated to fill one), ``zero_grad/backward/step`` and ``loss.item()`` per update,
  fp32, the method's optimisers rebuilt with PyTorch's default implementation. GAN step: per critic update
  ``fake = G(z)``, D on ``fake.detach()``; the generator update reuses the last ``fake`` (D's weights are not frozen,
  so their gradients are computed and discarded, as in the example). MetaCGAN: its modules and losses, fakes made with
  the encoders' gradient path (the paper's rule, so not detached) and regenerated for the G update, batches from a base
  or a novel ``DataLoader`` as its ``n_c`` says. GLICO: its generator, codes, classifier and reconstruction loss, one
  update of codes, generator and classifier per batch (the official shuffled loader: one batch of all the shots per
  epoch), the perceptual features of the real images computed per batch (``fit`` caches them). ``plain-bf16`` is
  the same loop with the forward under bf16 autocast (the textbook way), to show what bf16 alone gives.
* ``fit``: the method's ``fit`` through the harness interface with its default settings (bf16 + channels-last for
  every method here since its paired trial; CGAN and MetaCGAN add fold_output, label_lookup and fused Adam), and
  ``fit-*`` with each speed setting of :mod:`methods.performance` written out in full (``fp32``, ``bf16``, ``cl`` =
  channels-last, ``fused`` optimiser, ``fold`` = the output layer as a product + ``F.fold``, ``lookup`` = the label
  maps as a per-class lookup, ``compile``), so that a variant's meaning does not move when a default does. A setting
  a method lacks is skipped.

Steps/s: one step is one generator update (with its ``n_critic`` critic updates), GLICO one optimisation step. Each
configuration runs a few warm-up steps, then a fixed wall-clock window; timestamps are taken after every step
(``fit``: the ``step_end`` hook, which reads the losses every 50th step as the harness logs them), so setup (data,
GLICO's base-classifier pre-training, shortened here to 20 steps since it is excluded anyway) is never timed.
Thread settings: ``1`` and ``2`` threads in one process, and ``packed`` = two 1-thread processes running the same
configuration at once (their windows start together), total steps/s: how the harness runs trials on 2 cores.

MFU = FLOPs per step × steps/s ÷ peak, FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode`` over real
training steps of that loop (nominal FLOPs, eager; convolutions and matrix products, forward and backward, every
critic update), peak = the best of a warm 2048³ matmul in the same dtype and thread count measured in the same run
(packed: the 2-thread peak). bf16 rows (``fit`` included where its default is bf16) are against the bf16 peak. A
profile (``torch.profiler``, 1 thread) of ``fit-fp32`` and ``fit-bf16-cl`` (``--profile``) names what the time goes to.

``--repeat N`` times every window N times, in interleaved rounds (every other round in reverse order), and gives the
median with its spread; the "× plain" column and the gains listed under the table are medians of per-round ratios
(variant and reference timed seconds apart), which cancel the machine's speed drifting during the run.

    PYTHONPATH=. python benchmarks/bench_training.py [--quick] [--methods dcgan,cgan] [--threads 1,2,packed]
        [--window 1.5] [--repeat 5] [--compile] [--out reports/benchmarks_training.md]

Prints ratios, asserts nothing about timings. Quiet machine wanted: the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import multiprocessing as mp
import os
import platform
import re
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.api import Budget, FewShotTask, LabeledImages, NullHooks  # noqa: E402
from harness.data import dataset_config, load_dataset, make_split  # noqa: E402
from harness.registry import get_method  # noqa: E402
from methods.adversarial import AdversarialMethod  # noqa: E402
from methods.glico import GLICO  # noqa: E402
from methods.metacgan import ClassGroups, MetaCGAN  # noqa: E402

BATCH = 64
LOG_EVERY = 50  # the suites' log interval (Budget.log_every's default): the host syncs fit really does
BASE, NOVEL, SHOTS = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9), 10
WARMUP = 3  # steps before the timed window (first-call allocations, oneDNN primitive creation)
COMPILE_WARMUP = 6  # compilation (and the recompilations of the first steps) happens here

# label -> (registered method, params): the default suite's widths (suites/fewshot_mnist.yaml); wgan_gp at the same
# width 32 (it is only in the full suite); DCGAN at width 64 (1.5 M parameters) as issue #8 quotes it
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "dcgan": ("dcgan", {"width": 32}),
    "dcgan-w64": ("dcgan", {"width": 64}),
    "wgan_gp": ("wgan_gp", {"width": 32}),
    "cgan": ("cgan", {"width": 32}),
    "metacgan": ("metacgan", {"width": 32}),
    "glico": ("glico", {"base_classifier_steps": 20}),
}
# variant -> (loop, speed settings). ``fit`` is the method's defaults (bf16 + channels-last for DCGAN, MetaCGAN and
# GLICO since the bf16 trial, for WGAN-GP since its own, and for CGAN and MetaCGAN with fold_output, label_lookup and
# fused Adam since theirs; fp32 for WGAN); every other ``fit-*`` variant is its settings on top of OFF (below), so its
# meaning does not move with the defaults.
FP32 = {"precision": "fp32", "channels_last": False}
BF16_CL = {"precision": "bf16", "channels_last": True}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("plain", {}),
    "plain-bf16": ("plain", {"precision": "bf16"}),
    "fit": ("fit", {}),
    "fit-fp32": ("fit", FP32),
    "fit-fused": ("fit", {**FP32, "fused_optimizer": True}),
    "fit-cl": ("fit", {"precision": "fp32", "channels_last": True}),
    "fit-bf16": ("fit", {"precision": "bf16", "channels_last": False}),
    "fit-bf16-cl": ("fit", BF16_CL),
    "fit-bf16-cl-fused": ("fit", {**BF16_CL, "fused_optimizer": True}),
    # the slow spots of issue #16: the output layer as a product + F.fold, the label maps as a per-class lookup
    "fit-fp32-fold": ("fit", {**FP32, "fold_output": True}),
    "fit-fp32-lookup": ("fit", {**FP32, "label_lookup": True}),
    "fit-bf16-cl-fold": ("fit", {**BF16_CL, "fold_output": True}),
    "fit-bf16-cl-lookup": ("fit", {**BF16_CL, "label_lookup": True}),
    "fit-bf16-cl-fold-lookup-fused": ("fit", {**BF16_CL, "fold_output": True, "label_lookup": True,
                                              "fused_optimizer": True}),
    "fit-compile": ("fit", {**FP32, "compile": True}),
    "fit-bf16-compile": ("fit", {"precision": "bf16", "channels_last": False, "compile": True}),
}
NO_COMPILE = {"wgan_gp"}  # the gradient penalty's double backward (its config refuses compile)
DEFAULT_VARIANTS = [v for v in VARIANTS if "compile" not in v]
PACKED_VARIANTS = ["plain", "fit", "fit-fp32", "fit-bf16-cl"]
PROFILED = ["fit-fp32", "fit-bf16-cl"]
# (setting, its reference): the gains the notes list, each measured against the variant it adds one thing to
GAINS = [("fit-bf16-cl", "fit-fp32"), ("fit-fp32-fold", "fit-fp32"), ("fit-fp32-lookup", "fit-fp32"),
         ("fit-bf16-cl-fold", "fit-bf16-cl"), ("fit-bf16-cl-lookup", "fit-bf16-cl"),
         ("fit-bf16-cl-fused", "fit-bf16-cl"), ("fit-bf16-cl-fold-lookup-fused", "fit-bf16-cl")]
COMPILE_BASE = {"fit-compile": "fit-fp32", "fit-bf16-compile": "fit-bf16"}  # what each compiled variant is against


# every ``fit-*`` variant starts from these, where the method has the field, so that a setting it does not name is off
# whatever the method's defaults are (CGAN's default, for one, turns fold_output, label_lookup and fused Adam on)
OFF = {"precision": "fp32", "channels_last": False, "fused_optimizer": False, "fold_output": False,
       "label_lookup": False, "compile": False}


def settings(label: str, variant: str) -> dict[str, Any]:
    """The config fields ``variant`` builds ``label`` with: nothing for ``fit`` (the method's defaults), else
    :data:`OFF` overridden by the variant's own settings; ``plain`` is built as ``fit-fp32`` (fp32, NCHW, no fused
    or reformulated kernels: the textbook loop calls the networks directly)."""
    loop, options = VARIANTS[variant]
    if variant == "fit":
        return {}
    if loop == "plain":
        options = VARIANTS["fit-fp32"][1]
    fields = get_method(METHODS[label][0]).Config.model_fields
    return {**{key: value for key, value in OFF.items() if key in fields}, **options}


def applies(label: str, variant: str) -> bool:
    """Whether ``variant`` is a setting ``label`` has (``label_lookup`` exists for the GAN baselines only, and only
    changes something for the conditional ones)."""
    loop, options = VARIANTS[variant]
    if loop == "plain":
        return True
    cls = get_method(METHODS[label][0])
    if options.get("label_lookup") and not cls.conditional:
        return False
    return all(key in cls.Config.model_fields for key in options)


def precision_of(label: str, variant: str) -> str:
    """The arithmetic ``variant`` of ``label`` trains in (``fit`` follows the method's default), so that its MFU is
    against the matching peak."""
    loop, options = VARIANTS[variant]
    if loop == "plain":
        return options.get("precision", "fp32")
    name, params = METHODS[label]
    return get_method(name).Config(**{**params, **settings(label, variant)}).precision


# ---- data ------------------------------------------------------------------------------------------------------------

def make_tasks() -> dict[bool, FewShotTask]:
    """``{conditional: task}``: base 0-4 + 10 shots of 5-9; unconditional: the 10 shots of digit 5 alone."""
    dataset = load_dataset(dataset_config(name="mnist", source="embedded"))
    task = make_split(dataset, BASE, NOVEL, SHOTS, seed=0).task
    five = task.novel.of_class(NOVEL[0])
    empty = LabeledImages(five.images[:0], five.labels[:0])
    return {True: task, False: FewShotTask(empty, five, (), (NOVEL[0],), task.image_shape, task.seed)}


def build(label: str, options: dict[str, Any], task: FewShotTask):
    name, params = METHODS[label]
    cls = get_method(name)
    return cls(cls.Config(**{**params, **options}), task.image_shape, 10, "cpu")


def loader(images: torch.Tensor, *tensors: torch.Tensor, batch: int = BATCH, drop_last: bool = True) -> Iterator:
    """Endless batches of a shuffled ``DataLoader`` (a new shuffle per epoch); a pool smaller than a batch is
    repeated so that one batch can be drawn."""
    repeat = math.ceil(batch / len(images)) if drop_last else 1
    data = TensorDataset(*(t.repeat(repeat, *[1] * (t.dim() - 1)) for t in (images, *tensors)))
    dl = DataLoader(data, batch_size=batch, shuffle=True, drop_last=drop_last)
    while True:
        yield from dl


# ---- timing ----------------------------------------------------------------------------------------------------------

class Stop(Exception):
    """Raised from a step callback to end a measurement."""


@dataclass
class Clock:
    """Called after every step: after ``warmup`` steps (and a barrier, when packed) opens a window of ``window``
    seconds, then raises :class:`Stop`. ``on_step(n)`` observes step ends (FLOP counting, profiling)."""

    warmup: int
    window: float
    barrier: Any = None
    max_steps: int | None = None
    on_step: Callable[[int], None] | None = None
    n: int = 0
    t_start: float = 0.0
    t0: float = 0.0
    rate: float = float("nan")
    warmup_seconds: float = float("nan")

    def start(self) -> None:
        self.t_start = time.perf_counter()

    def tick(self) -> None:
        self.n += 1
        if self.on_step is not None:
            self.on_step(self.n)
        now = time.perf_counter()
        if self.n == self.warmup:
            self.warmup_seconds = now - self.t_start
            if self.barrier is not None:
                self.barrier.wait(timeout=600)
            self.t0 = time.perf_counter()
        elif self.n > self.warmup and (now - self.t0 >= self.window or self.n == self.max_steps):
            self.rate = (self.n - self.warmup) / (now - self.t0)
            raise Stop


class ClockHooks(NullHooks):
    """Harness-like hooks: losses read (one host sync) every ``LOG_EVERY``-th step as the harness logs them, and the
    clock ticked after every step."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(log_every=LOG_EVERY)
        self.clock = clock

    def step_end(self, step: int, losses, info=None) -> None:
        super().step_end(step, losses, info)
        self.clock.tick()


def run_fit(method, task: FewShotTask, clock: Clock) -> None:
    clock.start()
    budget = Budget(steps=10**9, batch_size=BATCH, log_every=LOG_EVERY)
    with contextlib.suppress(Stop):
        method.fit(task, budget, ClockHooks(clock))


# ---- the plain loop --------------------------------------------------------------------------------------------------

@dataclass
class Update:
    """One optimisation of the textbook loop: ``loss()`` builds the graph, then zero_grad, backward, step."""

    optimizers: list[torch.optim.Optimizer]
    loss: Callable[[], torch.Tensor]
    after: Callable[[], None] | None = None


def default_optimizer(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimiser class, parameters and hyperparameters, PyTorch's default implementation."""
    defaults = {k: v for k, v in opt.defaults.items() if k not in ("fused", "foreach")}
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in opt.param_groups]
    return type(opt)(groups, **defaults)


def textbook_loop(updates: Callable[[int], list[Update]], clock: Clock, bf16: bool) -> None:
    """The loop of the PyTorch example scripts, for any method: per update forward (under autocast for bf16, the
    documented way: forward only), zero_grad, backward, step, ``loss.item()``."""
    clock.start()
    with contextlib.suppress(Stop):
        for step in itertools.count():
            for update in updates(step):
                with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                    loss = update.loss()
                for opt in update.optimizers:
                    opt.zero_grad()
                loss.backward()
                for opt in update.optimizers:
                    opt.step()
                if update.after is not None:
                    update.after()
                loss.item()
            clock.tick()


def gan_updates(m: AdversarialMethod, batches: Callable[[int], Iterator], make_fake: Callable, detach: bool):
    """A GAN step for the textbook loop from the method's own networks, losses and optimisers: ``n_critic`` D
    updates on ``make_fake(labels, step_state)``, then the G update on the last fake (``detach``) or a new one."""
    opt_g, opt_d = default_optimizer(m.opt_g), default_optimizer(m.opt_d)
    m._rng = torch.Generator().manual_seed(0)  # the gradient penalty's mixing weights
    state: dict[str, Any] = {}

    def d_loss() -> torch.Tensor:
        real, labels = next(state["batches"])
        cond = labels if m.conditional else None
        fake = make_fake(cond, state)
        fake_d = fake.detach() if detach else fake
        state.update(fake=fake, cond=cond)
        loss = m.d_loss(m.D(real, cond), m.D(fake_d, cond), real, fake_d, cond)
        penalty = m.penalty(real, fake_d, cond)
        return loss if penalty is None else loss + penalty

    def g_loss() -> torch.Tensor:
        fake = state["fake"] if detach else make_fake(state["cond"], state)
        return m.g_loss(m.D(fake, state["cond"]))

    def updates(step: int) -> list[Update]:
        state.clear()
        state["batches"] = batches(step)
        state["step"] = step
        return [Update([opt_d], d_loss, m.after_d_step)] * m.n_critic + [Update([opt_g], g_loss)]

    return updates


def plain_updates(m, task: FewShotTask) -> Callable[[int], list[Update]]:
    """The textbook loop's step for method ``m`` (see the module docstring for what each one is)."""
    if isinstance(m, MetaCGAN):
        c = m.config
        groups = {"base": ClassGroups.of(task.base, m.num_classes), "novel": ClassGroups.of(task.novel, m.num_classes)}
        data = {k: loader(g.images, g.labels) for k, g in groups.items()}

        def source(step: int) -> str:
            return "base" if step % c.n_c == 0 else "novel"

        def make_fake(labels, state):
            if "context" not in state:
                state["context"] = groups[source(state["step"])].context(labels, c.support_size)
            z, eps = torch.randn(len(labels), c.z_dim), torch.randn(len(labels), c.latent_dim)
            return m.generate(z, labels, state["context"], eps)

        return gan_updates(m, lambda step: data[source(step)], make_fake, detach=False)
    if isinstance(m, AdversarialMethod):
        pool, _ = m.training_pool(task)
        data = loader(pool.images * 2 - 1, pool.labels)
        return gan_updates(m, lambda step: data, lambda cond, state: m.G(torch.randn(BATCH, m.config.z_dim), cond),
                           detach=True)
    if isinstance(m, GLICO):
        c = m.config
        m.fit(task, Budget(steps=1, batch_size=BATCH), NullHooks())  # codes, classifiers, base-classifier training
        pool, _ = m.training_pool(task)
        targets = torch.as_tensor([m.classes.index(int(y)) for y in pool.labels])
        data = loader(pool.images * 2 - 1, targets, torch.arange(len(targets)), drop_last=False)
        optimizers = [default_optimizer(o) for o in (m.opt_codes, m.opt_g, m.opt_c) if o is not None]

        def loss() -> torch.Tensor:
            real, y, index = next(data)
            noise = torch.randn(len(index), c.noise_dim) * c.noise_std if c.noise_dim else None
            fake = m.G(m.codes[index], noise) * 2 - 1
            rec, _ = m.reconstruction_loss(fake, real)
            return rec + c.gamma * F.cross_entropy(m.classifier(fake), y) if m.classifier is not None else rec

        @torch.no_grad()
        def project() -> None:
            m.codes.div_(m.codes.norm(dim=1, keepdim=True).clamp_min(1e-12))

        return lambda step: [Update(optimizers, loss, project)]
    raise TypeError(f"no plain loop for {type(m).__name__}")


# ---- one measurement -------------------------------------------------------------------------------------------------

def run_variant(label: str, variant: str, tasks: dict[bool, FewShotTask], clock: Clock) -> None:
    loop, options = VARIANTS[variant]
    m = build(label, settings(label, variant), tasks[get_method(METHODS[label][0]).conditional])
    if loop == "plain":
        textbook_loop(plain_updates(m, tasks[m.conditional]), clock, bf16=options.get("precision") == "bf16")
    else:
        run_fit(m, tasks[m.conditional], clock)


def measure_rate(label: str, variant: str, tasks, window: float, barrier=None) -> dict[str, Any]:
    warmup = COMPILE_WARMUP if "compile" in variant else WARMUP
    clock = Clock(warmup, window, barrier)
    run_variant(label, variant, tasks, clock)
    return {"rate": clock.rate, "warmup_s": clock.warmup_seconds, "warmup_steps": warmup}


class _NoModuleTracking:
    """Stands in for FlopCounterMode's module tracker, whose hooks make ``autograd.grad`` on a leaf input (the
    gradient penalty) fail; the totals do not need the per-module attribution."""

    parents = ("Global",)

    def __enter__(self) -> _NoModuleTracking:
        return self

    def __exit__(self, *exc) -> None:
        return None


def count_flops(label: str, loop: str, tasks, steps: int = 4) -> float:
    """FLOPs per step of ``loop`` (eager; nominal, the same in any precision), averaged over ``steps`` steps after
    the first (MetaCGAN alternates base and novel batches every ``n_c = 4`` steps)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()
    totals: dict[int, int] = {}
    clock = Clock(warmup=1, window=math.inf, max_steps=1 + steps,
                  on_step=lambda n: totals.__setitem__(n, counter.get_total_flops()))
    with counter:
        run_variant(label, loop, tasks, clock)
    return (totals[1 + steps] - totals[1]) / steps


def profile(label: str, variant: str, tasks, steps: int = 6) -> dict[str, Any]:
    """Share of self CPU time per op over ``steps`` steps (after warm-up), the optimiser's inclusive share and the
    costliest convolution calls by input shapes (``aten::_convolution``'s self time is the transposed convolutions'
    forward: oneDNN's deconvolution runs inside it)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    prof = torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True)

    def on_step(n: int) -> None:
        if n == WARMUP:
            prof.start()
        elif n == WARMUP + steps:
            prof.stop()

    clock = Clock(warmup=WARMUP, window=math.inf, max_steps=WARMUP + steps, on_step=on_step)
    run_variant(label, variant, tasks, clock)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    optimizer = sum(e.cpu_time_total for e in prof.key_averages() if e.key.startswith("Optimizer."))
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:6]

    def share(pred) -> float:
        return sum(e.self_cpu_time_total for e in events if pred(e.key)) / total

    convs = [e for e in prof.key_averages(group_by_input_shape=True)
             if e.key in ("aten::convolution_backward", "aten::_convolution", "aten::mkldnn_convolution")]
    slowest = sorted(convs, key=lambda e: e.self_cpu_time_total, reverse=True)[:3]
    return {
        "top": [(e.key.removeprefix("aten::"), e.self_cpu_time_total / total) for e in top],
        "convs": [(e.key.removeprefix("aten::"), [list(s) for s in e.input_shapes[:3]],
                   e.self_cpu_time_total / 1000 / steps) for e in slowest],
        "conv": share(lambda k: "conv" in k),
        "matmul": share(lambda k: k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
        "norm": share(lambda k: "norm" in k),
        "optimizer": optimizer / total,
        "ms_per_step": total / 1000 / steps,
    }


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` warm n³ matmuls."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


# ---- workers ---------------------------------------------------------------------------------------------------------

def schedule(jobs: list[tuple], repeat: int) -> list[tuple[int, tuple]]:
    """``(round, job)`` in running order: peaks, FLOP counts and profiles once, the timed windows ``repeat`` times,
    every other round in reverse order, so that a drift of the machine's speed (other tenants, clock changes) during
    the run falls on every variant alike instead of on the ones that happen to run late."""
    rates = [job for job in jobs if job[0] == "rate"]
    plan = [(0, job) for job in jobs if job[0] != "rate"]
    for r in range(repeat):
        plan += [(r, job) for job in (rates if r % 2 == 0 else rates[::-1])]
    return plan


def worker(jobs: list[tuple], threads: int, window: float, repeat: int, barrier, queue) -> None:
    """Runs ``jobs`` in this process with ``threads`` torch threads, putting ``(job, result)`` on ``queue``."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's start/stop chatter on stderr
    torch.set_num_threads(threads)
    tasks = make_tasks()
    for round_, job in schedule(jobs, repeat):
        kind, *args = job
        try:
            if kind == "peak":
                result: Any = matmul_peak(getattr(torch, args[0]))
            elif kind == "flops":
                result = count_flops(*args, tasks)
            elif kind == "profile":
                result = profile(*args, tasks)
            else:
                result = {**measure_rate(*args, tasks, window, barrier), "round": round_}
        except Exception as exc:  # noqa: BLE001 - a failing configuration is reported in the table
            traceback.print_exc()
            if barrier is not None:
                barrier.abort()
            result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
        queue.put((job, result))
    queue.put(None)


def run_workers(jobs: list[tuple], threads: int, window: float, processes: int = 1,
                repeat: int = 1) -> dict[tuple, list[Any]]:
    """``jobs`` in ``processes`` fresh processes at once (``packed``: their timed windows start together)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    barrier = ctx.Barrier(processes) if processes > 1 else None
    procs = [ctx.Process(target=worker, args=(jobs, threads, window, repeat, barrier, queue))
             for _ in range(processes)]
    for p in procs:
        p.start()
    results: dict[tuple, list[Any]] = {}
    done = 0
    while done < processes:
        item = queue.get()
        if item is None:
            done += 1
            continue
        job, result = item
        results.setdefault(tuple(job), []).append(result)
        if job[0] == "rate" and processes == 1:
            r = result.get("rate", float("nan"))
            print(f"  [{threads} thr] {job[1]:<10} {job[2]:<18} {r:8.2f} steps/s", flush=True)
    for p in procs:
        p.join()
    return results


# ---- report ----------------------------------------------------------------------------------------------------------

def machine() -> dict[str, str]:
    """The CPU as the tables name it: model name (a VM may mask it to "AMD EPYC"), so also family/model/stepping,
    the ISA flags that decide the kernels (and the one torch dispatches to), and oneDNN's version."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    cpu = fields.get("model name", "unknown")
    if "cpu family" in fields:
        cpu += (f" (family {fields['cpu family']}, model {fields.get('model', '?')}, "
                f"stepping {fields.get('stepping', '?')})")
    present = set(fields.get("flags", "").split())
    flags = " ".join(f for f in ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile") if f in present)
    onednn = re.search(r"MKL-DNN v([\d.]+)", torch.__config__.show())
    return {"cpu": cpu, "flags": f"{flags}; torch ISA {torch.backends.cpu.get_cpu_capability()}"
            f"{'; oneDNN ' + onednn.group(1) if onednn else ''}", "cores": str(os.cpu_count()),
            "torch": torch.__version__, "python": platform.python_version()}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def busy_cpu_seconds() -> float:
    """CPU seconds all processes have spent so far (``/proc/stat``, everything but idle and iowait)."""
    with contextlib.suppress(OSError, ValueError):
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    return math.nan


def own_cpu_seconds() -> float:
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def fmt(x: float | None, spec: str) -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows, 1 thread only (development)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--variants", default=None, help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--threads", default=None, help="of 1, 2, packed (default 1,2,packed; quick: 1)")
    parser.add_argument("--window", type=float, default=None, help="seconds per timed window (default 1.5; quick 0.3)")
    parser.add_argument("--compile", action="store_true", help="also the torch.compile variants (1 thread only)")
    parser.add_argument("--repeat", type=int, default=1, help="timed windows per configuration, interleaved "
                        "(alternate rounds in reverse order); the table gives the median and the spread")
    parser.add_argument("--profile", default=",".join(PROFILED), help="variants to profile (1 thread)")
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler breakdown")
    parser.add_argument("--out", type=Path, default=None, help="write the table as a Markdown section here")
    args = parser.parse_args()

    labels = [m for m in args.methods.split(",") if m]
    for label in labels:
        if label not in METHODS:
            parser.error(f"unknown method {label!r}; choose from {', '.join(METHODS)}")
    variants = args.variants.split(",") if args.variants else list(DEFAULT_VARIANTS)
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    if "plain" not in variants:
        variants.insert(0, "plain")
    compile_variants = ["fit-compile", "fit-bf16-compile"] if args.compile else []
    profiled = [v for v in args.profile.split(",") if v]
    for v in profiled:
        if v not in VARIANTS:
            parser.error(f"unknown variant to profile {v!r}; choose from {', '.join(VARIANTS)}")
    threads = (args.threads or ("1" if args.quick else "1,2,packed")).split(",")
    window = args.window or (0.3 if args.quick else 1.5)
    command = "PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in sys.argv)
    info = machine()
    t_begin, load_begin = time.perf_counter(), load()
    busy_begin, own_begin = busy_cpu_seconds(), own_cpu_seconds()
    print(f"{info['cpu']} ({info['flags']}), {info['cores']} cores, torch {info['torch']}; load {load_begin}")
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print("warning: the machine is busy; 2-thread and packed numbers collapse when another process holds a core")

    results: dict[str, dict[tuple, list[Any]]] = {}
    for setting in threads:
        n_threads, processes = (1, 2) if setting == "packed" else (int(setting), 1)
        jobs: list[tuple] = [("peak", "float32"), ("peak", "bfloat16")] if processes == 1 else []
        chosen = [v for v in variants if v in PACKED_VARIANTS] if processes > 1 else variants
        for label in labels:
            if setting == threads[0]:
                jobs += [("flops", label, "plain"), ("flops", label, "fit")]
            jobs += [("rate", label, v) for v in chosen if applies(label, v)]
            if setting == "1" and label not in NO_COMPILE:
                jobs += [("rate", label, v) for v in compile_variants]
                if not args.no_profile:
                    jobs += [("profile", label, v) for v in profiled if applies(label, v)]
        print(f"{setting} thread(s){' (2 processes)' if processes > 1 else ''}: {len(jobs)} jobs", flush=True)
        results[setting] = run_workers(jobs, n_threads, window, processes, args.repeat)

    table, notes = report(results, labels, variants + compile_variants, threads, profiled)
    print()
    print(table)
    print(notes)
    wall = time.perf_counter() - t_begin
    others = (busy_cpu_seconds() - busy_begin) - (own_cpu_seconds() - own_begin)
    footer = (f"load average before {load_begin}, after {load()}; benchmark wall time {wall:.0f} s; other processes "
              f"used {others:.0f} CPU-seconds meanwhile ({others / wall:.2f} cores on average"
              f"{'; the numbers are disturbed' if others / wall > 0.1 else ''})")
    print(footer)
    if args.out:
        write_markdown(args.out, info, command, table, notes, footer)
        print(f"wrote {args.out}")


def report(results, labels, variants, threads, profiled=tuple(PROFILED)) -> tuple[str, str]:
    first = results[threads[0]]

    def one(setting: str, job: tuple) -> Any:
        values = results.get(setting, {}).get(job)
        return values[0] if values else None

    def peak(setting: str, dtype: str) -> float | None:
        """The peak a setting's MFU is against: its own; packed: the 2-thread one (else twice the 1-thread one)."""
        value = one("2" if setting == "packed" else setting, ("peak", dtype))
        if value is None and setting == "packed" and isinstance(one("1", ("peak", dtype)), float):
            value = 2 * one("1", ("peak", dtype))
        return value if isinstance(value, float) else None

    def rounds(setting: str, label: str, variant: str) -> list[float] | None:
        """Steps/s of each round (packed: the processes' sum)."""
        values = results.get(setting, {}).get(("rate", label, variant))
        if not values or any("error" in v for v in values):
            return None
        totals: dict[int, float] = {}
        for v in values:
            totals[v.get("round", 0)] = totals.get(v.get("round", 0), 0.0) + v["rate"]
        return list(totals.values())

    def rate(setting: str, label: str, variant: str) -> float | None:
        values = rounds(setting, label, variant)
        return statistics.median(values) if values else None

    def ratios(setting: str, label: str, variant: str, base: str) -> list[float] | None:
        """``variant`` ÷ ``base`` round by round: the two ran seconds apart, so a drift of the machine's speed over
        the run cancels (the median of these is the table's ratio)."""
        a, b = rounds(setting, label, variant), rounds(setting, label, base)
        return [x / y for x, y in zip(a, b)] if a and b and len(a) == len(b) else None

    def ratio(setting: str, label: str, variant: str, base: str) -> float | None:
        values = ratios(setting, label, variant, base)
        return statistics.median(values) if values else None

    head = ["method", "variant", "GFLOP/step"]
    for s in threads:
        name = "2×1 thr packed" if s == "packed" else f"{s} thr"
        head += [f"{name} steps/s", "× plain", "MFU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        flops = {loop: first.get(("flops", label, loop), [None])[0] for loop in ("plain", "fit")}
        for variant in (v for v in variants if applies(label, v)):
            loop = VARIANTS[variant][0]
            f = flops[loop] if isinstance(flops[loop], float) else None
            row = [label, variant, fmt(f / 1e9 if f else None, ".3f")]
            dtype = "bfloat16" if precision_of(label, variant) == "bf16" else "float32"
            present = False
            for s in threads:
                values = results.get(s, {}).get(("rate", label, variant))
                if not values:
                    row += ["", "", ""]
                    continue
                present = True
                errors = [v["error"] for v in values if "error" in v]
                if errors:
                    row += [f"failed: {errors[0]}", "", ""]
                    continue
                steps = rate(s, label, variant)
                p = peak(s, dtype)
                mfu = f * steps / p if f and p else None
                spread = rounds(s, label, variant)
                cell = fmt(steps, ".2f")
                if len(spread) > 1:  # half the range of the rounds, relative to the median
                    cell += f" ±{50 * (max(spread) - min(spread)) / steps:.0f} %"
                row += [cell, fmt(ratio(s, label, variant, "plain"), ".2f") + "×",
                        fmt(100 * mfu if mfu is not None else None, ".1f") + " %"]
            if present:
                lines.append("| " + " | ".join(row) + " |")
    notes = ["", "MFU counts FlopCounterMode's model FLOPs, which include the multiply-adds with the convolutions' "
             "zero padding (a quarter of a 7→14 transposed convolution's) that oneDNN skips, against MKL's sgemm: "
             "well-shaped large convolutions can exceed 100 %.", "",
             "Peak of a warm 2048³ matmul (GFLOP/s): " + "; ".join(
        f"{s} thr fp32 {fmt((one(s, ('peak', 'float32')) or math.nan) / 1e9, '.1f')}, "
        f"bf16 {fmt((one(s, ('peak', 'bfloat16')) or math.nan) / 1e9, '.1f')}"
        for s in threads if s != "packed")]
    if "packed" in results and "2" in results:
        notes += ["", "On 2 cores, two 1-thread processes (packed, total) ÷ one 2-thread process:", ""]
        for label in labels:
            parts = []
            for v in PACKED_VARIANTS:
                packed, two = rate("packed", label, v), rate("2", label, v)
                if packed and two:
                    parts.append(f"{v} {packed / two:.2f}×")
            best = max((rate("packed", label, v) or 0.0, v) for v in PACKED_VARIANTS if v.startswith("fit"))
            plain2 = rate("2", label, "plain")
            if best[0] and plain2:
                parts.append(f"packed {best[1]} ÷ plain at 2 threads {best[0] / plain2:.2f}×")
            notes.append(f"- {label}: " + ", ".join(parts))
    gains = [(v, base) for v, base in GAINS if v in variants and base in variants]
    if gains:
        notes += ["", "What each setting buys (steps/s ÷ its reference, median over the rounds [lowest, highest]):", ""]
        for s in threads:
            for label in labels:
                parts = []
                for v, base in gains:
                    values = ratios(s, label, v, base) if applies(label, v) else None
                    if values:
                        parts.append(f"{v} ÷ {base} {statistics.median(values):.2f}× "
                                     f"[{min(values):.2f}, {max(values):.2f}]")
                if parts:
                    notes.append(f"- {label} ({s} thr): " + "; ".join(parts))
    for label in labels:
        for v in (v for v in variants if "compile" in v):
            c, e = one("1", ("rate", label, v)), one("1", ("rate", label, COMPILE_BASE[v]))
            if isinstance(c, dict) and "error" in c:
                notes.append(f"{label} {v}: {c['error']}")
            elif isinstance(c, dict) and isinstance(e, dict) and "rate" in e:
                extra = c["warmup_s"] - c["warmup_steps"] / e["rate"]
                gain = 1 / e["rate"] - 1 / c["rate"]
                breakeven = extra / gain if gain > 0 else math.inf
                notes.append(f"{label} {v}: first {c['warmup_steps']} steps took {c['warmup_s']:.1f} s "
                             f"(compilation ≈ {extra:.1f} s); pays off after {fmt(breakeven, '.0f')} steps (suite "
                             "budget 1500)")
    profiles = [(label, v, one("1", ("profile", label, v))) for label in labels for v in profiled]
    if any(isinstance(p, dict) and "top" in p for _, _, p in profiles):
        notes += ["", "Where the time goes (torch.profiler, 1 thread; self CPU time, optimiser inclusive):", ""]
        for label, v, p in profiles:
            if isinstance(p, dict) and "top" in p:
                top = ", ".join(f"{name} {100 * s:.0f} %" for name, s in p["top"])
                convs = "; ".join(f"{name} {' '.join('×'.join(map(str, s)) for s in shapes if s)} {ms:.1f} ms"
                                  for name, shapes, ms in p["convs"])
                notes.append(f"- {label} {v} ({p['ms_per_step']:.1f} ms/step profiled): convolutions "
                             f"{100 * p['conv']:.0f} %, matmul {100 * p['matmul']:.0f} %, norms "
                             f"{100 * p['norm']:.0f} %, optimiser {100 * p['optimizer']:.0f} %; top ops: {top}; "
                             f"costliest convolution calls per step (input shapes): {convs}")
    return "\n".join(lines), "\n".join(notes)


def write_markdown(path: Path, info: dict[str, str], command: str, table: str, notes: str, footer: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"## Training throughput and MFU ({stamp})\n\n"
            f"Machine: {info['cpu']} ({info['flags']}), {info['cores']} cores, torch {info['torch']}, "
            f"Python {info['python']}.\n\nCommand: `{command}`\n\n{table}\n{notes}\n\n{footer}\n")
    path.write_text(text)


if __name__ == "__main__":
    main()
