"""One ProGAN training run without Ray: networks, optimizers, G_ema, the step, and the resumable state.

Each call of `train_step` is one iteration of the official loop: a D step on a real and a fake
minibatch, the G_ema update, then a G step on fresh latents. Under torch.distributed (one process per
worker) every rank runs the same code on its shard of the global minibatch and gradients are averaged
with one all-reduce per network, which keeps the gradient penalty's double backward out of DDP hooks.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import defaultdict

import torch
import torch.distributed as dist

from gan.config import TrainConfig, config_to_dict
from gan.dataset import Dataset, RealSampler, process_reals
from gan.ema import ema_beta, update_ema
from gan.errors import ConfigError, TrainingError
from gan.images import to_uint8
from gan.loss import discriminator_loss, generator_loss, gradient_norm_scale
from gan.networks import Discriminator, Generator
from gan.schedule import GrowthSchedule, GrowthState

STATE_FORMAT = "progan-training-state"
STATE_VERSION = 1


@dataclasses.dataclass
class StepStats:
    """Losses of one iteration on this rank's shard (non-finite values are kept as they are)."""

    loss_G: float
    loss_D: float
    gradient_penalty: float
    skipped_G: bool
    skipped_D: bool


def build_networks(config: TrainConfig) -> tuple[Generator, Discriminator]:
    """Build G and D with weights drawn from `config.seed`, identical on every rank."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        generator = Generator(config.model)
        discriminator = Discriminator(config.model)
    return generator, discriminator


def check_minibatch_split(config: TrainConfig, world_size: int) -> None:
    """Raise ConfigError when a global minibatch does not split into valid per-worker shards."""
    group = config.model.mbstd_group_size
    for resolution, minibatch in config.schedule.minibatch.items():
        key = f"schedule.minibatch.{resolution}"
        if minibatch % world_size:
            raise ConfigError(key, f"{minibatch} does not split evenly over {world_size} workers")
        shard = minibatch // world_size
        if shard >= group and shard % group:
            raise ConfigError(key, f"per-worker minibatch {shard} is not divisible by the minibatch-stddev "
                                   f"group size {group} (model.mbstd_group_size)")


class Trainer:
    """Holds every piece of training state; `state_dict` captures it all, mid-fade included."""

    def __init__(self, config: TrainConfig, dataset: Dataset, device: str | torch.device = "cpu",
                 rank: int = 0, world_size: int = 1):
        check_minibatch_split(config, world_size)
        self.config = config
        self.dataset = dataset
        self.device = torch.device(device)
        self.rank = rank
        self.world_size = world_size
        self.schedule = GrowthSchedule(config)

        generator, discriminator = build_networks(config)
        self.G = generator.to(self.device)
        self.D = discriminator.to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        optim = config.optim
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=optim.lr, betas=(optim.beta1, optim.beta2),
                                      eps=optim.eps)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=optim.lr, betas=(optim.beta1, optim.beta2),
                                      eps=optim.eps)

        # All sampling (real indices, mirroring, latents, penalty mixing) goes through this generator.
        self.rng = torch.Generator().manual_seed(config.seed * 1000 + rank)
        self.sampler = RealSampler(dataset, self.rng)
        self.nimg = 0  # real images shown to D over all workers
        self.step_index = 0
        self.schedule_nimg = 0  # where the schedule was last evaluated
        self.state: GrowthState = self.schedule.at(0.0)
        self.nonfinite = {"G": 0, "D": 0, "consecutive": 0}
        self._apply_lr()

    # -----------------------------------------------------------------------------------------
    # Progress

    @property
    def kimg(self) -> float:
        return self.nimg / 1000.0

    def _refresh_schedule(self) -> None:
        """Re-evaluate the schedule; reset both optimizers' moments when the phase changes."""
        new_state = self.schedule.at(self.schedule_nimg / 1000.0)
        if new_state.phase != self.state.phase:
            reset_optimizer_state(self.opt_G)
            reset_optimizer_state(self.opt_D)
        self.state = new_state
        self._apply_lr()

    def _apply_lr(self) -> None:
        # Set from the config on every evaluation, so a loaded optimizer state never keeps an old lr.
        for optimizer in (self.opt_G, self.opt_D):
            for group in optimizer.param_groups:
                group["lr"] = self.state.lr

    # -----------------------------------------------------------------------------------------
    # The iteration

    def train_step(self) -> StepStats:
        """Run one D step, the G_ema update and one G step; advance nimg by the global minibatch."""
        if self.step_index % self.config.schedule.minibatch_repeats == 0:
            self.schedule_nimg = self.nimg
            self._refresh_schedule()
        state = self.state
        shard = state.minibatch // self.world_size
        norm_scale = gradient_norm_scale(self.config.model.resolution, state.resolution, self.config.loss.gp_norm)

        # D step: reals faded like G's output, fakes from fresh latents.
        reals = self._sample_reals(shard, state)
        with torch.no_grad():
            fakes = self.G(self._sample_latents(shard), state.lod)
        self.D.requires_grad_(True)
        d_loss = discriminator_loss(self.D, reals, fakes, state.lod, self.config.loss, norm_scale, self.rng)
        self.opt_D.zero_grad(set_to_none=True)
        d_loss.total.backward()
        skipped_D = not self._apply_update(self.D, self.opt_D, "D")

        update_ema(self.G_ema, self.G, ema_beta(self.config.ema, state.minibatch))

        # G step with D frozen, so no D gradients are computed.
        self.D.requires_grad_(False)
        g_loss = generator_loss(self.D, self.G(self._sample_latents(shard), state.lod), state.lod)
        self.opt_G.zero_grad(set_to_none=True)
        g_loss.backward()
        skipped_G = not self._apply_update(self.G, self.opt_G, "G")
        self.D.requires_grad_(True)

        self.nimg += state.minibatch
        self.step_index += 1
        return StepStats(loss_G=g_loss.item(), loss_D=d_loss.total.item(),
                         gradient_penalty=d_loss.gradient_penalty.item(),
                         skipped_G=skipped_G, skipped_D=skipped_D)

    def train_until(self, kimg: float, on_step=None) -> None:
        """Train until at least `kimg` thousand images were shown; `on_step(trainer, stats)` after each."""
        target = math.ceil(kimg * 1000.0 - 1e-6)
        while self.nimg < target:
            stats = self.train_step()
            if on_step is not None:
                on_step(self, stats)

    def _sample_latents(self, count: int) -> torch.Tensor:
        latents = torch.randn(count, self.config.model.latent_size, generator=self.rng)
        return latents.to(self.device)

    def _sample_reals(self, count: int, state: GrowthState) -> torch.Tensor:
        batch = self.sampler.sample(count, state.resolution)
        return process_reals(batch, state.lod, self.config.data.mirror, self.rng).to(self.device)

    def _apply_update(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, name: str) -> bool:
        """Average gradients over ranks and step, unless any gradient is non-finite (then skip)."""
        params = [p for p in model.parameters() if p.grad is not None]
        if self.world_size > 1 and params:
            flat = torch.cat([p.grad.flatten() for p in params])
            dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
        finite = all(bool(torch.isfinite(p.grad).all()) for p in params)
        if finite:
            optimizer.step()
            self.nonfinite["consecutive"] = 0
            return True

        optimizer.zero_grad(set_to_none=True)
        self.nonfinite[name] += 1
        self.nonfinite["consecutive"] += 1
        limit = self.config.optim.max_consecutive_nonfinite
        if self.nonfinite["consecutive"] > limit:
            raise TrainingError(
                f"{self.nonfinite['consecutive']} consecutive updates with non-finite gradients "
                f"(limit optim.max_consecutive_nonfinite={limit}) at kimg {self.kimg:.3f}, "
                f"resolution {self.state.resolution}, lod {self.state.lod:.4f}")
        return False

    # -----------------------------------------------------------------------------------------
    # Sampling for evaluation

    @torch.no_grad()
    def generate(self, latents: torch.Tensor, full_resolution: bool = True) -> torch.Tensor:
        """Return G_ema images as uint8 (N, C, H, W), nearest-upsampled to the final resolution."""
        images = self.G_ema(latents.to(self.device), self.state.lod)
        if full_resolution:
            factor = self.config.model.resolution // images.shape[-1]
            images = images.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
        return to_uint8(images.cpu())

    # -----------------------------------------------------------------------------------------
    # State

    def state_dict(self, rng_states: list[torch.Tensor] | None = None) -> dict:
        """Return everything needed to resume: networks, G_ema, optimizers, progress, RNG states."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "config": config_to_dict(self.config),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "nimg": self.nimg,
            "step_index": self.step_index,
            "schedule_nimg": self.schedule_nimg,
            "phase": list(self.state.phase),
            "nonfinite": dict(self.nonfinite),
            "rng": rng_states if rng_states is not None else [self.rng.get_state()],
        }

    def gather_rng_states(self) -> list[torch.Tensor]:
        """Collect every rank's generator state (collective under torch.distributed)."""
        state = self.rng.get_state()
        if self.world_size == 1:
            return [state]
        states: list = [None] * self.world_size
        dist.all_gather_object(states, state)
        return states

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from `state_dict`; the config in force stays this trainer's own.

        Hyperparameters that differ from the saved config (a PBT mutation, say) take effect at once:
        the schedule, and with it the learning rate, is re-evaluated from this trainer's config.
        """
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.nimg = int(state["nimg"])
        self.step_index = int(state["step_index"])
        self.schedule_nimg = int(state["schedule_nimg"])
        self.nonfinite = dict(state["nonfinite"])
        rng_states = state["rng"]
        if len(rng_states) == self.world_size:
            self.rng.set_state(rng_states[self.rank])
        else:
            # Another worker count: streams cannot continue, so derive fresh ones from the position.
            self.rng.manual_seed(self.config.seed * 1000 + self.rank + 7919 * self.nimg)
        saved_phase = tuple(state["phase"])
        self.state = self.schedule.at(self.schedule_nimg / 1000.0)
        if self.state.phase != saved_phase:
            reset_optimizer_state(self.opt_G)
            reset_optimizer_state(self.opt_D)
        self._apply_lr()


def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Drop Adam's moments and step counts, as the official code does at every phase boundary."""
    optimizer.state = defaultdict(dict)
