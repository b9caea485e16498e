"""DCGAN-style generator and discriminator shared by every GAN method (the one place for network code).

Sizes: 28×28 (start at 7×7, two up-sampling steps), 32×32 and 64×64 (start at 4×4, three and four steps). Every step is
a ``ConvTranspose2d(4, 2, 1)`` in the generator and a ``Conv2d(4, 2, 1)`` in the discriminator, as in DCGAN (Radford et
al. 2016); channels halve on the way up and double on the way down, ``width`` being the channel count next to the image.

Conditioning (Mirza & Osindero 2014): the generator sees ``[z, onehot(y)]`` and the discriminator sees the image with
``K`` one-hot label maps concatenated to its channels. Both are implemented without materialising the one-hot tensors
(an embedding for the generator's stem, :class:`OneHotMapConv` for the discriminator's first convolution); the maths is
the same as the concatenation, which ``tests/test_methods_baselines.py`` checks, but the cost does not grow with ``K``
(CelebA identities run into thousands of classes).

Cost, measured on the 2-core development CPU (torch 2.14, float32, best of 5 windows on a shared machine): width 64,
28×28×1, batch 64, one training step (n_critic D updates + one G update) takes about 46 ms for DCGAN, 49 ms for the
conditional GAN, 145 ms for WGAN (5 critic updates) and 286 ms for WGAN-GP (5 critic updates with the gradient
penalty's double backward); DiffAugment adds 2-5 ms. Almost all of it is convolution (forward and backward).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.performance import fill_contiguous

__all__ = [
    "SUPPORTED_SIZES",
    "Discriminator",
    "DownBlock",
    "Generator",
    "OneHotMapConv",
    "UpBlock",
    "conv_transpose2d_by_fold",
    "conv_transpose2d_per_sample",
    "dcgan_init",
    "spatial_plan",
]

# image size -> spatial size of the generator's first feature map (the discriminator's last one)
_START_SIZES = {28: 7, 32: 4, 64: 4}
SUPPORTED_SIZES = tuple(sorted(_START_SIZES))

GeneratorNorm = Literal["batch", "layer", "instance", "none"]
DiscriminatorNorm = Literal["batch", "layer", "instance", "none"]


def spatial_plan(image_size: int) -> tuple[int, int]:
    """``(start_size, n_steps)``: the first feature map's side and the number of ×2 up-sampling steps to the image."""
    if image_size not in _START_SIZES:
        raise ValueError(
            f"image size {image_size} is not supported by the DCGAN networks; use one of {SUPPORTED_SIZES} "
            "(resize the dataset, e.g. dataset.image_size)"
        )
    start = _START_SIZES[image_size]
    return start, int(math.log2(image_size // start))


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        # LayerNorm over (C, H, W) per sample with a per-channel affine: no statistics shared across the batch
        return nn.GroupNorm(1, channels)
    if kind == "instance":
        # per sample and channel over (H, W), with a per-channel affine; no running statistics
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected 'batch', 'layer', 'instance' or 'none'")


def conv_transpose2d_per_sample(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 2,
                                padding: int = 1) -> Tensor:
    """``F.conv_transpose2d`` with one weight per sample: ``x`` is N×C_in×H×W, ``weight`` N×C_in×C_out×k×k.

    One grouped transposed convolution (groups = N) over the batch folded into the channels: the arithmetic of the
    shared-weight convolution, no Python loop. ``bias`` (C_out,) is shared by all samples.
    """
    n, c_in, height, width = x.shape
    if weight.dim() != 5 or weight.shape[0] != n or weight.shape[1] != c_in:
        raise ValueError(f"per-sample weight must be {n}×{c_in}×C_out×k×k, got {tuple(weight.shape)}")
    c_out, k = weight.shape[2], weight.shape[3]
    out = F.conv_transpose2d(
        x.reshape(1, n * c_in, height, width), weight.reshape(n * c_in, c_out, k, weight.shape[4]),
        None if bias is None else bias.repeat(n), stride=stride, padding=padding, groups=n,
    )
    return out.view(n, c_out, out.shape[-2], out.shape[-1])


def _check(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def conv_transpose2d_by_fold(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 2,
                             padding: int = 1) -> Tensor:
    """``F.conv_transpose2d`` as one matrix product and ``F.fold`` (col2im): the same arithmetic, other kernels.

    A transposed convolution scatters every input pixel's ``C_in``-vector, times the C_in×(C_out·k·k) weight, onto a
    k×k patch of the output; here the product runs for all pixels at once (``(N·H·W)×C_in`` by ``C_in×(C_out·k·k)``)
    and ``F.fold`` sums the overlapping patches. For the generator's output layer (``C_out`` = 1 or 3 image channels)
    oneDNN's deconvolution is a poor fit, a long thin product and a sum are a good one (issue #16: the 1-channel
    output deconvolution took ~11 % of a CGAN step for 0.5 % of its FLOPs). ``weight`` is C_in×C_out×k×k (shared)
    or N×C_in×C_out×k×k (one per sample: a batched product). Under bf16 autocast the product runs in bfloat16 and
    the patch sum in float32 (it is small), so the overlaps are not summed in 8 mantissa bits; the output is
    float32.
    """
    n, c_in, height, width = x.shape
    k = weight.shape[-1]
    if weight.dim() not in (4, 5) or weight.shape[-4] != c_in or (weight.dim() == 5 and weight.shape[0] != n):
        raise ValueError(f"weight must be {c_in}×C_out×k×k or {n}×{c_in}×C_out×k×k, got {tuple(weight.shape)}")
    pixels = x.flatten(2).transpose(1, 2)  # N×(H·W)×C_in; a view for NCHW and NHWC inputs alike
    columns = pixels @ weight.flatten(-3)  # N×(H·W)×(C_out·k·k): batched when the weight is per sample
    size = ((height - 1) * stride - 2 * padding + k, (width - 1) * stride - 2 * padding + k)
    out = F.fold(columns.transpose(1, 2).float(), size, k, padding=padding, stride=stride)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def deconvolve(conv: nn.ConvTranspose2d, x: Tensor, weight: Tensor | None = None, fold: bool = False) -> Tensor:
    """``conv(x)``, or the same ×2 transposed convolution with a replacement ``weight``: one weight for the batch
    (4-D) or one per sample (5-D, e.g. MetaCGAN's hypernetwork output); ``conv``'s bias is kept. ``fold``: computed
    by :func:`conv_transpose2d_by_fold` (same values up to rounding)."""
    if fold:
        return conv_transpose2d_by_fold(x, conv.weight if weight is None else weight, conv.bias,
                                        stride=conv.stride[0], padding=conv.padding[0])
    if weight is None:
        return conv(x)
    if weight.dim() == 5:
        return conv_transpose2d_per_sample(x, weight, conv.bias, stride=2, padding=1)
    return F.conv_transpose2d(x, weight, conv.bias, stride=2, padding=1)


class UpBlock(nn.Module):
    """``ConvTranspose2d(4, 2, 1)`` → norm → ReLU; doubles the spatial size.

    ``weight`` replaces the deconvolution's weight for one call (e.g. hypernetwork-generated weights, MetaCGAN): the
    layer's shape C_in×C_out×4×4 for all samples, or N×C_in×C_out×4×4 for one weight per sample
    (:func:`conv_transpose2d_per_sample`).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=norm == "none")
        self.norm = _norm2d(norm, out_channels)
        self.act = nn.ReLU()

    def forward(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        return self.act(self.norm(deconvolve(self.conv, x, weight)))


class DownBlock(nn.Module):
    """``Conv2d(4, 2, 1)`` → norm → LeakyReLU(0.2); halves the spatial size."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=norm == "none")
        self.norm = _norm2d(norm, out_channels)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor, label_response: Tensor | None = None) -> Tensor:
        h = self.conv(x)
        if label_response is not None:
            h = h + label_response
        return self.act(self.norm(h))


class OneHotMapConv(nn.Module):
    """The part of a convolution that acts on ``K`` concatenated one-hot label maps, computed without the maps.

    ``Conv2d(C + K)(cat([x, onehot(y) broadcast to H×W]))`` equals ``Conv2d(C)(x) + OneHotMapConv(y)``: the label
    channels are constant, so their response is the class's kernel summed over the taps that fall inside the image
    (zero padding drops some taps at the borders). ``weight[:, k]`` is exactly the concatenated conv's weight for
    label channel ``k``. Cost per sample is that of a one-channel convolution, whatever ``K``.
    """

    def __init__(self, num_classes: int, out_channels: int, kernel_size: int = 4, stride: int = 2,
                 padding: int = 1, lookup: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stride = stride
        self.padding = padding
        self.lookup = lookup
        self.weight = nn.Parameter(torch.empty(out_channels, num_classes, kernel_size, kernel_size))
        nn.init.normal_(self.weight, 0.0, 0.02)

    def forward(self, labels: Tensor, height: int, width: int) -> Tensor:
        """The label maps' response, N×C_out×H'×W'. ``lookup``: the ``K`` classes' responses are computed once per
        call (K one-channel convolutions) and each sample's is looked up, instead of one convolution per sample: the
        same values up to rounding, K instead of N convolutions (issue #16)."""
        out_channels, classes, k, _ = self.weight.shape
        ones = self.weight.new_ones(1, 1, height, width)
        if self.lookup:
            kernels = self.weight.transpose(0, 1).reshape(classes * out_channels, 1, k, k)
            table = F.conv2d(ones, kernels, stride=self.stride, padding=self.padding)
            return table.view(classes, out_channels, table.shape[-2], table.shape[-1]).index_select(0, labels)
        n = labels.shape[0]
        kernels = self.weight.index_select(1, labels).transpose(0, 1).reshape(n * out_channels, 1, k, k)
        response = F.conv2d(ones, kernels, stride=self.stride, padding=self.padding)
        return response.view(n, out_channels, response.shape[-2], response.shape[-1])


class Stem(nn.Module):
    """``[z, onehot(y)]`` → Linear → reshape to ``channels × start × start`` → norm → ReLU.

    The one-hot part of the Linear is ``label_embed`` (its weight columns for the one-hot inputs, looked up).
    """

    def __init__(self, z_dim: int, num_classes: int, channels: int, start: int, norm: str) -> None:
        super().__init__()
        features = channels * start * start
        self.shape = (channels, start, start)
        self.linear = nn.Linear(z_dim, features, bias=norm == "none")
        self.label_embed = nn.Embedding(num_classes, features) if num_classes > 0 else None
        self.norm = _norm2d(norm, channels)
        self.act = nn.ReLU()

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.linear(z)
        if self.label_embed is not None:
            h = h + self.label_embed(labels)
        return self.act(self.norm(h.view(-1, *self.shape)))


def _check_labels(labels: Tensor | None, num_classes: int, n: int, who: str) -> None:
    if num_classes > 0:
        if labels is None:
            raise ValueError(f"conditional {who} (num_classes={num_classes}) needs labels")
        if labels.shape != (n,):
            raise ValueError(f"{who}: labels must have shape ({n},), got {tuple(labels.shape)}")


class Generator(nn.Module):
    """DCGAN generator: ``z`` (and optionally a class) → image in [-1, 1] (tanh).

    Parts, for methods that need to reach inside (e.g. hypernetwork-generated weights for one layer):
    ``stem`` (:class:`Stem`), ``blocks`` (``nn.ModuleList`` of :class:`UpBlock`, ``block.conv`` the deconvolution),
    ``to_image`` (the last ``ConvTranspose2d`` to ``channels``) and ``out`` (tanh). :attr:`deconvolutions` lists the
    transposed convolutions in order (the up-blocks' then ``to_image``); ``forward``'s ``deconv_weights`` replaces
    the weights of some of them, by index into that list, for one call (shared or per-sample, as in :class:`UpBlock`).
    """

    def __init__(self, z_dim: int, channels: int, image_size: int, width: int = 64, num_classes: int = 0,
                 norm: GeneratorNorm = "batch", fold_output: bool = False) -> None:
        super().__init__()
        self.fold_output = fold_output  # to_image by conv_transpose2d_by_fold
        _check("z_dim", z_dim, 1)
        _check("channels", channels, 1)
        _check("width", width, 1)
        _check("num_classes", num_classes, 0)
        _norm2d(norm, 1)  # validates the name
        start, steps = spatial_plan(image_size)
        self.z_dim, self.channels, self.image_size, self.num_classes = z_dim, channels, image_size, num_classes
        top = width * 2 ** (steps - 1)
        self.stem = Stem(z_dim, num_classes, top, start, norm)
        self.blocks = nn.ModuleList(UpBlock(top // 2**i, top // 2 ** (i + 1), norm) for i in range(steps - 1))
        self.to_image = nn.ConvTranspose2d(width, channels, 4, 2, 1)
        self.out = nn.Tanh()

    @property
    def deconvolutions(self) -> list[nn.ConvTranspose2d]:
        """The transposed convolutions in order: each up-block's, then ``to_image``."""
        return [block.conv for block in self.blocks] + [self.to_image]

    def _replacement_weights(self, deconv_weights: Mapping[int, Tensor] | None, n: int) -> dict[int, Tensor]:
        if not deconv_weights:
            return {}
        layers = self.deconvolutions
        weights = {}
        for index, weight in deconv_weights.items():
            if not -len(layers) <= index < len(layers):
                raise ValueError(f"deconvolution index {index} out of range: the generator has {len(layers)}")
            index %= len(layers)
            shape = tuple(layers[index].weight.shape)
            if tuple(weight.shape) not in (shape, (n, *shape)):
                raise ValueError(f"weight for deconvolution {index} must have shape {shape} or {(n, *shape)}, got "
                                 f"{tuple(weight.shape)}")
            weights[index] = weight
        return weights

    def forward(self, z: Tensor, labels: Tensor | None = None,
                deconv_weights: Mapping[int, Tensor] | None = None) -> Tensor:
        _check_labels(labels, self.num_classes, z.shape[0], "Generator")
        weights = self._replacement_weights(deconv_weights, z.shape[0])
        h = self.stem(z, labels)
        for i, block in enumerate(self.blocks):
            h = block(h, weights.get(i))
        return self.out(deconvolve(self.to_image, h, weights.get(len(self.blocks)), fold=self.fold_output))


class Discriminator(nn.Module):
    """DCGAN discriminator (or WGAN critic): image (and optionally its class) → one logit per image, shape ``(N,)``.

    Down-blocks with LeakyReLU(0.2); no normalisation on the first block (DCGAN); ``norm="layer"`` for critics that
    must not use batch norm (WGAN-GP). Conditioning: one-hot label maps concatenated to the input, as
    :class:`OneHotMapConv` (``label_maps``) added to the first convolution's output.

    As an image encoder (MetaCGAN): ``out_features > 1`` gives an ``(N, out_features)`` output, and
    :meth:`features` the flattened last feature map (the head's input), e.g. to pool it over a set of images.
    """

    def __init__(self, channels: int, image_size: int, width: int = 64, num_classes: int = 0,
                 norm: DiscriminatorNorm = "batch", out_features: int = 1, label_lookup: bool = False) -> None:
        super().__init__()
        _check("channels", channels, 1)
        _check("width", width, 1)
        _check("num_classes", num_classes, 0)
        _check("out_features", out_features, 1)
        self.out_features = out_features
        _norm2d(norm, 1)  # validates the name
        start, steps = spatial_plan(image_size)
        self.channels, self.image_size, self.num_classes = channels, image_size, num_classes
        widths = [width * 2**i for i in range(steps)]
        self.blocks = nn.ModuleList(
            DownBlock(channels if i == 0 else widths[i - 1], widths[i], "none" if i == 0 else norm)
            for i in range(steps)
        )
        self.label_maps = OneHotMapConv(num_classes, width, lookup=label_lookup) if num_classes > 0 else None
        self.head = nn.Linear(widths[-1] * start * start, out_features)

    def features(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The flattened last feature map, ``(N, F)``: what ``head`` sees."""
        _check_labels(labels, self.num_classes, x.shape[0], "Discriminator")
        h = x
        for i, block in enumerate(self.blocks):
            response = None
            if i == 0 and self.label_maps is not None:
                response = self.label_maps(labels, x.shape[-2], x.shape[-1])
            h = block(h, response)
        return h.flatten(1)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        # float32 logits also under bf16 autocast, so that losses (and their gradients) are computed in float32
        out = self.head(self.features(x, labels)).float()
        return out.squeeze(1) if self.out_features == 1 else out


@torch.no_grad()
def dcgan_init(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """DCGAN initialisation: conv/linear/embedding weights N(0, 0.02), batch-norm weights N(1, 0.02), biases 0.

    With ``generator`` every parameter is drawn from it (or set to a constant), so initialisation is reproducible,
    whatever the weights' memory format (``channels_last``).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding, OneHotMapConv)):
            fill_contiguous(m.weight, lambda w: nn.init.normal_(w, 0.0, 0.02, generator=generator))
            bias = getattr(m, "bias", None)
            if bias is not None:
                nn.init.zeros_(bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02, generator=generator)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
        elif isinstance(m, (nn.GroupNorm, nn.InstanceNorm2d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
