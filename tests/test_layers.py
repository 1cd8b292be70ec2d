"""Layer tests against float64 NumPy references written here: equalized LR, pixel norm, minibatch
stddev and the resampling filters."""

import math

import numpy as np
import pytest
import torch

from gan.layers import (
    EqualizedConv2d,
    EqualizedLinear,
    PixelNorm,
    downscale2d,
    minibatch_stddev,
    pixel_norm,
    upscale2d,
)

SQRT2 = math.sqrt(2.0)


def np_conv2d_same(x, weight, bias):
    """Cross-correlation with zero padding k // 2, as torch conv2d computes it, in float64."""
    k = weight.shape[-1]
    padded = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    patches = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))  # (N, C, H, W, k, k)
    return np.einsum("nchwij,ocij->nohw", patches, weight) + bias[None, :, None, None]


def np_minibatch_stddev_stat(x, group_size):
    """Per-sample statistic of the official layer, written with explicit strided groups."""
    n = x.shape[0]
    group = min(group_size, n)
    columns = n // group
    stat = np.empty(n)
    for m in range(columns):
        members = x[m::columns]  # samples m, m + M, m + 2M, ...
        assert members.shape[0] == group
        variance = ((members - members.mean(axis=0)) ** 2).mean(axis=0)
        value = np.sqrt(variance + 1e-8).mean()
        stat[m::columns] = value
    return stat


def randomize(module, generator):
    """Fill every parameter (weights and biases) with N(0, 1) values in float64."""
    module.double()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("gain", [SQRT2, SQRT2 / 4, 1.0])
def test_linear_scale_is_gain_over_sqrt_fan_in(gain):
    rng = torch.Generator().manual_seed(0)
    layer = EqualizedLinear(6, 5, gain=gain)
    randomize(layer, rng)
    x = torch.randn(3, 6, generator=rng, dtype=torch.float64)

    w = layer.weight.detach().numpy()
    b = layer.bias.detach().numpy()
    expected = x.numpy() @ (w * gain / math.sqrt(6)).T + b  # bias unscaled
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel, gain", [(3, SQRT2), (1, SQRT2), (1, 1.0), (3, 0.5)])
def test_conv_scale_is_gain_over_sqrt_fan_in(kernel, gain):
    rng = torch.Generator().manual_seed(1)
    layer = EqualizedConv2d(4, 5, kernel, gain=gain)
    randomize(layer, rng)
    x = torch.randn(2, 4, 6, 6, generator=rng, dtype=torch.float64)

    fan_in = kernel * kernel * 4
    w = layer.weight.detach().numpy() * gain / math.sqrt(fan_in)
    expected = np_conv2d_same(x.numpy(), w, layer.bias.detach().numpy())
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_scale_applies_to_current_weight():
    layer = EqualizedLinear(4, 3, gain=1.0).double()
    x = torch.ones(1, 4, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.fill_(2.0)
    # Each output is sum_i 2 * 1/sqrt(4) = 4, with the weight changed after construction.
    np.testing.assert_allclose(layer(x).detach().numpy(), np.full((1, 3), 4.0), rtol=1e-12)


def test_weight_gradient_carries_scale():
    layer = EqualizedLinear(8, 2, gain=SQRT2).double()
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    layer(x).sum().backward()
    # d(sum out)/dW[o, i] = scale * sum_n x[n, i] for every output row o.
    expected = np.tile(x.numpy().sum(axis=0) * SQRT2 / math.sqrt(8), (2, 1))
    np.testing.assert_allclose(layer.weight.grad.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(layer.bias.grad.numpy(), [5.0, 5.0], rtol=1e-12)


def test_weights_init_standard_normal_bias_zero():
    torch.manual_seed(0)
    dense = EqualizedLinear(512, 512)
    conv = EqualizedConv2d(64, 128, 3)
    for layer in (dense, conv):
        weight = layer.weight.detach().double()
        assert abs(weight.mean().item()) < 0.01
        assert abs(weight.std().item() - 1.0) < 0.01
        assert torch.count_nonzero(layer.bias) == 0


def test_weights_follow_explicit_generator():
    first = EqualizedConv2d(3, 4, 3, generator=torch.Generator().manual_seed(5))
    second = EqualizedConv2d(3, 4, 3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(first.weight, second.weight, rtol=0, atol=0)


def test_layer_without_bias():
    layer = EqualizedConv2d(2, 3, 3, bias=False)
    assert layer.bias is None
    assert [name for name, _ in layer.named_parameters()] == ["weight"]


@pytest.mark.parametrize("eps", [1e-8, 1e-4])
def test_pixel_norm_matches_numpy(eps):
    x = torch.randn(3, 7, 4, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = x.numpy() / np.sqrt((x.numpy() ** 2).mean(axis=1, keepdims=True) + eps)
    np.testing.assert_allclose(pixel_norm(x, eps).numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(PixelNorm(eps)(x).numpy(), ref, rtol=1e-12)


def test_pixel_norm_of_latents_has_unit_rms():
    z = torch.randn(4, 512, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    rms = pixel_norm(z).square().mean(dim=1).sqrt()
    # eps = 1e-8 pulls the RMS below 1 by about eps / 2 / mean(z^2).
    np.testing.assert_allclose(rms.numpy(), np.ones(4), rtol=1e-7)


def test_pixel_norm_epsilon_counts():
    # mean_c(x^2) = 1e-8 equals eps, so x / sqrt(2e-8) = 1e-4 / (1e-4 * sqrt(2)).
    x = torch.full((1, 3, 2, 2), 1e-4, dtype=torch.float64)
    np.testing.assert_allclose(pixel_norm(x, 1e-8).numpy(), np.full((1, 3, 2, 2), 1 / SQRT2), rtol=1e-12)
    zeros = torch.zeros(1, 3, 2, 2)
    assert torch.equal(pixel_norm(zeros), zeros)


@pytest.mark.parametrize("batch, group_size", [(8, 4), (8, 2), (4, 4), (3, 4), (6, 1), (12, 3)])
def test_mbstd_matches_numpy(batch, group_size):
    x = torch.randn(batch, 5, 3, 3, generator=torch.Generator().manual_seed(batch), dtype=torch.float64)
    out = minibatch_stddev(x, group_size)

    assert out.shape == (batch, 6, 3, 3)
    torch.testing.assert_close(out[:, :5], x, rtol=0, atol=0)
    expected = np_minibatch_stddev_stat(x.numpy(), group_size)
    np.testing.assert_allclose(out[:, 5].numpy(), np.broadcast_to(expected[:, None, None], (batch, 3, 3)),
                               rtol=1e-12)


def test_mbstd_groups_are_strided():
    x = torch.randn(8, 2, 2, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    before = minibatch_stddev(x, 4)[:, -1, 0, 0]
    perturbed = x.clone()
    perturbed[1] += 3.0
    after = minibatch_stddev(perturbed, 4)[:, -1, 0, 0]

    # With N=8 and group 4 there are M=2 columns, so sample 1 shares column 1 with samples 3, 5, 7.
    changed = (after - before).abs() > 1e-9
    assert changed.tolist() == [False, True, False, True, False, True, False, True]


def test_mbstd_uses_biased_variance():
    # A group of two samples, a = 0 and b = 2 everywhere: biased variance ((a - b) / 2)^2 = 1.
    x = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    x[1] = 2.0
    stat = minibatch_stddev(x, 4)[:, -1]
    np.testing.assert_allclose(stat.numpy(), np.full((2, 2, 2), math.sqrt(1.0 + 1e-8)), rtol=1e-12)


def test_mbstd_adds_epsilon_before_sqrt():
    x = torch.ones(4, 3, 2, 2, dtype=torch.float64)  # zero variance: the statistic is sqrt(1e-8)
    stat = minibatch_stddev(x, 4)[:, -1]
    np.testing.assert_allclose(stat.numpy(), np.full((4, 2, 2), 1e-4), rtol=1e-12)


def test_mbstd_float32_close_to_numpy():
    x = torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(7))
    out = minibatch_stddev(x, 4)
    assert out.dtype == torch.float32
    expected = np_minibatch_stddev_stat(x.double().numpy(), 4)
    np.testing.assert_allclose(out[:, -1, 0, 0].numpy(), expected, rtol=1e-5)


def test_mbstd_rejects_indivisible_batch():
    with pytest.raises(ValueError, match=r"minibatch size 6 .* group size 4"):
        minibatch_stddev(torch.zeros(6, 2, 4, 4), 4)


def test_upscale2d_is_nearest():
    x = torch.arange(2 * 3 * 2 * 3, dtype=torch.float64).reshape(2, 3, 2, 3)
    expected = np.repeat(np.repeat(x.numpy(), 2, axis=2), 2, axis=3)
    np.testing.assert_array_equal(upscale2d(x).numpy(), expected)
    expected4 = np.repeat(np.repeat(x.numpy(), 4, axis=2), 4, axis=3)
    np.testing.assert_array_equal(upscale2d(x, 4).numpy(), expected4)


def test_downscale2d_is_box_average():
    x = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    expected = x.numpy().reshape(2, 3, 2, 2, 3, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(downscale2d(x).numpy(), expected, rtol=1e-12)


def test_downscale_undoes_upscale():
    x = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    np.testing.assert_allclose(downscale2d(upscale2d(x)).numpy(), x.numpy(), rtol=1e-15)
