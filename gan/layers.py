"""Building blocks of the ProGAN networks: equalized-learning-rate layers, pixel norm, minibatch
standard deviation and the 2x resampling filters (nearest up, 2x2 box down).

Equalized learning rate follows the official TensorFlow code (tkarras/progressive_growing_of_gans,
networks.py get_weight): weights are stored as N(0, 1) samples and multiplied by gain / sqrt(fan_in)
in every forward pass, so Adam takes steps of the same relative size in every layer. Biases start
at zero and are never scaled.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HE_GAIN = math.sqrt(2.0)  # default gain of every conv and dense layer
LRELU_SLOPE = 0.2
MBSTD_EPSILON = 1e-8  # added to the group variance before the square root, as in the official code


def _init_standard_normal(weight: torch.Tensor, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        weight.normal_(0.0, 1.0, generator=generator)


class EqualizedLinear(nn.Module):
    """Dense layer whose N(0, 1) weight is scaled by gain / sqrt(in_features) at run time.

    `generator` seeds the weight; None draws from torch's default generator.
    """

    def __init__(self, in_features: int, out_features: int, *, gain: float = HE_GAIN, bias: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.gain = gain
        self.scale = gain / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        _init_standard_normal(self.weight, generator)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.in_features, (
            f"EqualizedLinear expects {self.in_features} input features, got shape {tuple(x.shape)}")
        return F.linear(x, self.weight * self.scale, self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, gain={self.gain:.4g}, "
                f"bias={self.bias is not None}")


class EqualizedConv2d(nn.Module):
    """Square conv with 'same' zero padding whose N(0, 1) weight is scaled by gain / sqrt(k*k*C_in).

    `generator` seeds the weight; None draws from torch's default generator.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, gain: float = HE_GAIN,
                 bias: bool = True, generator: torch.Generator | None = None):
        super().__init__()
        assert kernel_size % 2 == 1, f"'same' padding needs an odd kernel size, got {kernel_size}"
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.gain = gain
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        _init_standard_normal(self.weight, generator)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4, f"EqualizedConv2d expects (N, C, H, W), got shape {tuple(x.shape)}"
        assert x.shape[1] == self.in_channels, (
            f"EqualizedConv2d expects (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.kernel_size // 2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"gain={self.gain:.4g}, bias={self.bias is not None}")


def add_channel_bias(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Add a per-channel bias of shape (C,) to an (N, C, H, W) tensor."""
    return x + bias.view(1, -1, 1, 1)


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    """LeakyReLU with the slope 0.2 used by every hidden layer of both networks."""
    return F.leaky_relu(x, LRELU_SLOPE)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Divide each feature vector (dim 1) by its root mean square: x / sqrt(mean_c(x^2) + eps)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


class PixelNorm(nn.Module):
    """Module form of `pixel_norm` with a fixed epsilon."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_norm(x, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"


def minibatch_stddev(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Append one channel holding the mean standard deviation of each sample's group.

    Groups have min(group_size, N) members and are strided. With M = N / group, sample n belongs to
    column m = n % M, whose group is samples {m, m + M, m + 2M, ...}. The statistic is the biased
    variance over the group, plus 1e-8, square-rooted, averaged over C, H and W. Half-precision
    inputs are computed in float32. Raises ValueError if N is not divisible by the group size.
    """
    assert x.ndim == 4, f"minibatch_stddev expects (N, C, H, W), got shape {tuple(x.shape)}"
    batch, channels, height, width = x.shape
    group = min(group_size, batch)
    if batch % group != 0:
        raise ValueError(
            f"minibatch size {batch} is not divisible by the minibatch-stddev group size {group_size}. "
            f"Use a minibatch that is a multiple of {group_size} (or smaller than it)")
    columns = batch // group

    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    y = x.to(compute_dtype).reshape(group, columns, channels, height, width)
    y = y - y.mean(dim=0, keepdim=True)
    variance = y.square().mean(dim=0)  # biased: divide by the group size, not group size - 1
    stddev = torch.sqrt(variance + MBSTD_EPSILON)
    per_column = stddev.mean(dim=(1, 2, 3))  # (M,)

    # Sample n = g * M + m gets column m's statistic, which is what repeat() lays out.
    per_sample = per_column.repeat(group).to(x.dtype)
    feature = per_sample.view(batch, 1, 1, 1).expand(batch, 1, height, width)
    return torch.cat([x, feature], dim=1)


class MinibatchStddev(nn.Module):
    """Module form of `minibatch_stddev` with a fixed group size."""

    def __init__(self, group_size: int = 4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return minibatch_stddev(x, self.group_size)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


def upscale2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour upsampling of (N, C, H, W) by an integer factor (each pixel tiled f x f)."""
    if factor == 1:
        return x
    batch, channels, height, width = x.shape
    tiled = x.reshape(batch, channels, height, 1, width, 1).expand(-1, -1, -1, factor, -1, factor)
    return tiled.reshape(batch, channels, height * factor, width * factor)


def downscale2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Box-filter downsampling of (N, C, H, W): the mean of each factor x factor block."""
    if factor == 1:
        return x
    assert x.shape[-2] % factor == 0, f"downscale2d by {factor} needs H divisible by {factor}: {tuple(x.shape)}"
    assert x.shape[-1] % factor == 0, f"downscale2d by {factor} needs W divisible by {factor}: {tuple(x.shape)}"
    return F.avg_pool2d(x, factor)
