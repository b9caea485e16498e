"""benchmarks/bench_conv_kernels.py: its layer list, the im2col shapes its MFU and roofline columns rest on, and the
matmul formulations it times, against PyTorch's own convolutions (no timing is asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_conv_kernels as bench  # noqa: E402


def test_layers_are_the_networks_convolutions_with_the_shapes_they_see():
    """Width 32 at 28 px: the generator's two transposed convolutions (7→14, 14→28) and the discriminator's two
    convolutions (28→14, 14→7); the input shapes chain as in the networks."""
    layers = bench.layers(32, 64)
    assert [(type(x.conv).__name__, x.in_shape) for x in layers] == [
        ("ConvTranspose2d", (64, 64, 7, 7)), ("ConvTranspose2d", (64, 32, 14, 14)),
        ("Conv2d", (64, 1, 28, 28)), ("Conv2d", (64, 32, 14, 14))]
    assert [x.out_hw() for x in layers] == [(14, 14), (28, 28), (14, 14), (7, 7)]
    for layer in layers:  # out_hw is what the module gives
        assert tuple(layer.conv(torch.zeros(1, *layer.in_shape[1:])).shape[-2:]) == layer.out_hw()


@pytest.mark.parametrize("width", [8, 32])
def test_the_gemm_formula_is_what_the_flop_counter_counts(width):
    """3 × 2·M·K·N per forward + backward: the shape the GEMM column times and the MFU column divides by."""
    for layer in bench.layers(width, 4):
        assert bench.counted_flops(bench.conv_step(layer, "fp32")) == layer.nominal_flops(), layer.name
        m, k, n = layer.gemm_shape()
        assert bench.counted_flops(bench.gemm_step(layer, "fp32")) == 3 * 2 * m * k * n


def test_the_roofline_intensity_of_a_known_shape():
    """M = K = N = 2: 16 FLOPs over 12 fp32 values (48 bytes); the thin 1-channel layers sit near 5 FLOP/byte."""
    square = bench.Layer("square", torch.nn.Conv2d(2, 2, 1), (2, 2, 1, 1))  # 1×1 conv: M = 2, K = 2, N = 2
    assert square.gemm_shape() == (2, 2, 2) and square.intensity(4) == pytest.approx(16 / 48)
    thin = bench.layers(32, 64)[2]  # D's first layer: M = 64·14·14, K = 16, N = 32
    assert thin.intensity(4) == pytest.approx(2 * 12544 * 16 * 32 / (4 * (12544 * 16 + 16 * 32 + 12544 * 32)))


def test_conv2d_by_unfold_is_the_convolution_with_its_gradients():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 4, 2, 1)
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = conv(x), bench.conv2d_by_unfold(x2, conv)
    torch.testing.assert_close(y2, y)
    g = torch.randn_like(y)
    (dx, dw) = torch.autograd.grad(y, (x, conv.weight), g)
    (dx2, dw2) = torch.autograd.grad(y2, (x2, conv.weight), g)
    torch.testing.assert_close(dx2, dx)
    torch.testing.assert_close(dw2, dw)
    assert not torch.allclose(bench.conv2d_by_unfold(x2, torch.nn.Conv2d(3, 5, 4, 2, 1)), y)


@pytest.mark.parametrize("setting", list(bench.SETTINGS))
def test_every_timed_step_runs_forward_and_backward_in_its_setting(setting):
    """Each step leaves gradients on its layer's weight, and the bf16 setting really computes in bfloat16."""
    for layer in bench.layers(8, 2):
        for make in (bench.conv_step, bench.by_matmul_step):
            layer.conv.zero_grad(set_to_none=True)
            make(layer, setting)()
            assert layer.conv.weight.grad is not None and torch.isfinite(layer.conv.weight.grad).all()
    dtype = bench.SETTINGS[setting][0]
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        y = F.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 2, 2))
    assert y.dtype == (dtype or torch.float32)


def test_a_quick_run_writes_its_table(tmp_path):
    out = tmp_path / "kernels.md"
    bench.main(["--quick", "--out", str(out)])
    text = out.read_text()
    assert "matmul peak (warm 2048³)" in text and "CPU " in text
    rows = [line for line in text.splitlines() if line.startswith("| 32 | 64 |")]
    assert len(rows) == 4 and all(" %" in r for r in rows)
