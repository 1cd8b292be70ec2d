"""Generator and discriminator tests: parameter counts of the published 1024x1024 networks (23.1 M each),
equalized-LR gains, whole-network float64 NumPy references, fade-in at both ends and output shapes at every lod."""

import math

import numpy as np
import pytest
import torch

from gan.config import ModelConfig
from gan.networks import Discriminator, Generator, resolution_for_lod

SQRT2 = math.sqrt(2.0)
LATENT = 12
# nf(stage) for fmap_base 128, fmap_max 32: stages 0..4 -> 32, 32, 32, 16, 8.
TINY = dict(resolution=16, fmap_base=128, fmap_max=32, latent_size=LATENT, mbstd_group_size=4)
TINY_MAX_LOD = 2  # log2(16) - log2(4)
BATCH = 8


def tiny_model(**overrides):
    return ModelConfig(**{**TINY, **overrides})


def randomized(network, seed):
    """Return the network in float64 with every weight and bias drawn from N(0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    network.double()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return network


def numpy_params(network):
    return {name: p.detach().numpy() for name, p in network.named_parameters()}


# Float64 NumPy reference of the published architecture.

def np_lrelu(x):
    return np.where(x >= 0, x, 0.2 * x)


def np_pixel_norm(x, eps=1e-8):
    return x / np.sqrt((x**2).mean(axis=1, keepdims=True) + eps)


def np_up(x):
    return np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)


def np_down(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def np_correlate(x, weight):
    """Cross-correlation with zero padding k // 2, as torch conv2d computes it."""
    k = weight.shape[-1]
    padded = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    patches = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", patches, weight)


def np_conv(x, weight, gain, bias=None):
    """Conv with the equalized-LR scale gain / sqrt(k * k * C_in) and an unscaled bias."""
    _, in_channels, k, _ = weight.shape
    out = np_correlate(x, weight * gain / math.sqrt(k * k * in_channels))
    return out if bias is None else out + bias[None, :, None, None]


def np_dense(x, weight, gain, bias=None):
    out = x @ (weight * gain / math.sqrt(weight.shape[1])).T
    return out if bias is None else out + bias


def np_mbstd(x, group_size):
    n = x.shape[0]
    group = min(group_size, n)
    columns = n // group
    stat = np.empty(n)
    for m in range(columns):
        members = x[m::columns]
        stat[m::columns] = np.sqrt(((members - members.mean(axis=0)) ** 2).mean(axis=0) + 1e-8).mean()
    feature = np.broadcast_to(stat[:, None, None, None], (n, 1) + x.shape[2:])
    return np.concatenate([x, feature], axis=1)


def np_generator(p, z, lod):
    level = math.floor(lod)
    t = lod - level
    current = TINY_MAX_LOD - level

    x = np_pixel_norm(z)
    x = np_dense(x, p["blocks.0.dense.weight"], SQRT2 / 4).reshape(len(z), -1, 4, 4)
    x = np_pixel_norm(np_lrelu(x + p["blocks.0.dense_bias"][None, :, None, None]))
    x = np_pixel_norm(np_lrelu(np_conv(x, p["blocks.0.conv.weight"], SQRT2, p["blocks.0.conv.bias"])))
    previous = x
    for i in range(1, current + 1):
        previous = x
        x = np_up(x)
        for conv in ("conv0", "conv1"):
            x = np_conv(x, p[f"blocks.{i}.{conv}.weight"], SQRT2, p[f"blocks.{i}.{conv}.bias"])
            x = np_pixel_norm(np_lrelu(x))
    image = np_conv(x, p[f"to_rgb.{current}.weight"], 1.0, p[f"to_rgb.{current}.bias"])
    if t > 0:
        old = np_up(np_conv(previous, p[f"to_rgb.{current - 1}.weight"], 1.0, p[f"to_rgb.{current - 1}.bias"]))
        image = image + t * (old - image)
    return image


def np_from_rgb(p, images, index):
    return np_lrelu(np_conv(images, p[f"from_rgb.{index}.weight"], SQRT2, p[f"from_rgb.{index}.bias"]))


def np_discriminator_block(p, x, i):
    x = np_lrelu(np_conv(x, p[f"blocks.{i}.conv0.weight"], SQRT2, p[f"blocks.{i}.conv0.bias"]))
    x = np_down(np_conv(x, p[f"blocks.{i}.conv1.weight"], SQRT2))
    return np_lrelu(x + p[f"blocks.{i}.conv1_bias"][None, :, None, None])


def np_discriminator(p, images, lod):
    level = math.floor(lod)
    t = lod - level
    current = TINY_MAX_LOD - level

    x = np_from_rgb(p, images, current)
    if current > 0:
        x = np_discriminator_block(p, x, current)
    if t > 0:
        x = x + t * (np_from_rgb(p, np_down(images), current - 1) - x)
    for i in range(current - 1, 0, -1):
        x = np_discriminator_block(p, x, i)
    x = np_mbstd(x, 4)
    x = np_lrelu(np_conv(x, p["blocks.0.conv.weight"], SQRT2, p["blocks.0.conv.bias"]))
    x = np_lrelu(np_dense(x.reshape(len(x), -1), p["blocks.0.dense0.weight"], SQRT2, p["blocks.0.dense0.bias"]))
    return np_dense(x, p["blocks.0.dense1.weight"], 1.0, p["blocks.0.dense1.bias"])[:, 0]


def param_count(network):
    return sum(p.numel() for p in network.parameters())


def test_param_counts_match_paper():
    model = ModelConfig()  # 1024x1024, 3 channels, fmap_base 8192, fmap_max 512, latent nf(0) = 512
    generator, discriminator = Generator(model), Discriminator(model)
    assert abs(param_count(generator) - 23.08e6) / 23.08e6 < 0.005
    assert abs(param_count(discriminator) - 23.09e6) / 23.09e6 < 0.005

    # Exact counts from the channel table of the official code (G block channels per resolution).
    channels = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    g_total = 512 * 512 * 16 + 512 + 512 * 512 * 9 + 512 + 512 * 3 + 3
    d_total = 3 * 512 + 512 + 513 * 512 * 9 + 512 + 512 * 16 * 512 + 512 + 512 + 1
    for res in [8, 16, 32, 64, 128, 256, 512, 1024]:
        c_in, c_out = channels[res // 2], channels[res]
        g_total += c_in * c_out * 9 + c_out + c_out * c_out * 9 + c_out + c_out * 3 + 3
        d_total += 3 * c_out + c_out + c_out * c_out * 9 + c_out + c_out * c_in * 9 + c_in
    assert param_count(generator) == g_total
    assert param_count(discriminator) == d_total


def test_init_weights_normal_biases_zero():
    torch.manual_seed(0)
    generator, discriminator = Generator(tiny_model()), Discriminator(tiny_model())
    for network in (generator, discriminator):
        weights = torch.cat([p.detach().flatten() for n, p in network.named_parameters() if n.endswith("weight")])
        biases = [p for n, p in network.named_parameters() if not n.endswith("weight")]
        assert abs(weights.mean().item()) < 0.02
        assert abs(weights.std().item() - 1.0) < 0.02
        assert all(torch.count_nonzero(b) == 0 for b in biases)


def test_explicit_generator_reproduces_weights():
    first = Generator(tiny_model(), generator=torch.Generator().manual_seed(3))
    second = Generator(tiny_model(), generator=torch.Generator().manual_seed(3))
    for a, b in zip(first.parameters(), second.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# (network, module, fan_in, gain) for the tiny model. fan_in is k * k * C_in, or C_in for dense layers.
EQUALIZED_LAYERS = [
    ("G", "blocks.0.dense", LATENT, SQRT2 / 4),
    ("G", "blocks.0.conv", 9 * 32, SQRT2),
    ("G", "blocks.2.conv0", 9 * 32, SQRT2),
    ("G", "blocks.2.conv1", 9 * 16, SQRT2),
    ("G", "to_rgb.0", 32, 1.0),
    ("G", "to_rgb.2", 16, 1.0),
    ("D", "from_rgb.2", 3, SQRT2),
    ("D", "blocks.2.conv0", 9 * 16, SQRT2),
    ("D", "blocks.2.conv1", 9 * 16, SQRT2),
    ("D", "blocks.0.conv", 9 * 33, SQRT2),
    ("D", "blocks.0.dense0", 32 * 16, SQRT2),
    ("D", "blocks.0.dense1", 32, 1.0),
]


@pytest.mark.parametrize("which, path, fan_in, gain", EQUALIZED_LAYERS)
def test_layer_scale_is_gain_over_sqrt_fan_in(which, path, fan_in, gain):
    network = Generator(tiny_model()) if which == "G" else Discriminator(tiny_model())
    layer = randomized(network, seed=1).get_submodule(path)
    weight = layer.weight.detach().numpy()
    bias = None if layer.bias is None else layer.bias.detach().numpy()
    rng = torch.Generator().manual_seed(2)

    if weight.ndim == 2:
        x = torch.randn(3, weight.shape[1], generator=rng, dtype=torch.float64)
        expected = x.numpy() @ (weight * gain / math.sqrt(fan_in)).T + (0 if bias is None else bias)
    else:
        x = torch.randn(2, weight.shape[1], 4, 4, generator=rng, dtype=torch.float64)
        expected = np_correlate(x.numpy(), weight * gain / math.sqrt(fan_in))
        if bias is not None:
            expected = expected + bias[None, :, None, None]
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("lod", [2.0, 1.75, 1.5, 1.0, 0.3, 0.0])
def test_generator_matches_numpy(lod):
    generator = randomized(Generator(tiny_model()), seed=4)
    z = torch.randn(BATCH, LATENT, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = np_generator(numpy_params(generator), z.numpy(), lod)
    np.testing.assert_allclose(generator(z, lod).detach().numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("lod", [2.0, 1.75, 1.5, 1.0, 0.3, 0.0])
def test_discriminator_matches_numpy(lod):
    discriminator = randomized(Discriminator(tiny_model()), seed=6)
    size = resolution_for_lod(16, lod)
    images = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    expected = np_discriminator(numpy_params(discriminator), images.numpy(), lod)
    np.testing.assert_allclose(discriminator(images, lod).detach().numpy(), expected, rtol=1e-9, atol=1e-9)


def up2(x):
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


@pytest.mark.parametrize("level", [0, 1])
def test_generator_fade_ends(level):
    generator = randomized(Generator(tiny_model()), seed=8)
    z = torch.randn(BATCH, LATENT, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    with torch.no_grad():
        new = generator(z, level)  # t = 0: the new block alone
        old = up2(generator(z, level + 1))

        # t -> 1 at the start of the fade-in: the old resolution's output, nearest-upsampled.
        torch.testing.assert_close(generator(z, level + 1 - 1e-9), old, rtol=0, atol=1e-6)
        for t in (0.25, 0.5, 0.75):
            torch.testing.assert_close(generator(z, level + t), (1 - t) * new + t * old, rtol=1e-10, atol=1e-10)

        # At t = 0 the old toRGB must not contribute; at t = 0.5 it must.
        old_to_rgb = generator.to_rgb[TINY_MAX_LOD - level - 1]
        halfway = generator(z, level + 0.5)
        old_to_rgb.bias.add_(10.0)
        torch.testing.assert_close(generator(z, level), new, rtol=0, atol=0)
        assert (generator(z, level + 0.5) - halfway).abs().min() > 1.0


@pytest.mark.parametrize("level", [0, 1])
def test_discriminator_fade_ends(level):
    discriminator = randomized(Discriminator(tiny_model()), seed=10)
    size = 16 // 2**level
    images = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    pooled = images.reshape(BATCH, 3, size // 2, 2, size // 2, 2).mean(dim=(3, 5))
    with torch.no_grad():
        # t -> 1: the new block is bypassed and D scores the 2x2-averaged images at the old resolution.
        torch.testing.assert_close(discriminator(images, level + 1 - 1e-9), discriminator(pooled, level + 1),
                                   rtol=0, atol=1e-6)

        # t = 0: the old fromRGB must not contribute; at t = 0.5 it must.
        new = discriminator(images, level)
        halfway = discriminator(images, level + 0.5)
        discriminator.from_rgb[TINY_MAX_LOD - level - 1].bias.add_(10.0)
        torch.testing.assert_close(discriminator(images, level), new, rtol=0, atol=0)
        assert not torch.allclose(discriminator(images, level + 0.5), halfway)


# lod -> resolution for a 16x16 model, with lod clamped to [0, 2].
TINY_RESOLUTIONS = {-1.0: 16, 0.0: 16, 0.25: 16, 0.5: 16, 0.99: 16, 1.0: 8, 1.5: 8, 2.0: 4, 2.5: 4, 5.0: 4}


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_at_every_lod(channels):
    model = tiny_model(channels=channels)
    generator, discriminator = Generator(model), Discriminator(model)
    z = torch.randn(BATCH, LATENT, generator=torch.Generator().manual_seed(12))
    for lod, size in TINY_RESOLUTIONS.items():
        images = generator(z, lod)
        assert images.shape == (BATCH, channels, size, size), f"lod {lod}"
        scores = discriminator(images, lod)
        assert scores.shape == (BATCH,), f"lod {lod}"
        assert torch.isfinite(scores).all()


def test_resolution_for_lod_table():
    # In a 1024 run, lod 8 trains 4x4 and a fade-in toward 8x8 (lod 7.5) already works at 8x8.
    table = {8.0: 4, 7.5: 8, 7.0: 8, 4.2: 64, 1.0: 512, 0.5: 1024, 0.0: 1024, -0.5: 1024, 9.0: 4}
    for lod, size in table.items():
        assert resolution_for_lod(1024, lod) == size, f"lod {lod}"


def test_latents_with_default_latent_size():
    model = ModelConfig(resolution=8, fmap_base=64, fmap_max=16)  # latent_size None: nf(0) = 16
    generator = Generator(model)
    assert generator.latent_size == 16
    assert generator(torch.randn(2, 16), 0.0).shape == (2, 3, 8, 8)


def test_discriminator_rejects_indivisible_batch():
    discriminator = Discriminator(tiny_model())
    with pytest.raises(ValueError, match=r"minibatch size 6 .* group size 4"):
        discriminator(torch.zeros(6, 3, 16, 16), 0.0)


def test_discriminator_rejects_wrong_resolution():
    discriminator = Discriminator(tiny_model())
    with pytest.raises(ValueError, match=r"lod 1.5 expects images of shape \(N, 3, 8, 8\), got \(4, 3, 16, 16\)"):
        discriminator(torch.zeros(4, 3, 16, 16), 1.5)


def test_generator_rejects_wrong_latent_size():
    with pytest.raises(ValueError, match=r"\(N, 12\), got \(4, 16\)"):
        Generator(tiny_model())(torch.zeros(4, 16), 0.0)


def test_lod_must_be_finite():
    with pytest.raises(ValueError, match="lod must be a finite number"):
        Generator(tiny_model())(torch.zeros(4, LATENT), float("nan"))


@pytest.mark.parametrize("field, value", [("resolution", 12), ("resolution", 2), ("channels", 2)])
def test_invalid_model_rejected(field, value):
    with pytest.raises(ValueError, match=f"model.{field}"):
        Generator(tiny_model(**{field: value}))
