"""Image sets read in fixed batches, and their Inception features computed in shares over ranks.

Batch b contains images [b * batch_size, (b + 1) * batch_size). Rank r extracts batches r, r + W,
r + 2W, ... of W ranks, and rank 0 gathers the features in image order. The batches, and the latents
of generated images, are the same for any number of ranks. So are the features, as long as every
process runs with the same thread count, which changes how convolutions sum on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

from gan.metrics.inception import FEATURE_DIM


class ImageSet(Protocol):
    count: int

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Return images start..stop-1 as uint8 (n, C, H, W) on the CPU."""


class ArrayImages:
    """Images of a uint8 array (N, C, H, W), memory-mapped or not, with optional horizontal flips."""

    def __init__(self, array: np.ndarray, flips: np.ndarray | None = None):
        if array.dtype != np.uint8 or array.ndim != 4:
            raise ValueError(f"expected uint8 images (N, C, H, W), got {array.dtype} {array.shape}")
        if flips is not None and flips.shape != (len(array),):
            raise ValueError(f"expected one flip flag per image ({len(array)}), got shape {flips.shape}")
        self.array = array
        self.flips = flips
        self.count = len(array)

    def batch(self, start: int, stop: int) -> torch.Tensor:
        images = np.array(self.array[start:stop])  # a copy: memory maps are read-only
        if self.flips is not None:
            flip = self.flips[start:stop]
            images[flip] = images[flip][..., ::-1]
        return torch.from_numpy(images)


class GeneratedImages:
    """`count` images of `generate(latents) -> uint8 (n, C, H, W)` from latents drawn once with `seed`.

    All latents are drawn up front (count x latent_size floats, 100 MB for 50000 x 512), because a
    torch CPU generator cannot jump to row i. So every split into batches gets the same latents.
    """

    def __init__(self, generate: Callable[[torch.Tensor], torch.Tensor], latent_size: int, count: int, seed: int):
        self.generate = generate
        self.count = count
        self.all_latents = torch.randn(count, latent_size, generator=torch.Generator().manual_seed(seed))

    def latents(self, start: int, stop: int) -> torch.Tensor:
        return self.all_latents[start:stop]

    def batch(self, start: int, stop: int) -> torch.Tensor:
        return self.generate(self.latents(start, stop))


def mirror_flips(count: int, seed: int) -> np.ndarray:
    """Return a fixed random half of `count` images to flip, for reference sets of mirrored training."""
    return (torch.rand(count, generator=torch.Generator().manual_seed(seed)) < 0.5).numpy()


def batch_ranges(count: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
    """Return the (start, stop) ranges of the batches that `rank` extracts."""
    starts = range(rank * batch_size, count, world_size * batch_size)
    return [(start, min(start + batch_size, count)) for start in starts]


def extract_features(extractor: Callable[[torch.Tensor], torch.Tensor], images: ImageSet, *, batch_size: int,
                     rank: int = 0, world_size: int = 1,
                     on_batch: Callable[[int], None] | None = None) -> np.ndarray | None:
    """Return the features (count, 2048) float32 of all images on rank 0, None on other ranks.

    With world_size > 1 every rank must call this with equal arguments: the gather is collective.
    `on_batch(n)` is called after each batch of n images, for progress bars.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    share = []
    for start, stop in batch_ranges(images.count, batch_size, rank, world_size):
        share.append((start, extractor(images.batch(start, stop)).numpy()))
        if on_batch is not None:
            on_batch(stop - start)
    if world_size == 1:
        shares = [share]
    else:
        shares = [None] * world_size if rank == 0 else None
        dist.gather_object(share, shares, dst=0)
        if rank != 0:
            return None

    features = np.empty((images.count, FEATURE_DIM), dtype=np.float32)
    filled = 0
    for start, block in (item for rank_share in shares for item in rank_share):
        features[start:start + len(block)] = block
        filled += len(block)
    assert filled == images.count, f"gathered {filled} feature rows for {images.count} images"
    return features
