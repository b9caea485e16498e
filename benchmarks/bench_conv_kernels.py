"""Benchmark: what limits the MFU of the methods' networks, layer by layer (issue #16: "what limits it").

bench_training.py measures whole training steps; this script times each convolution of the DCGAN-family networks
(the generator's transposed convolutions, the discriminator's convolutions, at the methods' image size and batch)
alone, forward + backward (input and weight gradients), beside two formulations of the same arithmetic:

* **GEMM**: the three matrix products of the layer's im2col shape ``M × K × N`` (M = batch × output pixels, K = input
  channels × kernel area, N = output channels; a transposed convolution is a convolution's input gradient, so its
  forward is ``M = batch × input pixels``, ``K = in channels``, ``N = out channels × kernel area``, then col2im),
  without im2col's data movement. If even this is far below the matmul peak, the limit is the shape (too little work
  per call for the CPU's matrix units), not oneDNN's convolution code.
* **by matmul**: the layer computed as ``F.unfold`` + product (a convolution) or product + ``F.fold``
  (:func:`methods.nets.conv_transpose2d_by_fold`, the ``fold_output`` setting) with their backward: what a matmul
  formulation of that layer would actually give, im2col/col2im included. "conv ÷ by-matmul" > 1 means it would pay.

The FLOP/byte column is the forward GEMM's FLOPs per byte if every operand crossed memory once (fp32): layers far below
the CPU's FLOP/s ÷ memory bandwidth (tens of FLOP/byte on these hosts) are bound by data movement in any kernel.

Per layer and precision (fp32 NCHW, fp32 channels-last, bf16 autocast channels-last: the settings the methods use):
milliseconds per forward + backward (median of ``--repeat`` timings of ``--iters`` calls each), nominal MFU
(``torch.utils.flop_counter`` FLOPs of that call, checked against the GEMM formula, ÷ time ÷ the same-run warm 2048³
matmul peak in that dtype). ``--batches 64,256`` adds a larger batch: the same layers with more work per call, to show
how far the work per call, not the arithmetic, sets the MFU of these small networks.

    PYTHONPATH=. python benchmarks/bench_conv_kernels.py [--widths 32,64] [--batches 64,256] [--threads 1]
        [--repeat 5] [--iters 20] [--quick] [--out reports/benchmarks_kernels.md]

Prints a table; asserts nothing about timings. A quiet machine is wanted: the load average is printed with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import fmt, load, machine, matmul_peak  # noqa: E402  (benchmarks/ is not a package)

from methods.nets import Discriminator, Generator, conv_transpose2d_by_fold  # noqa: E402

IMAGE_SIZE, CHANNELS, Z_DIM = 28, 1, 100  # the MNIST suites' networks
SETTINGS = {  # name -> (autocast dtype or None, memory format)
    "fp32": (None, torch.contiguous_format),
    "fp32-cl": (None, torch.channels_last),
    "bf16-cl": (torch.bfloat16, torch.channels_last),
}


@dataclasses.dataclass(frozen=True)
class Layer:
    """One convolution of a network, as the benchmark builds and times it."""

    name: str
    conv: nn.Conv2d | nn.ConvTranspose2d
    in_shape: tuple[int, int, int, int]  # N, C, H, W

    @property
    def transposed(self) -> bool:
        return isinstance(self.conv, nn.ConvTranspose2d)

    def gemm_shape(self) -> tuple[int, int, int]:
        """``(M, K, N)`` of the convolution's forward as one matrix product (im2col; col2im for a transposed one)."""
        n, c, h, w = self.in_shape
        kh, kw = self.conv.kernel_size
        out = self.conv.out_channels
        if self.transposed:  # x (N·H·W × C_in) @ W (C_in × C_out·k²), then col2im
            return n * h * w, c, out * kh * kw
        ho, wo = self.out_hw()
        return n * ho * wo, c * kh * kw, out

    def out_hw(self) -> tuple[int, int]:
        _, _, h, w = self.in_shape
        (kh, kw), (sh, sw), (ph, pw) = self.conv.kernel_size, self.conv.stride, self.conv.padding
        if self.transposed:
            return (h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def intensity(self, bytes_per_element: int) -> float:
        """FLOPs per byte of the forward GEMM if each operand and the result crossed memory once (a roofline
        estimate): a layer far below the CPU's FLOP/s ÷ bandwidth is bound by data movement, whatever the kernel."""
        m, k, n = self.gemm_shape()
        return 2 * m * k * n / (bytes_per_element * (m * k + k * n + m * n))

    def nominal_flops(self) -> int:
        """Forward + input gradient + weight gradient: three GEMMs of the forward's size (2·M·K·N each), except
        that a first layer's input gradient is not needed (its input is data) — see :func:`layers`."""
        m, k, n = self.gemm_shape()
        return 3 * 2 * m * k * n


def layers(width: int, batch: int) -> list[Layer]:
    """Every convolution of the width-``width`` DCGAN generator and discriminator, with the input shape it sees at
    batch ``batch`` (the generator's stem output is ``top × 7 × 7``). Inputs always require gradients here, so every
    layer's count is the full three GEMMs (the methods' first discriminator layer also needs its input gradient:
    the generator trains through it)."""
    g = Generator(Z_DIM, CHANNELS, IMAGE_SIZE, width=width)
    d = Discriminator(CHANNELS, IMAGE_SIZE, width=width)
    out: list[Layer] = []
    h = IMAGE_SIZE // 2 ** len(g.deconvolutions)
    for i, conv in enumerate(g.deconvolutions):
        out.append(Layer(f"G.deconv{i} {conv.in_channels}→{conv.out_channels} {h}→{2 * h}", conv,
                         (batch, conv.in_channels, h, h)))
        h *= 2
    h = IMAGE_SIZE
    for i, conv in enumerate(m for m in d.modules() if isinstance(m, nn.Conv2d)):
        out.append(Layer(f"D.conv{i} {conv.in_channels}→{conv.out_channels} {h}→{h // 2}", conv,
                         (batch, conv.in_channels, h, h)))
        h //= 2
    return out


def conv_step(layer: Layer, setting: str) -> Callable[[], None]:
    """One forward + backward of the layer alone (input and weight gradients), in the setting's dtype and layout."""
    dtype, fmt_ = SETTINGS[setting]
    conv = layer.conv.to(memory_format=fmt_) if layer.conv.weight.dim() == 4 else layer.conv
    x = torch.randn(layer.in_shape).to(memory_format=fmt_).requires_grad_(True)

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            y = conv(x)
        y.backward(torch.ones_like(y))

    return step


def conv2d_by_unfold(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` as ``F.unfold`` (im2col) and one matrix product: the matmul formulation of a convolution, the
    counterpart of :func:`methods.nets.conv_transpose2d_by_fold` (timed here, not used by the methods)."""
    n, _, h, w = x.shape
    (kh, kw), stride, padding = conv.kernel_size, conv.stride, conv.padding
    columns = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # N×(C_in·k²)×L
    out = conv.weight.flatten(1) @ columns  # N×C_out×L
    ho, wo = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
    out = out.view(n, conv.out_channels, ho, wo)
    return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)


def by_matmul_step(layer: Layer, setting: str) -> Callable[[], None]:
    """Forward + backward of the layer in its matmul formulation, im2col/col2im included: ``F.unfold`` + product for
    a convolution, product + ``F.fold`` (:func:`methods.nets.conv_transpose2d_by_fold`) for a transposed one."""
    dtype, fmt_ = SETTINGS[setting]
    conv = layer.conv
    x = torch.randn(layer.in_shape).to(memory_format=fmt_).requires_grad_(True)

    def forward() -> torch.Tensor:
        if layer.transposed:
            return conv_transpose2d_by_fold(x, conv.weight, conv.bias, stride=conv.stride[0],
                                            padding=conv.padding[0])
        return conv2d_by_unfold(x, conv)

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            y = forward()
        y.backward(torch.ones_like(y))

    return step


def gemm_step(layer: Layer, setting: str) -> Callable[[], None]:
    """The three GEMMs of the layer's forward and backward at its im2col shape, in the setting's dtype (no im2col)."""
    dtype = SETTINGS[setting][0] or torch.float32
    m, k, n = layer.gemm_shape()
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    g = torch.randn(m, n, dtype=dtype)

    def step() -> None:
        torch.mm(a, b)      # forward
        torch.mm(g, b.t())  # input gradient
        torch.mm(a.t(), g)  # weight gradient

    return step


def counted_flops(step: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def median_seconds(step: Callable[[], None], iters: int, repeat: int) -> float:
    for _ in range(3):
        step()  # warm-up: oneDNN builds and caches its primitives on the first calls
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(iters):
            step()
        times.append((time.perf_counter() - t) / iters)
    return statistics.median(times)


def measure(widths: list[int], batches: list[int], iters: int, repeat: int) -> tuple[list[dict], dict[str, float]]:
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    rows = []
    for width in widths:
        for batch in batches:
            for layer in layers(width, batch):
                flops = counted_flops(conv_step(layer, "fp32"))
                if flops != layer.nominal_flops():
                    raise AssertionError(f"{layer.name}: FlopCounterMode counts {flops}, the GEMM formula "
                                         f"{layer.nominal_flops()}: the im2col shape is wrong")
                row = {"width": width, "batch": batch, "layer": layer.name, "gemm": layer.gemm_shape(),
                       "gflop": flops / 1e9, "intensity": layer.intensity(4)}
                for setting in SETTINGS:
                    peak = peaks["bf16" if SETTINGS[setting][0] is torch.bfloat16 else "fp32"]
                    conv_s = median_seconds(conv_step(layer, setting), iters, repeat)
                    gemm_s = median_seconds(gemm_step(layer, setting), iters, repeat)
                    matmul_s = median_seconds(by_matmul_step(layer, setting), iters, repeat)
                    row[setting] = {"ms": conv_s * 1e3, "mfu": flops / conv_s / peak,
                                    "gemm_mfu": flops / gemm_s / peak, "gemm_over_conv": conv_s / gemm_s,
                                    "matmul_ms": matmul_s * 1e3, "conv_over_matmul": conv_s / matmul_s}
                rows.append(row)
                print(f"  {width=} {batch=} {layer.name}: " + ", ".join(
                    f"{s} {row[s]['ms']:.3f} ms ({row[s]['mfu']:.0%}, GEMM {row[s]['gemm_mfu']:.0%}, "
                    f"by matmul {row[s]['matmul_ms']:.3f} ms)"
                    for s in SETTINGS), flush=True)
    return rows, peaks


def table(rows: list[dict]) -> str:
    head = ["width", "batch", "layer", "GEMM M×K×N", "GFLOP", "FLOP/byte (fp32)"]
    for s in SETTINGS:
        head += [f"{s} ms", f"{s} MFU", f"{s} GEMM MFU", f"{s} by-matmul ms", f"{s} conv ÷ by-matmul"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("--:" if i != 2 else "---" for i in range(len(head))) + "|"]
    for r in rows:
        cells = [str(r["width"]), str(r["batch"]), r["layer"], "×".join(map(str, r["gemm"])), fmt(r["gflop"], ".3f"),
                 fmt(r["intensity"], ".1f")]
        for s in SETTINGS:
            v = r[s]
            cells += [fmt(v["ms"], ".3f"), fmt(100 * v["mfu"], ".1f") + " %", fmt(100 * v["gemm_mfu"], ".1f") + " %",
                      fmt(v["matmul_ms"], ".3f"), fmt(v["conv_over_matmul"], ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", default="32,64", help="network widths (the suites use 32; dcgan-w64 is 64)")
    ap.add_argument("--batches", default="64,256", help="batch sizes (the suites use 64)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (the harness runs trials at 1)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20, help="calls per timing")
    ap.add_argument("--quick", action="store_true", help="width 32, batch 64, 1 repeat of 2 calls (a smoke run)")
    ap.add_argument("--out", type=Path, help="also write the table and the machine to this Markdown file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    widths, batches = [int(x) for x in args.widths.split(",")], [int(x) for x in args.batches.split(",")]
    if args.quick:
        widths, batches, args.repeat, args.iters = [32], [64], 1, 2
    info = machine()
    start_load = load()
    rows, peaks = measure(widths, batches, args.iters, args.repeat)
    text = (f"CPU {info['cpu']}; {info['flags']}; {info['cores']} cores; torch {info['torch']}; "
            f"{args.threads} thread(s); load average {start_load} → {load()}\n\n"
            f"matmul peak (warm 2048³): fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s"
            f"\n\n{table(rows)}\n")
    print("\n" + text)
    if args.out:
        command = "PYTHONPATH=. python benchmarks/bench_conv_kernels.py " + shlex.join(argv or sys.argv[1:])
        args.out.write_text(f"# Convolution kernels against GEMMs of their shape\n\n`{command}`\n\n{text}")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
