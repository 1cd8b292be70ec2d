"""WGAN-GP losses with the drift term on real scores, as in the official ProGAN code.

Gradient-penalty norm (`loss.gp_norm`):
  The official code feeds D full-resolution images (lower resolutions nearest-upsampled by
  s = final / current) and D box-downscales them. The gradient with respect to that full-resolution
  tensor spreads each native pixel's gradient over s*s pixels at 1/s^2 each, so its norm is the
  native-resolution norm divided by s. Here D runs at the native resolution, so:
  - "full" (default) divides the native gradient norm by s before the penalty, which reproduces the
    official runs exactly (the penalty then pulls the native norm toward s * gamma);
  - "native" penalizes the native norm itself (what pytorch_GAN_zoo does), a different objective
    below the final resolution.
"""

from __future__ import annotations

import dataclasses

import torch

from gan.config import LossConfig


@dataclasses.dataclass
class DiscriminatorLoss:
    total: torch.Tensor  # scalar, the value to backpropagate
    wasserstein: torch.Tensor  # mean D(fake) - D(real)
    gradient_penalty: torch.Tensor
    drift: torch.Tensor
    gradient_norm: torch.Tensor  # mean gradient norm after the `gp_norm` scaling


def gradient_norm_scale(final_resolution: int, resolution: int, gp_norm: str) -> float:
    """Return the factor that maps a native gradient norm to the norm the penalty is applied to."""
    if gp_norm == "native":
        return 1.0
    return resolution / final_resolution


def discriminator_loss(
    discriminator: torch.nn.Module,
    reals: torch.Tensor,
    fakes: torch.Tensor,
    lod: float,
    config: LossConfig,
    norm_scale: float,
    generator: torch.Generator,
) -> DiscriminatorLoss:
    """Compute the WGAN-GP discriminator loss on one shard; reals and fakes are (N, C, H, W)."""
    fakes = fakes.detach()
    real_scores = discriminator(reals, lod)
    fake_scores = discriminator(fakes, lod)

    mix = torch.rand(reals.shape[0], 1, 1, 1, generator=generator).to(reals.device, reals.dtype)
    mixed = (reals + mix * (fakes - reals)).requires_grad_(True)
    mixed_scores = discriminator(mixed, lod)
    (gradients,) = torch.autograd.grad(mixed_scores.sum(), mixed, create_graph=True)
    norms = gradients.flatten(1).norm(dim=1) * norm_scale
    penalty = config.gp_lambda * (norms - config.gp_gamma).square() / config.gp_gamma**2

    drift = config.drift * real_scores.square()
    wasserstein = fake_scores - real_scores
    total = (wasserstein + penalty + drift).mean()
    return DiscriminatorLoss(
        total=total,
        wasserstein=wasserstein.mean().detach(),
        gradient_penalty=penalty.mean().detach(),
        drift=drift.mean().detach(),
        gradient_norm=norms.mean().detach(),
    )


def generator_loss(discriminator: torch.nn.Module, fakes: torch.Tensor, lod: float) -> torch.Tensor:
    """Return mean -D(G(z)) over the shard."""
    return -discriminator(fakes, lod).mean()
