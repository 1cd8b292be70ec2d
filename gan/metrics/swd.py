"""Sliced Wasserstein distance (SWD) between two image sets, by the ProGAN evaluation protocol.

The protocol follows Karras et al. 2018 (arXiv:1710.10196, section 5) and the official code
(tkarras/progressive_growing_of_gans, metrics/sliced_wasserstein.py). Each image is split into a
Laplacian pyramid from full resolution down to 16x16. Random 7x7 patches of each level are the
descriptors, normalized per set and per channel. The distance at a level is the mean 1-D Wasserstein
distance of the two descriptor sets along random unit directions. The official code needs sets of
equal size. Sets of different sizes are compared here by the exact 1-D Wasserstein distance between
their empirical distributions, which equals the official mean gap of sorted projections for equal sizes.
The pyramid, patches and projections run in torch, on CPU or GPU; on CPU, NumPy sorts the projections.

Memory: the inputs are read a chunk of images at a time, so numpy memmaps stay on disk. Besides the
inputs, an evaluation keeps the patch centres (4 bytes per patch and level) and works within
`memory_budget` bytes. When the descriptors of both sets fit in three quarters of the budget they are
computed once and kept. Otherwise, as for 2 x 16384 RGB images at 128x128 (1.2 GB of descriptors per
set and level), each pass over a group of directions recomputes them from the images, which costs time
but no memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from gan.errors import DataError
from gan.metrics.pyramid import laplacian_levels
from gan.metrics.wasserstein import VectorChunks, directional_distances, random_directions

# Protocol constants of the official code (metrics/sliced_wasserstein.py, class API).
PATCH_SIZE = 7
PATCH_RADIUS = PATCH_SIZE // 2
PATCHES_PER_IMAGE = 128
DIRECTION_REPEATS = 4
DIRECTIONS_PER_REPEAT = 128
MIN_RESOLUTION = 16  # the coarsest pyramid level, which is the Gaussian low-pass itself
REPORT_SCALE = 1e3  # reported values are distances x 1e3, the official SWDx1e3_<res>

DEFAULT_MEMORY_BUDGET = 2**30  # bytes
# Keeping descriptors is worth it as long as a pass can still project onto this many directions.
MIN_DIRECTIONS_WITH_KEPT_DESCRIPTORS = 8
DESCRIPTOR_ROWS_PER_PROJECTION = 65536
# Pixel values per chunk of images that go through the pyramid together (float32: 8 MiB).
IMAGE_CHUNK_VALUES = 2**21

Tensor = torch.Tensor
ImageSet = np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------------------------
# Pyramid levels and descriptors


def pyramid_resolutions(size: int) -> list[int]:
    """Return the level sizes for square images of `size` pixels: size, size / 2, ... down to >= 16."""
    if size < MIN_RESOLUTION:
        raise DataError(f"images are {size}x{size}; SWD needs at least {MIN_RESOLUTION}x{MIN_RESOLUTION}")
    sizes = [size]
    while sizes[-1] // 2 >= MIN_RESOLUTION:
        if sizes[-1] % 2:
            raise DataError(f"images are {size}x{size}: the pyramid halves the size down to {MIN_RESOLUTION},"
                            f" but {sizes[-1]} is odd; use a size that stays even until then,"
                            " such as 2**k or 3 * 2**k")
        sizes.append(sizes[-1] // 2)
    return sizes


def sample_patch_centres(count: int, size: int, patches_per_image: int,
                         generator: torch.Generator) -> Tensor:
    """Draw int16 patch centres (count, patches_per_image, 2) as (row, column), with replacement.

    Both coordinates are uniform integers in [3, size - 4], so every 7x7 patch lies inside the image.
    """
    return torch.randint(PATCH_RADIUS, size - PATCH_RADIUS, (count, patches_per_image, 2),
                         generator=generator, dtype=torch.int16)


def extract_patches(level: Tensor, centres: Tensor) -> Tensor:
    """Cut 7x7 patches out of `level` (N, C, S, S) at `centres` (N, P, 2) as (row, column).

    Returns descriptors (N * P, C * 49), image-major, each flattened as (channel, row, column) like
    the official code.
    """
    count, channels, height, width = level.shape
    patches_per_image = centres.shape[1]
    assert centres.shape == (count, patches_per_image, 2), f"centres {tuple(centres.shape)} for {count} images"
    offsets = torch.arange(-PATCH_RADIUS, PATCH_RADIUS + 1, device=level.device)
    centres = centres.to(level.device, torch.int64)
    rows = centres[:, :, 0, None, None] + offsets[:, None]  # (N, P, 7, 1)
    columns = centres[:, :, 1, None, None] + offsets[None, :]  # (N, P, 1, 7)
    flat_index = (rows * width + columns).reshape(count, 1, -1)  # (N, 1, P * 49)

    pixels = level.reshape(count, channels, height * width)
    patches = pixels.gather(2, flat_index.expand(count, channels, -1))  # (N, C, P * 49)
    patches = patches.view(count, channels, patches_per_image, PATCH_SIZE * PATCH_SIZE)
    return patches.transpose(1, 2).reshape(count * patches_per_image, channels * PATCH_SIZE * PATCH_SIZE)


class ChannelMoments:
    """Running per-channel mean and population standard deviation of descriptors, in float64.

    Chunks are merged with Chan et al.'s pairwise update, so a channel that is constant over the
    whole set gets a standard deviation of exactly 0.
    """

    def __init__(self, channels: int):
        self.channels = channels
        self.count = 0
        self.mean: Tensor | None = None
        self.sum_squares: Tensor | None = None  # sum of squared deviations from the mean

    def add(self, descriptors: Tensor) -> None:
        values = descriptors.view(descriptors.shape[0], self.channels, -1)  # (M, C, 49)
        count = values.shape[0] * values.shape[2]
        mean = values.sum(dim=(0, 2), dtype=torch.float64) / count
        # Deviations from the chunk mean are squared in the descriptors' dtype and summed in float64.
        deviations = values - mean.to(values.dtype)[:, None]
        sum_squares = deviations.square_().sum(dim=(0, 2), dtype=torch.float64)
        if self.mean is None:
            self.count, self.mean, self.sum_squares = count, mean, sum_squares
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.sum_squares = self.sum_squares + sum_squares + delta**2 * (self.count * count / total)
        self.count = total

    def mean_std(self) -> tuple[Tensor, Tensor]:
        """Return float64 (mean, std), each of shape (channels,)."""
        assert self.mean is not None, "no descriptors were added"
        return self.mean, torch.sqrt(self.sum_squares / self.count)


def apply_normalization(descriptors: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Subtract the per-channel mean and divide by the std, in place; returns `descriptors`.

    A std of 0 (a channel constant over the whole set) gives NaN, as in the official code.
    """
    channels = mean.shape[0]
    view = descriptors.view(descriptors.shape[0], channels, -1)
    view.sub_(mean.to(view.device, view.dtype)[:, None]).div_(std.to(view.device, view.dtype)[:, None])
    return descriptors


def normalize_descriptors(descriptors: Tensor, channels: int) -> Tensor:
    """Return a copy of one set's descriptors (M, C * 49), normalized per channel over the whole set."""
    moments = ChannelMoments(channels)
    moments.add(descriptors)
    return apply_normalization(descriptors.clone(), *moments.mean_std())


# ----------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass
class RandomDraws:
    """The random choices of one evaluation, one entry per pyramid level (0 = full resolution)."""

    centres_a: list[Tensor]  # (N_a, P, 2) int16 (row, column), as sample_patch_centres draws them
    centres_b: list[Tensor]  # (N_b, P, 2)
    directions: list[Tensor]  # (repeats, per_repeat, C * 49) float32 unit vectors


def draw_random(count_a: int, count_b: int, size: int, channels: int, generator: torch.Generator, *,
                patches_per_image: int = PATCHES_PER_IMAGE, direction_repeats: int = DIRECTION_REPEATS,
                directions_per_repeat: int = DIRECTIONS_PER_REPEAT) -> RandomDraws:
    """Draw the patch centres of both sets and the projection directions for every level."""
    dimension = channels * PATCH_SIZE * PATCH_SIZE
    draws = RandomDraws([], [], [])
    for level_size in pyramid_resolutions(size):
        draws.centres_a.append(sample_patch_centres(count_a, level_size, patches_per_image, generator))
        draws.centres_b.append(sample_patch_centres(count_b, level_size, patches_per_image, generator))
        directions = random_directions(direction_repeats * directions_per_repeat, dimension, generator)
        draws.directions.append(directions.view(direction_repeats, directions_per_repeat, dimension))
    return draws


def sliced_wasserstein(a: ImageSet, b: ImageSet, *, seed: int | None = None,
                       generator: torch.Generator | None = None,
                       patches_per_image: int = PATCHES_PER_IMAGE,
                       direction_repeats: int = DIRECTION_REPEATS,
                       directions_per_repeat: int = DIRECTIONS_PER_REPEAT,
                       device: torch.device | str | None = None,
                       memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict[str, float]:
    """Compute the SWD x 1e3 between image sets `a` and `b` at every pyramid level.

    `a` and `b` are uint8 (N, C, S, S) NumPy arrays (memmaps are read a chunk at a time) or torch
    tensors, with C in {1, 3}, S >= 16 and the same C and S; their N may differ. Returns
    {"swd/<res>": ...} from res = S down to 16, then "swd/avg", the mean of the levels.
    Randomness comes from `generator`, or from a new generator seeded with `seed`. With neither, the
    result varies from call to call, as the official code's does.
    `device` defaults to the device of `a` for a tensor and to the CPU otherwise. `memory_budget` is
    in bytes; the module docstring explains how it trades memory for time.
    """
    count_a, channels, size = _check_images(a, "a")
    count_b, _, _ = _check_images(b, "b")
    _check_same_kind(a, b)
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if generator is None:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
    draws = draw_random(count_a, count_b, size, channels, generator, patches_per_image=patches_per_image,
                        direction_repeats=direction_repeats, directions_per_repeat=directions_per_repeat)
    return sliced_wasserstein_from_draws(a, b, draws, device=device, memory_budget=memory_budget)


def sliced_wasserstein_from_draws(a: ImageSet, b: ImageSet, draws: RandomDraws, *,
                                  device: torch.device | str | None = None,
                                  memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict[str, float]:
    """Compute the same result as sliced_wasserstein, with given patch centres and directions."""
    count_a, channels, size = _check_images(a, "a")
    count_b, _, _ = _check_images(b, "b")
    _check_same_kind(a, b)
    sizes = pyramid_resolutions(size)
    assert len(draws.directions) == len(sizes), f"draws for {len(draws.directions)} levels, need {len(sizes)}"
    if device is None:
        device = a.device if isinstance(a, torch.Tensor) else "cpu"
    device = torch.device(device)

    images_per_chunk = max(1, min(IMAGE_CHUNK_VALUES, memory_budget // 64 // 4) // (channels * size * size))
    set_a = _DescriptorSource(a, draws.centres_a, device, images_per_chunk)
    set_b = _DescriptorSource(b, draws.centres_b, device, images_per_chunk)
    distances = _level_distances(set_a, set_b, draws.directions, memory_budget)
    result = {f"swd/{level_size}": REPORT_SCALE * distance for level_size, distance in zip(sizes, distances)}
    result["swd/avg"] = float(np.mean(list(result.values())))
    return result


def _check_images(images: ImageSet, name: str) -> tuple[int, int, int]:
    if not isinstance(images, np.ndarray | torch.Tensor):
        raise TypeError(f"{name}: expected a NumPy array or torch tensor, got {type(images).__name__}")
    if images.dtype not in (np.uint8, torch.uint8):
        raise DataError(f"{name}: images must be uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[2] != images.shape[3]:
        raise DataError(f"{name}: expected square images (N, C, S, S) with C = 1 or 3,"
                        f" got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise DataError(f"{name}: the image set is empty")
    pyramid_resolutions(images.shape[2])
    return images.shape[0], images.shape[1], images.shape[2]


def _check_same_kind(a: ImageSet, b: ImageSet) -> None:
    if tuple(a.shape[1:]) != tuple(b.shape[1:]):
        raise DataError(f"the image sets differ in shape: a is (N, C, S, S) = {tuple(a.shape)},"
                        f" b is {tuple(b.shape)}; they need the same channels and size")


class _DescriptorSource:
    """One image set read a chunk of images at a time, turned into descriptors at chosen levels."""

    def __init__(self, images: ImageSet, centres: list[Tensor], device: torch.device, images_per_chunk: int):
        self.images = images
        self.centres = centres
        self.device = device
        self.images_per_chunk = images_per_chunk
        self.count, self.channels = images.shape[0], images.shape[1]
        self.rows = self.count * centres[0].shape[1]
        assert all(c.shape[0] == self.count for c in centres), "patch centres do not match the image count"

    def sweep(self, levels: Sequence[int]) -> Iterator[dict[int, Tensor]]:
        """Yield {level: raw descriptors} for consecutive chunks of images."""
        for start in range(0, self.count, self.images_per_chunk):
            stop = min(start + self.images_per_chunk, self.count)
            chunk = self.images[start:stop]
            if isinstance(chunk, np.ndarray):
                chunk = torch.from_numpy(np.array(chunk))  # a writable copy, also of memmap slices
            pixels = chunk.to(self.device, torch.float32)
            pyramid = laplacian_levels(pixels, len(self.centres), levels)
            yield {level: extract_patches(pyramid[level], self.centres[level][start:stop]) for level in levels}

    def moments(self, levels: Sequence[int]) -> dict[int, tuple[Tensor, Tensor]]:
        """Return {level: (mean, std)} per channel over the whole set, from one sweep."""
        moments = {level: ChannelMoments(self.channels) for level in levels}
        for descriptors in self.sweep(levels):
            for level in levels:
                moments[level].add(descriptors[level])
        return {level: moments[level].mean_std() for level in levels}

    def normalized_chunks(self, level: int, mean: Tensor, std: Tensor) -> VectorChunks:
        """Return a function that recomputes the normalized descriptors of one level from the images."""
        def chunks() -> Iterator[Tensor]:
            for descriptors in self.sweep([level]):
                yield apply_normalization(descriptors[level], mean, std)
        return chunks

    def keep(self, levels: Sequence[int]) -> dict[int, Tensor]:
        """Compute the normalized descriptors (rows, C * 49) of `levels` in one sweep and keep them."""
        dimension = self.channels * PATCH_SIZE * PATCH_SIZE
        kept = {level: torch.empty(self.rows, dimension, device=self.device) for level in levels}
        moments = {level: ChannelMoments(self.channels) for level in levels}
        offset = 0
        for descriptors in self.sweep(levels):
            rows = descriptors[levels[0]].shape[0]
            for level in levels:
                kept[level][offset:offset + rows] = descriptors[level]
                moments[level].add(descriptors[level])
            offset += rows
        for level in levels:
            apply_normalization(kept[level], *moments[level].mean_std())
        return kept


def _level_distances(set_a: _DescriptorSource, set_b: _DescriptorSource, directions: list[Tensor],
                     memory_budget: int) -> list[float]:
    """Return the SWD of every level, keeping descriptors in memory when they fit the budget."""
    num_levels = len(directions)
    repeats, per_repeat, dimension = directions[0].shape
    total_directions = repeats * per_repeat
    rows = set_a.rows + set_b.rows

    # A quarter of the budget stays free for image chunks, sorting and distance temporaries.
    pairing_bytes = 0 if set_a.rows == set_b.rows else 24 * rows  # quantile pairing of unequal sets
    usable = memory_budget * 3 // 4 - pairing_bytes
    work_bytes = memory_budget // 8
    level_bytes = rows * dimension * 4
    direction_bytes = rows * 4
    min_directions = min(MIN_DIRECTIONS_WITH_KEPT_DESCRIPTORS, total_directions)
    levels_kept_at_once = (usable - min_directions * direction_bytes) // level_bytes

    distances: dict[int, Tensor] = {}
    if levels_kept_at_once >= 1:
        for first in range(0, num_levels, levels_kept_at_once):
            group = list(range(first, min(first + levels_kept_at_once, num_levels)))
            kept_a, kept_b = set_a.keep(group), set_b.keep(group)
            per_pass = min(total_directions, (usable - len(group) * level_bytes) // direction_bytes)
            for level in group:
                distances[level] = directional_distances(
                    _row_chunks(kept_a.pop(level)), set_a.rows, _row_chunks(kept_b.pop(level)), set_b.rows,
                    directions[level].reshape(-1, dimension), per_pass, work_bytes)
    else:
        per_pass = min(total_directions, usable // direction_bytes)
        if per_pass < 1:
            needed = (direction_bytes + pairing_bytes) * 4 // 3 + 1
            raise ValueError(f"memory_budget of {memory_budget} bytes is too small for {rows} descriptors"
                             f" per level; it needs at least {needed} bytes")
        levels = list(range(num_levels))
        moments_a, moments_b = set_a.moments(levels), set_b.moments(levels)
        for level in levels:
            distances[level] = directional_distances(
                set_a.normalized_chunks(level, *moments_a[level]), set_a.rows,
                set_b.normalized_chunks(level, *moments_b[level]), set_b.rows,
                directions[level].reshape(-1, dimension), per_pass, work_bytes)
    return [distances[level].view(repeats, per_repeat).mean(dim=1).mean().item() for level in range(num_levels)]


def _row_chunks(descriptors: Tensor) -> VectorChunks:
    return lambda: descriptors.split(DESCRIPTOR_ROWS_PER_PROJECTION)
