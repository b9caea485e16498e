"""Speed settings shared by the training loops (``AdversarialMethod.fit`` and ``GLICO.fit``), implemented once here.

Every setting defaults to off here; DCGAN, MetaCGAN and GLICO default to ``precision="bf16"`` with ``channels_last``
(their defaults version 2 / 3 / 3): on trial over the validity protocol's 12 (split, seed) pairs each
(``suites/bf16_paired.yaml``, scored on validation classes; reports/bf16_paired), bf16 + channels-last was tied with
fp32 on every metric and the fastest setting. A suite that writes ``precision: fp32`` and ``channels_last: false``
gets the fp32 code path that produced the earlier results, bit for bit. They are config fields, so suites set them
per method entry and every result records them (the method config is part of a trial's provenance).
``benchmarks/bench_training.py`` measures what each one buys.

* ``precision = "bf16"``: each training step runs under ``torch.autocast(device, dtype=torch.bfloat16)``. Weights,
  gradients and optimiser state stay float32 (autocast casts per operation: convolutions and matrix products run in
  bfloat16, the rest as before); the networks return float32 logits so losses are computed in float32. On a CPU with
  AVX512-BF16 or AMX the convolutions run faster than in float32; on a CPU without native bfloat16 (no AVX512-BF16,
  no AMX) they are emulated and slower, which :func:`bf16_warning` says. Results change (bfloat16 keeps 8 mantissa
  bits); ``sample`` runs in float32.
* ``channels_last``: 4-D weights (and so the convolutions' outputs) use the NHWC memory format, which oneDNN prefers;
  results change in the last bits (other kernels).
* ``compile``: ``nn.Module.compile()`` (TorchInductor) on the networks; state-dict keys are unchanged. The first steps
  pay the compilation, and sampling (eval mode, other batch sizes) compiles again. Not supported with the gradient
  penalty (AOTAutograd has no double backward; WGAN-GP's config refuses it). On the 2-core development CPU it did not
  pay: CGAN (width 32, 1 thread) compiled for 15-25 s and then ran 0.8× as fast as without it (bench_training.py);
  meant for GPUs.
* ``fold_output``: the generator's last transposed convolution (to the 1 or 3 image channels) computed as one matrix
  product and ``F.fold`` (:func:`methods.nets.conv_transpose2d_by_fold`): oneDNN runs a deconvolution with so few
  output channels far below its speed on wide layers. Same arithmetic, other summation order. Off by default here;
  CGAN's and MetaCGAN's configs turn it (with ``label_lookup`` and ``fused_optimizer``) on after their paired trials.
* ``fused_optimizer``: optimisers are rebuilt with ``fused=True`` where PyTorch has a fused kernel (Adam, AdamW, SGD),
  else ``foreach=True`` (RMSprop). Fused Adam differs from the default implementation by rounding (about 1e-8 after a
  few steps), so off by default except where a method's paired trial turned it on (CGAN, MetaCGAN).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Literal

import pydantic
import torch
from torch import nn

__all__ = ["PerformanceConfig", "autocast", "bf16_warning", "channels_last_field", "fill_contiguous", "precision_field",
           "prepare_networks", "prepare_optimizer", "redefault"]
_WARNED: set[str] = set()


def precision_field(default: str):
    """The ``precision`` field with ``default``: methods whose bf16 results were put on trial (≥ 10 paired (split,
    seed) pairs, reports/bf16_paired) default to bf16, the others to fp32."""
    return pydantic.Field(
        default, description="arithmetic of the training step: fp32, or bf16 autocast (float32 weights, gradients and "
        "optimiser state; convolutions and matrix products in bfloat16). Changes results in the last bits; tied with "
        "fp32 where it is the default (reports/bf16_paired)"
    )


def channels_last_field(default: bool):
    """The ``channels_last`` field with ``default`` (see :func:`precision_field`)."""
    return pydantic.Field(
        default, description="NHWC memory format for the networks' 4-D weights and feature maps (oneDNN's preferred "
        "layout); changes results in the last bits"
    )


def redefault(config: type[pydantic.BaseModel], name: str, default: Any):
    """``config``'s field ``name`` with another default and its description kept, for a subclass whose paired trial
    moved that default (a bare re-annotation would drop the description)."""
    return pydantic.Field(default, description=config.model_fields[name].description)


class PerformanceConfig(pydantic.BaseModel):
    """Speed settings of the training step; all off by default (see the module docstring)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    precision: Literal["fp32", "bf16"] = precision_field("fp32")
    channels_last: bool = channels_last_field(False)
    compile: bool = pydantic.Field(
        False, description="torch.compile the networks (TorchInductor); the first steps pay the compilation"
    )
    fused_optimizer: bool = pydantic.Field(
        False, description="fused optimiser kernels where PyTorch has them (Adam, AdamW, SGD; else foreach); changes "
        "results by rounding, so on only where a method's paired trial allowed it"
    )
    fold_output: bool = pydantic.Field(
        False, description="the generator's output layer (the transposed convolution to the image channels) as one "
        "matrix product and F.fold instead of oneDNN's deconvolution; same values up to rounding"
    )


def bf16_warning(config: PerformanceConfig, device: torch.device) -> str | None:
    """What to tell a user whose CPU has no native bfloat16 (no AVX512-BF16, no AMX) and who trains in bf16: it is
    emulated there, slower than fp32. None when that is not the case (GPUs decide for themselves)."""
    if config.precision != "bf16" or device.type != "cpu":
        return None
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    if native:
        return None
    return ("precision: bf16 on a CPU without native bfloat16 (no AVX512-BF16 or AMX): it is emulated and slower "
            "than fp32 here; set precision: fp32 (and channels_last: false) in the method's params")


def autocast(config: PerformanceConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a whole training step runs in: bfloat16 autocast for ``precision="bf16"``, else nothing.

    The step's optimiser updates run inside it (a method's ``_train_step`` is one piece), so autocast's weight cache is
    off: with it, a forward after an in-place update inside the same region (the second of ``n_critic`` critic
    updates) would reuse the bfloat16 copy of the weights from before the update.
    """
    if config.precision == "bf16":
        message = bf16_warning(config, device)
        if message and message not in _WARNED:  # once per process, not once per step
            _WARNED.add(message)
            import warnings

            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def prepare_networks(networks: Iterable[nn.Module], config: PerformanceConfig) -> None:
    """Apply ``channels_last`` and ``compile`` to ``networks`` in place, once, when they are built (parameters stay
    the same objects, so optimisers see them; state-dict keys do not change). Weight initialisers draw through
    :func:`fill_contiguous`, so a channels-last network starts from the same values as a default one."""
    for net in networks:
        if config.channels_last:
            net.to(memory_format=torch.channels_last)
        if config.compile:
            net.compile()


def prepare_optimizer(optimizer: torch.optim.Optimizer, config: PerformanceConfig) -> torch.optim.Optimizer:
    """``optimizer`` itself, or (``fused_optimizer``) the same optimiser over the same parameter groups rebuilt with
    the fused kernel where its class has one, else the multi-tensor (``foreach``) one. Call before the first step."""
    if not config.fused_optimizer:
        return optimizer
    cls = type(optimizer)
    kind = "fused" if "fused" in inspect.signature(cls).parameters else "foreach"
    groups = [{**group, kind: True} for group in optimizer.param_groups]
    return cls(groups, **{**optimizer.defaults, kind: True})


def fill_contiguous(tensor: torch.Tensor, fill: Callable[[torch.Tensor], object]) -> None:
    """``fill(tensor)`` (an in-place initialiser, e.g. ``nn.init.normal_``) with values independent of the tensor's
    memory format: a channels-last tensor is filled through a contiguous buffer, since random draws follow the
    storage order. A contiguous tensor is filled directly (the default path, unchanged)."""
    if tensor.is_contiguous():
        fill(tensor)
        return
    buffer = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    fill(buffer)
    with torch.no_grad():
        tensor.copy_(buffer)
