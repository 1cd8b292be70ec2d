"""ProGAN generator and discriminator (Karras et al. 2018, "Progressive Growing of GANs") with progressive
growing at native resolution.

Every block up to model.resolution is built at construction, so the parameter count does not depend
on the training phase. The level of detail `lod` picks the active blocks: the networks work at
R_cur = R_final // 2**floor(lod), and t = lod - floor(lod) is the weight of the old, lower-resolution
branch during a fade-in (t = 1 when the new block has just appeared, t = 0 when it is fully on).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gan.config import INITIAL_RESOLUTION, ModelConfig, feature_maps
from gan.layers import (
    HE_GAIN,
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchStddev,
    PixelNorm,
    add_channel_bias,
    downscale2d,
    leaky_relu,
    pixel_norm,
    upscale2d,
)

# The 4x4 dense layer of G replaces the Theano code's 4x4 "full" conv on a 1x1 input, whose fan_in is
# 16x larger. The gain sqrt(2)/4 keeps the effective weight std the same, as in the official TF code.
GENERATOR_DENSE_GAIN = HE_GAIN / 4
OUTPUT_GAIN = 1.0  # toRGB and D's last dense are linear outputs


def max_lod(final_resolution: int) -> int:
    """Return the lod of the 4x4 stage, log2(final_resolution) - 2."""
    return int(math.log2(final_resolution)) - int(math.log2(INITIAL_RESOLUTION))


def fade_state(final_resolution: int, lod: float) -> tuple[int, float]:
    """Return (floor(lod), t = frac(lod)) after clamping lod to [0, max_lod(final_resolution)]."""
    lod = float(lod)
    if not math.isfinite(lod):
        raise ValueError(f"lod must be a finite number, got {lod}")
    lod = min(max(lod, 0.0), float(max_lod(final_resolution)))
    level = math.floor(lod)
    return level, lod - level


def resolution_for_lod(final_resolution: int, lod: float) -> int:
    """Return the resolution the networks work at: R_final // 2**floor(lod), lod clamped as in fade_state."""
    level, _ = fade_state(final_resolution, lod)
    return final_resolution // 2**level


def _check_model(model: ModelConfig) -> None:
    resolution = model.resolution
    if resolution < INITIAL_RESOLUTION or resolution & (resolution - 1) != 0:
        raise ValueError(f"model.resolution must be a power of two of at least 4, got {resolution}")
    if model.channels not in (1, 3):
        raise ValueError(f"model.channels must be 1 or 3, got {model.channels}")


class GeneratorFirstBlock(nn.Module):
    """Latent (N, latent_size) -> (N, nf(1), 4, 4): dense, bias, LReLU, PN, then conv3x3, LReLU, PN."""

    def __init__(self, latent_size: int, channels: int, eps: float, generator: torch.Generator | None):
        super().__init__()
        self.channels = channels
        self.dense = EqualizedLinear(latent_size, channels * INITIAL_RESOLUTION**2, gain=GENERATOR_DENSE_GAIN,
                                     bias=False, generator=generator)
        self.dense_bias = nn.Parameter(torch.zeros(channels))  # one per channel, added after the reshape
        self.conv = EqualizedConv2d(channels, channels, 3, generator=generator)
        self.norm = PixelNorm(eps)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.dense(z).view(-1, self.channels, INITIAL_RESOLUTION, INITIAL_RESOLUTION)
        x = self.norm(leaky_relu(add_channel_bias(x, self.dense_bias)))
        return self.norm(leaky_relu(self.conv(x)))


class GeneratorBlock(nn.Module):
    """(N, C_in, r/2, r/2) -> (N, C_out, r, r): nearest up2 + conv3x3, LReLU, PN, then conv3x3, LReLU, PN."""

    def __init__(self, in_channels: int, out_channels: int, eps: float, generator: torch.Generator | None):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, out_channels, 3, generator=generator)
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3, generator=generator)
        self.norm = PixelNorm(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(leaky_relu(self.conv0(upscale2d(x))))
        return self.norm(leaky_relu(self.conv1(x)))


class Generator(nn.Module):
    """ProGAN generator: z (N, latent_size) -> images (N, C, R_cur, R_cur) from a linear toRGB (no tanh).

    blocks[i] and to_rgb[i] belong to resolution 4 * 2**i. `generator` seeds the weights; None draws
    from torch's default generator.
    """

    def __init__(self, model: ModelConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        _check_model(model)
        self.resolution = model.resolution
        self.channels = model.channels
        self.latent_size = model.latent_size if model.latent_size is not None else feature_maps(model, 0)
        self.normalize_latents = model.normalize_latents
        self.pixelnorm_eps = model.pixelnorm_eps
        self.max_lod = max_lod(model.resolution)

        blocks = [GeneratorFirstBlock(self.latent_size, feature_maps(model, 1), model.pixelnorm_eps, generator)]
        to_rgb = []
        for index in range(self.max_lod + 1):
            stage = index + 2  # log2 of this block's resolution
            if index > 0:
                blocks.append(GeneratorBlock(feature_maps(model, stage - 2), feature_maps(model, stage - 1),
                                             model.pixelnorm_eps, generator))
            to_rgb.append(EqualizedConv2d(feature_maps(model, stage - 1), model.channels, 1,
                                          gain=OUTPUT_GAIN, generator=generator))
        self.blocks = nn.ModuleList(blocks)
        self.to_rgb = nn.ModuleList(to_rgb)

    def forward(self, z: torch.Tensor, lod: float) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_size:
            raise ValueError(f"Generator expects latents of shape (N, {self.latent_size}), got {tuple(z.shape)}")
        level, t = fade_state(self.resolution, lod)
        current = self.max_lod - level

        x = pixel_norm(z, self.pixelnorm_eps) if self.normalize_latents else z
        x = self.blocks[0](x)
        previous = x
        for index in range(1, current + 1):
            previous = x
            x = self.blocks[index](x)
        image = self.to_rgb[current](x)

        # Fade-in: blend toward the previous resolution's output, nearest-upsampled, with weight t.
        if t > 0:
            assert current > 0, f"lod {lod} fades in a block below 4x4"
            old = upscale2d(self.to_rgb[current - 1](previous))
            image = image + t * (old - image)

        size = INITIAL_RESOLUTION * 2**current
        assert image.shape[1:] == (self.channels, size, size), (
            f"Generator at lod {lod} should output (N, {self.channels}, {size}, {size}), got {tuple(image.shape)}")
        return image


class DiscriminatorBlock(nn.Module):
    """(N, C_in, r, r) -> (N, C_out, r/2, r/2): conv3x3, LReLU, then conv3x3, 2x2 box down, bias, LReLU."""

    def __init__(self, in_channels: int, out_channels: int, generator: torch.Generator | None):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3, generator=generator)
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3, bias=False, generator=generator)
        self.conv1_bias = nn.Parameter(torch.zeros(out_channels))  # added after downscaling, as in the TF code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = leaky_relu(self.conv0(x))
        x = downscale2d(self.conv1(x))
        return leaky_relu(add_channel_bias(x, self.conv1_bias))


class DiscriminatorLastBlock(nn.Module):
    """(N, nf(1), 4, 4) -> (N,) scores: minibatch stddev, conv3x3, LReLU, dense, LReLU, dense (linear)."""

    def __init__(self, channels: int, dense_features: int, group_size: int, generator: torch.Generator | None):
        super().__init__()
        self.channels = channels
        self.mbstd = MinibatchStddev(group_size)
        self.conv = EqualizedConv2d(channels + 1, channels, 3, generator=generator)
        self.dense0 = EqualizedLinear(channels * INITIAL_RESOLUTION**2, dense_features, generator=generator)
        self.dense1 = EqualizedLinear(dense_features, 1, gain=OUTPUT_GAIN, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (self.channels, INITIAL_RESOLUTION, INITIAL_RESOLUTION), (
            f"Discriminator 4x4 block expects (N, {self.channels}, 4, 4), got {tuple(x.shape)}")
        x = leaky_relu(self.conv(self.mbstd(x)))
        x = leaky_relu(self.dense0(x.flatten(1)))
        return self.dense1(x).squeeze(1)


class Discriminator(nn.Module):
    """ProGAN discriminator: images (N, C, R_cur, R_cur) -> scores (N,).

    from_rgb[i] and blocks[i] belong to resolution 4 * 2**i; blocks[0] is the 4x4 output block.
    `generator` seeds the weights; None draws from torch's default generator.
    """

    def __init__(self, model: ModelConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        _check_model(model)
        self.resolution = model.resolution
        self.channels = model.channels
        self.max_lod = max_lod(model.resolution)

        blocks = [DiscriminatorLastBlock(feature_maps(model, 1), feature_maps(model, 0),
                                         model.mbstd_group_size, generator)]
        from_rgb = []
        for index in range(self.max_lod + 1):
            stage = index + 2
            if index > 0:
                blocks.append(DiscriminatorBlock(feature_maps(model, stage - 1), feature_maps(model, stage - 2),
                                                 generator))
            from_rgb.append(EqualizedConv2d(model.channels, feature_maps(model, stage - 1), 1,
                                            generator=generator))
        self.blocks = nn.ModuleList(blocks)
        self.from_rgb = nn.ModuleList(from_rgb)

    def forward(self, images: torch.Tensor, lod: float) -> torch.Tensor:
        level, t = fade_state(self.resolution, lod)
        current = self.max_lod - level
        size = INITIAL_RESOLUTION * 2**current
        if images.ndim != 4 or images.shape[1:] != (self.channels, size, size):
            raise ValueError(f"Discriminator at lod {lod} expects images of shape (N, {self.channels}, {size}, "
                             f"{size}), got {tuple(images.shape)}")

        x = leaky_relu(self.from_rgb[current](images))
        if current > 0:
            x = self.blocks[current](x)

        # Fade-in: blend the new block's output with fromRGB of the 2x2-averaged images, weight t on the old.
        if t > 0:
            assert current > 0, f"lod {lod} fades in a block below 4x4"
            old = leaky_relu(self.from_rgb[current - 1](downscale2d(images)))
            x = x + t * (old - x)

        for index in range(current - 1, 0, -1):
            x = self.blocks[index](x)
        return self.blocks[0](x)
