"""FID and KID of G_ema during training, computed by every Train worker on its share of the images.

Each rank generates and embeds every world_size-th batch of the `metrics.fid_images` fakes, and rank 0
gathers the features. The reference statistics of the reals come from the ReferenceCache, and on a
miss all ranks compute them the same way. Runs without the Inception weights go on without FID.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist

from gan.config import TrainConfig
from gan.dataset import Dataset
from gan.metrics.features import GeneratedImages, extract_features
from gan.metrics.fid import feature_statistics, frechet_distance, kernel_inception_distance
from gan.metrics.inception import (InceptionFeatures, InceptionWeightsInvalid, InceptionWeightsMissing,
                                   load_inception, weights_path)
from orchestrator.fid_reference import ReferenceCache, ReferenceProtocol, ReferenceStats, reference_images

log = logging.getLogger(__name__)

# Images per Inception batch, pytorch-fid's default. A constant, so that every run splits the images,
# and rounds their features, the same way.
FEATURE_BATCH = 50


class FidEvaluator:
    """FID, KID mean and KID std of G_ema against the first `metrics.fid_images` reals (fewer if the
    dataset is smaller). `evaluate` is collective: every rank calls it, rank 0 gets the metrics."""

    def __init__(self, config: TrainConfig, dataset: Dataset, features: InceptionFeatures,
                 cache: ReferenceCache, rank: int = 0, world_size: int = 1):
        self.config = config
        self.dataset = dataset
        self.features = features
        self.cache = cache
        self.rank = rank
        self.world_size = world_size
        real_count = min(config.metrics.fid_images, dataset.count)
        self.protocol = ReferenceProtocol.for_dataset(dataset, config.model.resolution, real_count,
                                                      config.data.mirror, features)
        self.reference: ReferenceStats | None = None
        self.reference_ready = False

    @classmethod
    def create(cls, config: TrainConfig, dataset: Dataset, data_location: str, device: torch.device,
               rank: int = 0, world_size: int = 1, cache_root: str | Path | None = None) -> FidEvaluator | None:
        """Load the Inception weights on every rank; return None on all ranks if any rank lacks them.

        Collective when world_size > 1. Rank 0 then logs one warning naming the missing path.
        """
        from orchestrator.environment import cache_dir
        from orchestrator.fid_reference import s3_stats_folder

        cache_root = Path(cache_root) if cache_root is not None else cache_dir()
        features, problem = None, None
        try:
            features = load_inception(weights_path(None, cache_root), device)
        except (InceptionWeightsMissing, InceptionWeightsInvalid) as error:
            problem = str(error)
        problems = _gather_all([problem], world_size)
        problems = [text for text in problems if text is not None]
        if problems:
            if rank == 0:
                log.warning("FID and KID are not computed in this run: %s", problems[0])
            return None
        cache = ReferenceCache(cache_root, s3_stats_folder(data_location))
        return cls(config, dataset, features, cache, rank, world_size)

    def params(self) -> dict[str, str | int]:
        """Return the run params that record how FID was measured."""
        return {"fid/images": self.config.metrics.fid_images, "fid/reference_images": self.protocol.images,
                "fid/impl": self.features.impl}

    def evaluate(self, trainer) -> dict[str, float]:
        """Return {"fid", "kid/mean", "kid/std"} on rank 0 and {} on other ranks."""
        reference = self._reference()
        fakes = GeneratedImages(trainer.generate, self.config.model.latent_size, self.config.metrics.fid_images,
                                seed=self.config.seed)
        fake_features = extract_features(self.features, fakes, batch_size=FEATURE_BATCH, rank=self.rank,
                                         world_size=self.world_size)
        if self.rank != 0:
            return {}
        mu, sigma = feature_statistics(fake_features)
        kid_mean, kid_std = kernel_inception_distance(reference.features, fake_features)
        return {"fid": frechet_distance(reference.mu, reference.sigma, mu, sigma),
                "kid/mean": kid_mean, "kid/std": kid_std}

    def _reference(self) -> ReferenceStats | None:
        """Return the reference statistics on rank 0 (None elsewhere), computing them on a cache miss."""
        if self.reference_ready:
            return self.reference
        if self.rank == 0:
            self.reference = self.cache.lookup(self.protocol)
        (missing,) = _broadcast_from_rank0([self.rank == 0 and self.reference is None], self.world_size)
        if missing:
            reals = reference_images(self.dataset, self.protocol)
            real_features = extract_features(self.features, reals, batch_size=FEATURE_BATCH, rank=self.rank,
                                             world_size=self.world_size)
            if self.rank == 0:
                self.reference = self.cache.store(self.protocol, real_features)
        self.reference_ready = True
        return self.reference


def _gather_all(values: list, world_size: int) -> list:
    """Return the concatenation of every rank's `values` list, in rank order, on every rank."""
    if world_size == 1:
        return list(values)
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, values)
    return [value for rank_values in gathered for value in rank_values]


def _broadcast_from_rank0(values: list, world_size: int) -> list:
    if world_size > 1:
        dist.broadcast_object_list(values, src=0)
    return values


def log_params(evaluator: FidEvaluator, run_id: str | None, tracking_uri: str | None) -> None:
    """Log the FID params to the MLflow run, if there is one.

    MLflow errors are logged, not raised, so a tracking outage does not stop training; the params
    are then missing from the run.
    """
    if not run_id:
        return
    from mlflow.exceptions import MlflowException

    from orchestrator import tracking

    try:
        tracking.log_params(run_id, evaluator.params(), tracking_uri=tracking_uri)
    except (MlflowException, OSError) as error:
        log.warning("could not log the FID params to MLflow run %s: %s", run_id, error)
