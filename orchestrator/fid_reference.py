"""Reference statistics of a real image set for FID and KID, computed once per dataset and protocol.

An entry contains the Inception features of the reals with their mean and covariance. Its key is a hash
of everything that changes them: dataset content hash, resolution, image count, mirroring, extractor
and weights hash, and resize mode. Entries live in the node's cache (CACHE_DIR/fid-stats/KEY.npz) and,
for datasets in S3, in s3://BUCKET/fid-stats/KEY.npz of the dataset's bucket, so the trials of a sweep
and all nodes share one computation. A local entry appears by rename and an S3 object appears whole,
so readers never see half an entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gan.dataset import Dataset
from gan.metrics.features import ArrayImages, mirror_flips
from gan.metrics.fid import feature_statistics
from gan.metrics.inception import RESIZE_MODE, InceptionFeatures
from orchestrator import storage

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
STATS_FOLDER = "fid-stats"
# Seed that picks the reals to flip when the run mirrors its data. It is fixed, so that every trial
# of a sweep, whatever its own seed, shares the reference statistics.
MIRROR_SEED = 0


@dataclasses.dataclass(frozen=True)
class ReferenceProtocol:
    """Everything that changes the reference statistics of a dataset."""

    dataset_sha256: str
    resolution: int
    images: int
    mirror: bool
    extractor: str
    weights_sha256: str
    resize: str = RESIZE_MODE
    mirror_seed: int = MIRROR_SEED
    cache_format: int = CACHE_FORMAT

    def key(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def for_dataset(cls, dataset: Dataset, resolution: int, images: int, mirror: bool,
                    features: InceptionFeatures) -> ReferenceProtocol:
        return cls(dataset_sha256=dataset.manifest["content_sha256"], resolution=resolution, images=images,
                   mirror=mirror, extractor=features.impl, weights_sha256=features.weights_sha256)


@dataclasses.dataclass
class ReferenceStats:
    mu: np.ndarray  # (2048,) float64
    sigma: np.ndarray  # (2048, 2048) float64
    features: np.ndarray  # (N, 2048) float32, for KID
    protocol: ReferenceProtocol


def reference_images(dataset: Dataset, protocol: ReferenceProtocol) -> ArrayImages:
    """Return the first `protocol.images` reals at the protocol's resolution, with its mirror flips.

    The official ProGAN FID reads the first N training images, mirrored when training mirrors them.
    """
    array = dataset.level(protocol.resolution)[:protocol.images]
    flips = mirror_flips(protocol.images, protocol.mirror_seed) if protocol.mirror else None
    return ArrayImages(array, flips)


def s3_stats_folder(data_location: str) -> str | None:
    """Return s3://BUCKET/fid-stats for a dataset in S3, None for a local dataset."""
    if not storage.is_s3_uri(data_location):
        return None
    return storage.S3Location(storage.parse_s3_uri(data_location).bucket, STATS_FOLDER).uri


class ReferenceCache:
    """Reference statistics in a local folder and, optionally, an S3 folder."""

    def __init__(self, local_root: str | os.PathLike, s3_folder: str | None = None):
        self.local_folder = Path(local_root) / STATS_FOLDER
        self.s3_folder = s3_folder

    def local_path(self, protocol: ReferenceProtocol) -> Path:
        return self.local_folder / f"{protocol.key()}.npz"

    def s3_uri(self, protocol: ReferenceProtocol) -> str | None:
        if self.s3_folder is None:
            return None
        return storage.parse_s3_uri(self.s3_folder).join(f"{protocol.key()}.npz").uri

    def lookup(self, protocol: ReferenceProtocol) -> ReferenceStats | None:
        """Return the cached entry from local disk, else from S3 (copied to local disk), else None."""
        path = self.local_path(protocol)
        uri = self.s3_uri(protocol)
        if not path.is_file() and uri is not None and storage.exists(uri):
            storage.download_file(uri, path)
        if not path.is_file():
            return None
        return _read_entry(path, protocol)

    def store(self, protocol: ReferenceProtocol, features: np.ndarray) -> ReferenceStats:
        """Compute the statistics of `features` (N, 2048), write them locally and to S3; return them."""
        if len(features) != protocol.images:
            raise ValueError(f"got {len(features)} feature rows for a protocol of {protocol.images} images")
        mu, sigma = feature_statistics(features)
        stats = ReferenceStats(mu, sigma, np.asarray(features, dtype=np.float32), protocol)
        path = self.local_path(protocol)
        _write_entry(path, stats)
        uri = self.s3_uri(protocol)
        if uri is not None:
            storage.upload_file(path, uri)
        log.info("stored FID reference statistics of %d images at %s%s", protocol.images, path,
                 f" and {uri}" if uri else "")
        return stats

    def load_or_compute(self, protocol: ReferenceProtocol,
                        compute_features: Callable[[], np.ndarray]) -> ReferenceStats:
        """Return the cached entry, or compute the features once, store them and return the entry."""
        cached = self.lookup(protocol)
        if cached is not None:
            return cached
        return self.store(protocol, compute_features())


def _write_entry(path: Path, stats: ReferenceStats) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, mu=stats.mu, sigma=stats.sigma, features=stats.features,
                     protocol=np.array(json.dumps(dataclasses.asdict(stats.protocol), sort_keys=True)))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_entry(path: Path, protocol: ReferenceProtocol) -> ReferenceStats | None:
    """Read an entry; return None (and log why) when it is damaged or made for another protocol."""
    try:
        with np.load(path, allow_pickle=False) as entry:
            stored = json.loads(str(entry["protocol"]))
            mu, sigma, features = entry["mu"], entry["sigma"], entry["features"]
    except (OSError, ValueError, KeyError) as error:
        log.warning("ignoring unreadable FID reference statistics %s: %s", path, error)
        return None
    if stored != dataclasses.asdict(protocol):
        log.warning("ignoring FID reference statistics %s: written for another protocol %s", path, stored)
        return None
    return ReferenceStats(mu, sigma, features, protocol)
