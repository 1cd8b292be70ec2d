"""Train-step and forward throughput of our ProGAN networks against the PyPI peer `pro-gan-pth` 2.1.1,
at the same architecture, resolution and minibatch, measured on the CPU in one process.

What is timed (images per second of wall-clock time and per second of this process's CPU time, each
the median over repeats):
  - "ours" and "peer": the same WGAN-GP step written here around each side's networks: a D step
    (gradient penalty and drift, from gan.loss), the G_ema update (gan.ema) and a G step, each with Adam.
  - "ours, Trainer": the full gan.train.Trainer.train_step, which adds real sampling from a dataset
    on disk, the fade of the reals and the non-finite gradient checks.
  - forward only: G(z) and D(x) under torch.no_grad, on both sides.
The sides alternate within every repeat, and ours/peer is the median of the ratios within a repeat,
so load from other processes that changes between repeats sways the ratio less than the rates. Such
load still slows both and adds noise, CPU time included (threads contend for cores and caches), so
the load average is printed before and after the run.

Installing the peer (outside the project environment; it must not become a dependency):
    .venv/bin/pip install --no-deps --target /tmp/progan-peer pro-gan-pth==2.1.1
The benchmark adds that folder (or the one given by --peer-path) to sys.path only when it exists;
without it, only our side is measured. The adapters below use the 2.1.1 interface:
PRO_GAN.Generator(depth, latent_size, use_eql) and PRO_GAN.Discriminator(height, feature_size, use_eql).

Matched architecture: the peer's feature maps equal its latent size at every resolution up to 32x32,
so our ModelConfig uses fmap_base = fmap_max = latent size with fmap_decay = 0, 3 channels, and
equalized learning rate on both sides. The two parameter counts are printed and equal. Remaining
differences: the peer's minibatch-stddev layer pools over the whole minibatch (ours over groups of
model.mbstd_group_size), the peer pixel-normalizes neither the latents nor the output of its first
4x4 layer, and the peer evaluates its fade-in branch even when alpha = 1.

Run from the repository root:
    .venv/bin/python bench/bench_train_step.py
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from gan.config import LossConfig, ModelConfig, config_from_dict
from gan.dataset import open_dataset, write_dataset
from gan.ema import update_ema
from gan.loss import discriminator_loss, generator_loss
from gan.networks import Discriminator, Generator, fade_state, max_lod
from gan.train import Trainer

DEFAULT_PEER_PATH = "/tmp/progan-peer"
PEER_VERSION = "2.1.1"
PEER_MAX_CONSTANT_RESOLUTION = 32  # above this the peer halves its feature maps per resolution
ADAM_BETAS = (0.0, 0.99)  # Adam betas of the official ProGAN code, on both sides
LEARNING_RATE = 0.001
EMA_BETA = 0.999
LOD = 0.0  # stable at the final resolution: no fade-in
DATASET_IMAGES = 64
SEED = 1000
MAX_GROWTH_STEPS = 100


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=32,
                        help="final resolution of both sides: 8, 16 or 32 (default: 32)")
    parser.add_argument("--latent-size", type=int, default=128,
                        help="latent size, which is also the feature maps per layer (default: 128)")
    parser.add_argument("--minibatch", type=int, default=16, help="images per step (default: 16)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed calls of each workload before timing (default: 2)")
    parser.add_argument("--steps", type=int, default=1, help="timed train steps per repeat (default: 1)")
    parser.add_argument("--forward-calls", type=int, default=5,
                        help="timed forward calls per repeat (default: 5)")
    parser.add_argument("--repeats", type=int, default=15,
                        help="timed repeats; medians over them are reported (default: 15)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads value (default: 2)")
    parser.add_argument("--peer-path", default=DEFAULT_PEER_PATH,
                        help=f"folder containing pro_gan_pytorch, from pip --target (default: {DEFAULT_PEER_PATH})")
    args = parser.parse_args()
    if args.resolution not in (8, 16, PEER_MAX_CONSTANT_RESOLUTION):
        parser.error(f"--resolution must be 8, 16 or 32 (model.resolution is at least 8, and the peer's feature "
                     f"maps stay constant only up to 32x32), got {args.resolution}")
    if args.latent_size < 1 or args.latent_size & (args.latent_size - 1):
        parser.error(f"--latent-size must be a power of two (the peer asserts it), got {args.latent_size}")
    if args.minibatch < 2:
        parser.error(f"--minibatch must be at least 2 (minibatch stddev), got {args.minibatch}")
    for name in ("steps", "forward_calls", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def load_peer(path: str):
    """Return the peer's PRO_GAN module, or None (with a message) when `path` does not contain it."""
    folder = Path(path)
    if not (folder / "pro_gan_pytorch").is_dir():
        print(f"peer not found: {folder}/pro_gan_pytorch is missing, so only our side is measured. Install it "
              f"with: .venv/bin/pip install --no-deps --target {folder} pro-gan-pth=={PEER_VERSION}")
        return None
    sys.path.insert(0, str(folder))
    from pro_gan_pytorch import PRO_GAN

    return PRO_GAN


class PeerGenerator(nn.Module):
    """The peer's G behind our interface: forward(z, lod) -> (N, 3, R_cur, R_cur)."""

    def __init__(self, network: nn.Module, final_resolution: int):
        super().__init__()
        self.network = network
        self.final_resolution = final_resolution

    def forward(self, z: torch.Tensor, lod: float) -> torch.Tensor:
        depth_index, alpha = peer_depth_alpha(self.final_resolution, lod)
        return self.network(z, depth_index, alpha)


class PeerDiscriminator(nn.Module):
    """The peer's D behind our interface: forward(images, lod) -> (N,) scores."""

    def __init__(self, network: nn.Module, final_resolution: int):
        super().__init__()
        self.network = network
        self.final_resolution = final_resolution

    def forward(self, images: torch.Tensor, lod: float) -> torch.Tensor:
        depth_index, alpha = peer_depth_alpha(self.final_resolution, lod)
        return self.network(images, depth_index, alpha)


def peer_depth_alpha(final_resolution: int, lod: float) -> tuple[int, float]:
    """Map our lod to the peer's (depth index, alpha), where index 0 is 4x4 and alpha weights the new block."""
    level, t = fade_state(final_resolution, lod)
    return max_lod(final_resolution) - level, 1.0 - t


class Side:
    """One side's networks, G_ema and optimizers, with the benchmark's train step."""

    def __init__(self, name: str, generator: nn.Module, discriminator: nn.Module, latent_size: int):
        self.name = name
        self.G = generator
        self.D = discriminator
        self.G_ema = copy.deepcopy(generator).eval().requires_grad_(False)
        self.latent_size = latent_size
        self.opt_G = torch.optim.Adam(generator.parameters(), lr=LEARNING_RATE, betas=ADAM_BETAS)
        self.opt_D = torch.optim.Adam(discriminator.parameters(), lr=LEARNING_RATE, betas=ADAM_BETAS)
        self.rng = torch.Generator().manual_seed(SEED)

    def train_step(self, reals: torch.Tensor, loss_config: LossConfig) -> None:
        """Run one D step, the G_ema update and one G step on `reals` (N, C, R, R) in [-1, 1]."""
        count = reals.shape[0]

        with torch.no_grad():
            fakes = self.G(torch.randn(count, self.latent_size, generator=self.rng), LOD)
        self.D.requires_grad_(True)
        # The gradient-norm scale of gan.loss is 1 at the final resolution, whichever gp_norm is set.
        d_loss = discriminator_loss(self.D, reals, fakes, LOD, loss_config, 1.0, self.rng)
        self.opt_D.zero_grad(set_to_none=True)
        d_loss.total.backward()
        self.opt_D.step()

        update_ema(self.G_ema, self.G, EMA_BETA)

        self.D.requires_grad_(False)
        g_loss = generator_loss(self.D, self.G(torch.randn(count, self.latent_size, generator=self.rng), LOD), LOD)
        self.opt_G.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_G.step()
        self.D.requires_grad_(True)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_ours(args: argparse.Namespace) -> tuple[Generator, Discriminator]:
    """Build our G and D with the peer's channel layout: latent-size feature maps at every resolution."""
    model = ModelConfig(resolution=args.resolution, channels=3, latent_size=args.latent_size,
                        fmap_base=args.latent_size, fmap_max=args.latent_size, fmap_decay=0.0)
    weights = torch.Generator().manual_seed(SEED)
    return Generator(model, generator=weights), Discriminator(model, generator=weights)


def build_peer(peer_module, args: argparse.Namespace) -> tuple[PeerGenerator, PeerDiscriminator]:
    """Build the peer's G and D, whose layers draw weights from torch's global RNG, seeded and then restored."""
    depth = max_lod(args.resolution) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        generator = peer_module.Generator(depth=depth, latent_size=args.latent_size, use_eql=True)
        discriminator = peer_module.Discriminator(height=depth, feature_size=args.latent_size, use_eql=True)
    return PeerGenerator(generator, args.resolution), PeerDiscriminator(discriminator, args.resolution)


def build_trainer(args: argparse.Namespace, folder: Path) -> Trainer:
    """Build a Trainer on random images whose schedule reaches the final resolution within a few steps."""
    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, size=(DATASET_IMAGES, 3, args.resolution, args.resolution), dtype=np.uint8)
    write_dataset(folder / "dataset", images, source="bench:random")
    resolutions = [2**i for i in range(2, int(math.log2(args.resolution)) + 1)]
    # Phases of one image each, with the schedule refreshed every step, end the growth within a few steps.
    phase_kimg = 1.0 / 1000.0
    config = config_from_dict({
        "seed": SEED,
        "model": {"resolution": args.resolution, "channels": 3, "latent_size": args.latent_size,
                  "fmap_base": args.latent_size, "fmap_max": args.latent_size, "fmap_decay": 0.0},
        "schedule": {"stable_kimg": phase_kimg, "fade_kimg": phase_kimg, "total_kimg": 1000.0,
                     "minibatch": {r: args.minibatch for r in resolutions}, "minibatch_repeats": 1},
        "optim": {"lr": LEARNING_RATE, "beta1": ADAM_BETAS[0], "beta2": ADAM_BETAS[1]},
        "ema": {"mode": "beta", "beta": EMA_BETA},
    })
    return Trainer(config, open_dataset(folder / "dataset"))


@dataclasses.dataclass
class Rates:
    """Images per second of one workload, one value per repeat: by wall clock and by process CPU time."""

    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)


def measure(workloads: dict[str, Callable[[], None]], calls: int, args: argparse.Namespace) -> dict[str, Rates]:
    """Return each workload's images/s over `calls` calls per repeat.

    The workloads alternate inside every repeat, so load from other processes falls on all of them
    alike, and repeat i of one workload can be compared with repeat i of another.
    """
    for function in workloads.values():
        for _ in range(args.warmup):
            function()
    rates = {name: Rates() for name in workloads}
    images = args.minibatch * calls
    for _ in range(args.repeats):
        for name, function in workloads.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(calls):
                function()
            rates[name].wall.append(images / (time.perf_counter() - wall_start))
            rates[name].cpu.append(images / (time.process_time() - cpu_start))
    return rates


def paired_ratio(ours: list[float], peer: list[float] | None) -> str:
    """Return the median over repeats of ours/peer within the same repeat, formatted, or "-" without a peer."""
    if not peer:
        return "-"
    return f"{statistics.median(a / b for a, b in zip(ours, peer, strict=True)):.2f}"


def forward_workloads(label: str, G: nn.Module, D: nn.Module, args: argparse.Namespace) -> dict:
    latents = torch.randn(args.minibatch, args.latent_size, generator=torch.Generator().manual_seed(SEED))
    images = torch.rand(args.minibatch, 3, args.resolution, args.resolution,
                        generator=torch.Generator().manual_seed(SEED)) * 2 - 1

    @torch.no_grad()
    def run_generator() -> None:
        G(latents, LOD)

    @torch.no_grad()
    def run_discriminator() -> None:
        D(images, LOD)

    return {f"{label} G": run_generator, f"{label} D": run_discriminator}


def print_rows(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(row, widths))))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    peer_module = load_peer(args.peer_path)
    load_before = os.getloadavg()[0]
    print(f"torch {torch.__version__}, torch.set_num_threads({args.threads}), "
          f"resolution {args.resolution}x{args.resolution}, latent size = feature maps = {args.latent_size}, "
          f"minibatch {args.minibatch}, lod {LOD}, warm-up {args.warmup} calls, {args.steps} train steps and "
          f"{args.forward_calls} forward calls x {args.repeats} repeats, "
          f"peer pro-gan-pth {PEER_VERSION if peer_module else 'missing'}")

    reals = torch.rand(args.minibatch, 3, args.resolution, args.resolution,
                       generator=torch.Generator().manual_seed(SEED)) * 2 - 1
    loss_config = LossConfig()
    sides = [Side("ours", *build_ours(args), args.latent_size)]
    if peer_module is not None:
        sides.append(Side("peer", *build_peer(peer_module, args), args.latent_size))

    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as folder:
        trainer = build_trainer(args, Path(folder))
        while trainer.state.lod > 0:  # grow to the final resolution, outside the timing
            assert trainer.step_index < MAX_GROWTH_STEPS, f"Trainer still at lod {trainer.state.lod}"
            trainer.train_step()
        assert trainer.state.resolution == args.resolution, (
            f"Trainer should be stable at {args.resolution}x{args.resolution}, is at {trainer.state.resolution}")
        networks = {side.name: (side.G, side.D) for side in sides}
        networks["ours, Trainer"] = (trainer.G, trainer.D)

        train_workloads = {side.name: (lambda side=side: side.train_step(reals, loss_config)) for side in sides}
        train_workloads["ours, Trainer"] = trainer.train_step
        train_rates = measure(train_workloads, args.steps, args)

    forward = {}
    for side in sides:
        forward.update(forward_workloads(side.name, side.G, side.D, args))
    forward_rates = measure(forward, args.forward_calls, args)

    print(f"\nload average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print_report(train_rates, forward_rates, networks)


def print_report(train_rates: dict[str, Rates], forward_rates: dict[str, Rates],
                 networks: dict[str, tuple[nn.Module, nn.Module]]) -> None:
    print("images/s: wall clock, median over repeats. images/CPU-s: per second of this process's CPU time\n"
          "over all its threads, median over repeats. ours/peer: median over repeats of the ratio within\n"
          "one repeat.")
    print("\ntrain step (D step with WGAN-GP + drift, G_ema update, G step):")
    peer = train_rates.get("peer")
    peer_wall = peer.wall if peer else None
    peer_cpu = peer.cpu if peer else None
    rows = []
    for name, rates in train_rates.items():
        G, D = networks[name]
        rows.append((name, f"{count_parameters(G):,}", f"{count_parameters(D):,}",
                     median_text(rates.wall, 2), paired_ratio(rates.wall, peer_wall),
                     median_text(rates.cpu, 2), paired_ratio(rates.cpu, peer_cpu)))
    print_rows(("side", "params G", "params D", "images/s", "ours/peer", "images/CPU-s", "ours/peer CPU"), rows)

    print("\nforward only (torch.no_grad):")
    rows = []
    for network in ("G", "D"):
        ours = forward_rates[f"ours {network}"]
        peer = forward_rates.get(f"peer {network}")
        peer_wall = peer.wall if peer else None
        peer_cpu = peer.cpu if peer else None
        rows.append((network, median_text(ours.wall), median_text(peer_wall), paired_ratio(ours.wall, peer_wall),
                     median_text(ours.cpu), median_text(peer_cpu), paired_ratio(ours.cpu, peer_cpu)))
    print_rows(("network", "ours images/s", "peer images/s", "ours/peer", "ours images/CPU-s",
                "peer images/CPU-s", "ours/peer CPU"), rows)


def median_text(values: list[float] | None, digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f}" if values else "-"


if __name__ == "__main__":
    main()
