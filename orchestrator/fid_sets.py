"""The image sets that `progan metrics fid` compares, turned into Inception features and statistics.

A set is a prepared dataset (a local folder with dataset.json, or an s3:// prefix), a folder of PNG
and JPEG images, or a checkpoint file whose G_ema generates the images. Dataset statistics go through
the reference cache, so a second comparison against the same dataset reuses them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gan.errors import DataError
from gan.metrics.features import ArrayImages, GeneratedImages, extract_features
from gan.metrics.fid import feature_statistics
from gan.metrics.inception import InceptionFeatures
from orchestrator import storage

DEFAULT_GENERATED_IMAGES = 50000  # fid-50k, the count the ProGAN code and later papers report
CHECKPOINT_SUFFIXES = {".pt", ".pth"}


@dataclasses.dataclass
class FeatureSet:
    location: str
    kind: str  # "dataset", "folder" or "checkpoint"
    features: np.ndarray  # (N, 2048) float32
    mu: np.ndarray
    sigma: np.ndarray

    @property
    def count(self) -> int:
        return len(self.features)


@dataclasses.dataclass(frozen=True)
class SetOptions:
    images: int | None  # first N images of a dataset or folder, N generated images; None: all or 50000
    resolution: int | None  # dataset level, or the size folder images must have
    mirror: bool  # flip a fixed half of dataset images, as runs with data.mirror see them
    seed: int  # latent seed of generated images
    batch_size: int
    cache_root: Path
    on_batch: Callable[[int], None] | None = None


def kind_of(location: str) -> str:
    """Return "dataset", "folder" or "checkpoint" for a set location; raise DataError otherwise."""
    from gan.dataset import MANIFEST_NAME

    if storage.is_s3_uri(location):
        return "dataset"
    path = Path(location)
    if path.is_dir():
        return "dataset" if (path / MANIFEST_NAME).is_file() else "folder"
    if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    raise DataError(f"{location}: not found as a dataset folder, image folder, s3:// dataset or"
                    f" checkpoint file ({', '.join(sorted(CHECKPOINT_SUFFIXES))})")


def feature_set(location: str, extractor: InceptionFeatures, options: SetOptions) -> FeatureSet:
    """Return the features and statistics of the set at `location`."""
    kind = kind_of(location)
    if kind == "dataset":
        return _dataset_features(location, extractor, options)
    if kind == "checkpoint":
        images = _generated_images(location, extractor.device, options)
    else:
        from orchestrator.commands.metrics import load_image_set

        images = ArrayImages(np.ascontiguousarray(load_image_set(location, options.resolution, options.images)))
    features = extract_features(extractor, images, batch_size=options.batch_size, on_batch=options.on_batch)
    mu, sigma = feature_statistics(features)
    return FeatureSet(location, kind, features, mu, sigma)


def _dataset_features(location: str, extractor: InceptionFeatures, options: SetOptions) -> FeatureSet:
    from gan.dataset import open_dataset
    from orchestrator.data_cache import local_dataset_path
    from orchestrator.fid_reference import ReferenceCache, ReferenceProtocol, reference_images, s3_stats_folder

    dataset = open_dataset(local_dataset_path(location, options.cache_root))
    resolution = options.resolution or dataset.max_resolution
    dataset.level(resolution)  # raises DataError naming the levels when this one does not exist
    count = _checked_count(location, dataset.count, options.images)
    protocol = ReferenceProtocol.for_dataset(dataset, resolution, count, options.mirror, extractor)
    cache = ReferenceCache(options.cache_root, s3_stats_folder(location))

    def compute() -> np.ndarray:
        return extract_features(extractor, reference_images(dataset, protocol), batch_size=options.batch_size,
                                on_batch=options.on_batch)

    stats = cache.load_or_compute(protocol, compute)
    return FeatureSet(location, "dataset", stats.features, stats.mu, stats.sigma)


def _generated_images(location: str, device: torch.device, options: SetOptions) -> GeneratedImages:
    from gan.checkpoint import load_generator
    from gan.images import to_uint8

    generator, lod, config = load_generator(location, map_location=device)
    resolution = config.model.resolution

    @torch.no_grad()
    def generate(latents: torch.Tensor) -> torch.Tensor:
        images = to_uint8(generator(latents.to(device), lod).cpu())
        factor = resolution // images.shape[-1]  # early-phase snapshots: nearest upsampling, as in training
        return images.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)

    count = options.images or DEFAULT_GENERATED_IMAGES
    return GeneratedImages(generate, config.model.latent_size, count, options.seed)


def _checked_count(location: str, available: int, requested: int | None) -> int:
    if requested is None:
        return available
    if requested > available:
        raise DataError(f"{location}: contains {available} images, fewer than --images {requested}")
    return requested
