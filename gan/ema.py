"""Moving average of the generator weights (G_ema), the network that is evaluated and released."""

from __future__ import annotations

import torch

from gan.config import EmaConfig


def ema_beta(config: EmaConfig, minibatch: int) -> float:
    """Return the per-step decay: fixed (official ProGAN, 0.999) or from a half-life in kimg.

    The half-life form (StyleGAN2-ADA) gives beta = 0.5 ** (minibatch / (half_life_kimg * 1000)), so
    the average spans the same number of images whatever the minibatch.
    """
    if config.mode == "beta":
        return config.beta
    return 0.5 ** (minibatch / (config.half_life_kimg * 1000.0))


@torch.no_grad()
def update_ema(ema_model: torch.nn.Module, model: torch.nn.Module, beta: float) -> None:
    """Set ema <- model + beta * (ema - model) for parameters; copy buffers as they are."""
    for ema_param, param in zip(ema_model.parameters(), model.parameters(), strict=True):
        ema_param.copy_(torch.lerp(param, ema_param, beta))
    for ema_buffer, buffer in zip(ema_model.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)
