"""DiffAugment (Zhao et al. 2020): the official maths, differentiability, reproducibility, 1 and 3 channels."""

from __future__ import annotations

import pytest
import torch

from methods.diffaugment import (
    diff_augment,
    parse_policy,
    rand_brightness,
    rand_contrast,
    rand_cutout,
    rand_saturation,
    rand_translation,
)


def images(n: int = 8, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_shape_and_dtype_preserved_and_image_changed(policy, channels, size):
    x = images(channels=channels, size=size)
    y = diff_augment(x, policy, gen())
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    assert not torch.equal(x, y)


@pytest.mark.parametrize("channels", [1, 3])
def test_gradients_flow_through_every_augmentation(channels):
    x = images(channels=channels).requires_grad_(True)
    diff_augment(x, "color,translation,cutout", gen()).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("channels", [1, 3])
def test_reproducible_with_a_seeded_generator(channels):
    x = images(channels=channels)
    a = diff_augment(x, generator=gen(1))
    b = diff_augment(x, generator=gen(1))
    c = diff_augment(x, generator=gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_empty_policy_is_identity_and_unknown_policy_raises():
    x = images()
    assert diff_augment(x, "", gen()) is x
    assert parse_policy(" color , cutout ") == ("color", "cutout")
    with pytest.raises(ValueError, match="rotate"):
        diff_augment(x, "color,rotate", gen())


def test_brightness_adds_one_offset_per_image_within_half():
    x = images()
    delta = rand_brightness(x, gen()) - x
    per_image = delta.flatten(1)
    torch.testing.assert_close(per_image, per_image[:, :1].expand_as(per_image))
    assert per_image.abs().max() <= 0.5
    assert per_image[:, 0].unique().numel() == x.shape[0]


def test_saturation_keeps_channel_mean_and_is_identity_for_one_channel():
    x = images()
    y = rand_saturation(x, gen())
    torch.testing.assert_close(y.mean(1), x.mean(1))
    assert not torch.allclose(y, x)
    grey = images(channels=1)
    g = gen()
    state = g.get_state()
    assert torch.equal(rand_saturation(grey, g), grey)
    assert torch.equal(g.get_state(), state)  # no random numbers drawn for a no-op


def test_contrast_keeps_image_mean_and_scales_deviations_by_half_to_one_and_a_half():
    x = images()
    y = rand_contrast(x, gen())
    torch.testing.assert_close(y.mean(dim=[1, 2, 3]), x.mean(dim=[1, 2, 3]))
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    factor = ((y - mean).flatten(1) / (x - mean).flatten(1)).median(dim=1).values
    assert ((factor >= 0.5 - 1e-4) & (factor <= 1.5 + 1e-4)).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_translation_is_an_integer_shift_with_zero_fill(channels):
    size = 32
    x = images(n=16, channels=channels, size=size) + 3  # no zeros in the input
    y = rand_translation(x, gen())
    max_shift = int(size / 8 + 0.5)
    shifted = 0
    for i in range(x.shape[0]):
        matches = [
            (dy, dx)
            for dy in range(-max_shift, max_shift + 1)
            for dx in range(-max_shift, max_shift + 1)
            if _shift_matches(x[i], y[i], dy, dx)
        ]
        assert len(matches) == 1, f"image {i} is not a single shift within ±{max_shift}"
        shifted += matches[0] != (0, 0)
    assert shifted > 0


def _shift_matches(x: torch.Tensor, y: torch.Tensor, dy: int, dx: int) -> bool:
    """y[:, r, c] == x[:, r + dy, c + dx] where that exists, else 0."""
    _, h, w = x.shape
    expected = torch.zeros_like(x)
    rows = slice(max(0, -dy), min(h, h - dy))
    cols = slice(max(0, -dx), min(w, w - dx))
    src_rows = slice(rows.start + dy, rows.stop + dy)
    src_cols = slice(cols.start + dx, cols.stop + dx)
    expected[:, rows, cols] = x[:, src_rows, src_cols]
    return torch.equal(expected, y)


@pytest.mark.parametrize("channels", [1, 3])
def test_cutout_zeroes_one_clipped_square_of_half_the_side(channels):
    size = 32
    x = images(n=16, channels=channels, size=size) + 3
    y = rand_cutout(x, gen())
    for i in range(x.shape[0]):
        zero = (y[i] == 0).all(0)
        assert ((y[i] == 0) == zero).all()  # same pixels in every channel
        assert torch.equal(y[i][:, ~zero], x[i][:, ~zero])  # everything else untouched
        rows, cols = zero.nonzero(as_tuple=True)
        assert rows.numel() > 0
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert rows.numel() == height * width  # a rectangle
        assert 1 <= height <= size // 2 and 1 <= width <= size // 2
    # away from the borders the square is exactly size/2 on a side
    sides = [(y[i] == 0).all(0).sum().item() for i in range(x.shape[0])]
    assert max(sides) == (size // 2) ** 2


def test_generator_on_the_images_device_is_used():
    x = images()
    g = gen(5)
    before = g.get_state()
    diff_augment(x, "translation", g)
    assert not torch.equal(g.get_state(), before)
