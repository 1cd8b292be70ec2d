"""Laplacian image pyramid with the 5x5 binomial kernel and mirror borders, as ProGAN's SWD builds it.

The filters reproduce the official SWD code (tkarras/progressive_growing_of_gans,
metrics/sliced_wasserstein.py), which convolves with scipy.ndimage in mode='mirror' and matches
cv2.pyrDown and cv2.pyrUp. Here they run as separable torch operations on (N, C, H, W) float tensors.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

Tensor = torch.Tensor

# One dimension of the official 5x5 kernel outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.
BINOMIAL_TAPS = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def _down_last_axis(padded: Tensor, size: int) -> Tensor:
    """Filter the last axis (mirror-padded by 2) with the binomial taps and keep every second sample."""
    return sum(tap * padded[..., k:k + size:2] for k, tap in enumerate(BINOMIAL_TAPS))


def pyr_down(images: Tensor) -> Tensor:
    """Blur (N, C, H, W) with the 5x5 binomial kernel under mirror borders and keep even rows and columns.

    Mirror borders reflect about the edge pixel without repeating it (scipy.ndimage mode='mirror',
    torch 'reflect'), which matches cv2.pyrDown.
    """
    height, width = images.shape[-2:]
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
    rows_filtered = _down_last_axis(padded, width)
    return _down_last_axis(rows_filtered.transpose(-1, -2), height).transpose(-1, -2)


def _up_last_axis(x: Tensor) -> Tensor:
    # Zero insertion followed by the taps x 2 leaves two phases: even outputs weigh x[i-1], x[i], x[i+1]
    # by 1, 6, 1 (/8) and odd outputs weigh x[i], x[i+1] by 4, 4 (/8). On the zero-inserted signal the
    # mirror border puts x[1] before x[0] and repeats x[L-1] after the last (zero) sample.
    before = torch.cat([x[..., 1:2], x[..., :-1]], dim=-1)
    after = torch.cat([x[..., 1:], x[..., -1:]], dim=-1)
    even = (before + 6 * x + after) / 8
    odd = (x + after) / 2
    return torch.stack([even, odd], dim=-1).flatten(-2)


def pyr_up(images: Tensor) -> Tensor:
    """Double (N, C, H, W) in size: zero insertion, then the 5x5 binomial kernel x 4 under mirror borders.

    This is the official pyr_up (scipy.ndimage.convolve, mode='mirror'), which matches cv2.pyrUp,
    computed per axis and per output phase.
    """
    return _up_last_axis(_up_last_axis(images).transpose(-1, -2)).transpose(-1, -2)


def laplacian_levels(images: Tensor, num_levels: int, requested: Iterable[int]) -> dict[int, Tensor]:
    """Compute the `requested` levels (0 = full resolution) of the `num_levels`-level Laplacian pyramid.

    `images` is float (N, C, H, W) with pixel values in [0, 255]. Level l is G_l - pyr_up(G_{l+1}),
    where G_0 is the image and G_{l+1} = pyr_down(G_l); the last level is the Gaussian G itself.
    """
    requested = sorted(set(requested))
    assert requested, "no pyramid level requested"
    assert requested[0] >= 0, f"negative pyramid level in {requested}"
    assert requested[-1] < num_levels, f"pyramid levels {requested} exceed the {num_levels} available"
    gaussians = [images]
    for _ in range(min(requested[-1] + 1, num_levels - 1)):
        gaussians.append(pyr_down(gaussians[-1]))
    levels = {}
    for level in requested:
        if level == num_levels - 1:
            levels[level] = gaussians[level]
        else:
            levels[level] = gaussians[level] - pyr_up(gaussians[level + 1])
    return levels


def laplacian_pyramid(images: Tensor, num_levels: int) -> list[Tensor]:
    """Return all `num_levels` Laplacian levels of float (N, C, H, W) images, full resolution first."""
    levels = laplacian_levels(images, num_levels, range(num_levels))
    return [levels[level] for level in range(num_levels)]

