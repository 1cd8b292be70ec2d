"""Rank-0 evaluation during training: SWD of G_ema against the reals, image grids, best and final G_ema."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from gan.checkpoint import generator_snapshot, save_checkpoint
from gan.config import TrainConfig
from gan.dataset import Dataset
from gan.images import save_image_grid
from gan.metrics.swd import sliced_wasserstein
from gan.train import Trainer

log = logging.getLogger(__name__)

SWD_MIN_RESOLUTION = 16  # the official Laplacian pyramid stops at 16x16
GENERATE_BATCH = 64
BEST_METRIC = "swd/avg"


class Evaluator:
    """Fixed reals and latents, so every evaluation of a run compares like with like."""

    def __init__(self, config: TrainConfig, dataset: Dataset, run_dir: Path):
        self.config = config
        self.run_dir = Path(run_dir)
        self.best = math.inf
        seed_stream = torch.Generator().manual_seed(config.seed + 1)
        count = min(config.metrics.swd_images, dataset.count)
        reals = np.array(dataset.level(config.model.resolution)[:count])
        if config.data.mirror:
            # The official SWD reads reals with the run's mirror augmentation.
            flip = torch.rand(count, generator=seed_stream).numpy() < 0.5
            reals[flip] = reals[flip][..., ::-1]
        self.reals = torch.from_numpy(reals)
        latent_size = config.model.latent_size
        self.swd_latents = torch.randn(config.metrics.swd_images, latent_size, generator=seed_stream)
        grid = config.metrics.grid_size
        self.grid_latents = torch.randn(grid * grid, latent_size, generator=seed_stream)
        if config.model.resolution < SWD_MIN_RESOLUTION:
            log.warning("model.resolution %d is below %d: SWD is not computed for this run",
                        config.model.resolution, SWD_MIN_RESOLUTION)

    def _generate(self, trainer: Trainer, latents: torch.Tensor) -> torch.Tensor:
        batches = [trainer.generate(chunk) for chunk in latents.split(GENERATE_BATCH)]
        return torch.cat(batches)

    def evaluate(self, trainer: Trainer, tracker) -> dict[str, float]:
        """Return SWD metrics; write the grid and, on a new best, the best G_ema (both to MLflow)."""
        kimg_label = f"{trainer.nimg / 1000.0:08.1f}"
        grid_path = save_image_grid(self._generate(trainer, self.grid_latents),
                                    self.run_dir / "grids" / f"fakes-kimg{kimg_label}.png",
                                    columns=self.config.metrics.grid_size)
        if tracker is not None:
            tracker.log_artifact(grid_path, "grids")

        if self.config.model.resolution < SWD_MIN_RESOLUTION:
            return {}
        fakes = self._generate(trainer, self.swd_latents)
        metrics = sliced_wasserstein(self.reals, fakes, seed=self.config.seed)
        if metrics[BEST_METRIC] < self.best:
            self.best = metrics[BEST_METRIC]
            self._save_generator(trainer, "G_ema-best.pt", {**metrics, "kimg": trainer.kimg}, tracker)
        return metrics

    def save_final(self, trainer: Trainer, tracker) -> None:
        self._save_generator(trainer, "G_ema-final.pt", {"kimg": trainer.kimg}, tracker)

    def _save_generator(self, trainer: Trainer, name: str, metrics: dict, tracker) -> None:
        path = save_checkpoint(generator_snapshot(trainer, metrics), self.run_dir / "models" / name)
        if tracker is not None:
            tracker.log_artifact(path, "models")
