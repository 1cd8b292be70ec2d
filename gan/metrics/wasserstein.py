"""Sliced 1-D Wasserstein-1 distances between two large sets of vectors along given directions.

Each direction's projections of both sets are sorted and compared quantile by quantile. Projections
are computed a group of directions at a time from descriptor chunks, so the vectors themselves may be
recomputed for each group instead of being held in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

Tensor = torch.Tensor
VectorChunks = Callable[[], Iterable[Tensor]]  # returns the vectors of one set as row chunks, in order
Pairing = tuple[Tensor, Tensor, Tensor]  # (index_a, index_b, weight) from quantile_pairing


def random_directions(count: int, dimension: int, generator: torch.Generator) -> Tensor:
    """Draw `count` float32 unit vectors (count, dimension) from N(0, I), normalized in float64."""
    directions = torch.randn(count, dimension, generator=generator, dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True)
    return directions.float()


def quantile_pairing(size_a: int, size_b: int, device: torch.device | str = "cpu") -> Pairing:
    """Pair the order statistics of two sorted samples of sizes `size_a` and `size_b`.

    Returns (index_a, index_b, weight) such that sum(weight * |a[index_a] - b[index_b]|) is the exact
    Wasserstein-1 distance between the two empirical distributions: the integral over t in [0, 1) of
    the distance between their quantile functions. Equal sizes give index_a = index_b and weight 1 / size.
    """
    # Quantile breakpoints in units of 1 / (size_a * size_b): a changes at i * size_b, b at j * size_a.
    breakpoints = torch.cat([torch.arange(size_a, device=device) * size_b,
                             torch.arange(size_b, device=device) * size_a]).unique(sorted=True)
    total = size_a * size_b
    widths = torch.diff(breakpoints, append=breakpoints.new_tensor([total]))
    return breakpoints // size_b, breakpoints // size_a, widths.double() / total


def sorted_distances(sorted_a: Tensor, sorted_b: Tensor, pairing: Pairing | None = None) -> Tensor:
    """Return the float64 1-D Wasserstein-1 distance of each row pair of sorted samples (k, M_a), (k, M_b).

    With equal sizes this is the official mean |sorted_a - sorted_b|. Different sizes use `pairing`,
    which defaults to quantile_pairing(M_a, M_b).
    """
    size_a, size_b = sorted_a.shape[1], sorted_b.shape[1]
    if size_a == size_b:
        # A float32 mean, as in the official code: torch's float64-accumulating sum was ~30x slower on CPU.
        return (sorted_a - sorted_b).abs().mean(dim=1).double()
    if pairing is None:
        pairing = quantile_pairing(size_a, size_b, sorted_a.device)
    index_a, index_b, weight = pairing
    gaps = (sorted_a[:, index_a] - sorted_b[:, index_b]).abs()
    return gaps.double() @ weight


def sort_rows_(projections: Tensor, work_bytes: int) -> None:
    """Sort each row of a contiguous (k, M) float32 tensor in place, in groups of rows on GPU."""
    if projections.device.type == "cpu":
        # NumPy sorts float32 in place with SIMD; on a 2-core x86 machine that was ~17x faster than
        # torch.sort (torch 2.14.1, numpy 2.4.6), and it needs no index tensor.
        projections.numpy().sort(axis=1)
        return
    rows = max(1, work_bytes // (projections.shape[1] * 12))  # values and int64 indices
    for start in range(0, projections.shape[0], rows):
        part = projections[start:start + rows]
        part.copy_(torch.sort(part, dim=1).values)


def directional_distances(chunks_a: VectorChunks, rows_a: int, chunks_b: VectorChunks, rows_b: int,
                          directions: Tensor, directions_per_pass: int, work_bytes: int) -> Tensor:
    """Return the float64 1-D Wasserstein-1 distance of the two sets along each direction (k, D).

    `chunks_a()` and `chunks_b()` are called once per pass over `directions_per_pass` directions. A
    pass stores (rows_a + rows_b) * directions_per_pass float32 projections, and sorting and comparing
    them takes about `work_bytes` more. Sets of different sizes also hold a quantile pairing of up to
    rows_a + rows_b entries, 24 bytes each.
    """
    pairing = None
    distances = torch.empty(directions.shape[0], dtype=torch.float64)
    rows_per_step = max(1, work_bytes // ((rows_a + rows_b) * 24))
    for start in range(0, directions.shape[0], directions_per_pass):
        group = directions[start:start + directions_per_pass]
        projections_a = project(chunks_a(), group, rows_a)
        projections_b = project(chunks_b(), group, rows_b)
        sort_rows_(projections_a, work_bytes)
        sort_rows_(projections_b, work_bytes)
        if rows_a != rows_b and pairing is None:
            pairing = quantile_pairing(rows_a, rows_b, projections_a.device)
        for step in range(0, group.shape[0], rows_per_step):
            rows = slice(step, step + rows_per_step)
            step_distances = sorted_distances(projections_a[rows], projections_b[rows], pairing)
            distances[start + step:start + step + step_distances.shape[0]] = step_distances.cpu()
        del projections_a, projections_b
    return distances


def project(chunks: Iterable[Tensor], directions: Tensor, rows: int) -> Tensor:
    """Project the row chunks of one set (together `rows` x D) onto `directions` (k, D).

    Returns contiguous float32 (k, rows), one row per direction, on the device of the chunks.
    """
    projections = None
    offset = 0
    for chunk in chunks:
        if projections is None:
            directions = directions.to(chunk.device)
            projections = torch.empty(directions.shape[0], rows, device=chunk.device)
        projections[:, offset:offset + chunk.shape[0]] = directions @ chunk.T
        offset += chunk.shape[0]
    assert projections is not None and offset == rows, f"projected {offset} of {rows} vectors"
    return projections


def sliced_distance(vectors_a: Tensor, vectors_b: Tensor, directions: Tensor) -> float:
    """Return the mean over repeats of the mean 1-D distance along each repeat's directions.

    `vectors_a` (M_a, D) and `vectors_b` (M_b, D) are held in memory; `directions` is
    (repeats, per_repeat, D) of unit vectors. This is the official SWD of one level, not scaled by 1e3.
    """
    repeats, per_repeat, dimension = directions.shape
    flat = directions.reshape(-1, dimension)
    work_bytes = (vectors_a.shape[0] + vectors_b.shape[0]) * flat.shape[0] * 24
    distances = directional_distances(lambda: [vectors_a], vectors_a.shape[0], lambda: [vectors_b],
                                      vectors_b.shape[0], flat, flat.shape[0], work_bytes)
    return distances.view(repeats, per_repeat).mean(dim=1).mean().item()
