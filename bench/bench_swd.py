"""Time our torch SWD against the float64 NumPy/SciPy reference in tests/test_swd.py, in one process.

Both sides get the same images and the same patch centres and directions. Printed: the seconds of
each side, the ratio reference / ours, and the largest relative difference of the reported values.
The official ProGAN code can be timed as a third side.

The official implementation (tkarras/progressive_growing_of_gans, metrics/sliced_wasserstein.py,
NumPy and SciPy only) is not part of this repository. To compare with it, pass the path of a local
copy with --official. It draws its own centres and directions from NumPy's global generator, so its
values agree with ours only up to sampling noise. It needs RGB images.

--large-images N instead measures our side alone on two sets of N random RGB images at
--large-resolution, reporting the seconds and how much the process's peak resident memory grew
beyond the inputs (allocated first, so they are part of the baseline).

Run from the repository root:
    .venv/bin/python bench/bench_swd.py [--official /path/to/metrics/sliced_wasserstein.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from gan.metrics.swd import (
    DEFAULT_MEMORY_BUDGET,
    RandomDraws,
    draw_random,
    sliced_wasserstein,
    sliced_wasserstein_from_draws,
)

TEST_FILE = Path(__file__).resolve().parents[1] / "tests" / "test_swd.py"
OFFICIAL_MINIBATCH = 64


def _load_module(name: str, path: Path):
    # Loaded by file path: some installed distributions ship a top-level `tests` package that
    # would shadow the repository's tests folder on import.
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


swd_tests = _load_module("swd_tests", TEST_FILE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="images per set (default: 512)")
    parser.add_argument("--resolution", type=int, default=64, help="image size in pixels (default: 64)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 or 3 (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shared draws (default: 0)")
    parser.add_argument("--official", type=Path, default=None,
                        help="path of the official metrics/sliced_wasserstein.py to time as well")
    parser.add_argument("--large-images", type=int, default=0,
                        help="only time our side on this many RGB images per set (default: off)")
    parser.add_argument("--large-resolution", type=int, default=128, help="size for --large-images (default: 128)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice, one per core)")
    parser.add_argument("--memory-gib", type=float, default=DEFAULT_MEMORY_BUDGET / 2**30,
                        help="our memory_budget in GiB (default: the library default)")
    args = parser.parse_args()
    budget = int(args.memory_gib * 2**30)

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} torch threads,"
          f" {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    if args.large_images:
        _measure_large(args.large_images, args.large_resolution, budget)
        return

    a = swd_tests.smooth_images(args.images, args.channels, args.resolution, seed=1)
    b = swd_tests.smooth_images(args.images, args.channels, args.resolution, seed=2)
    print(f"inputs: 2 sets of {args.images} images, {args.channels}x{args.resolution}x{args.resolution}, uint8")

    draws = draw_random(len(a), len(b), args.resolution, args.channels, torch.Generator().manual_seed(args.seed))
    sliced_wasserstein_from_draws(a[:8], b[:8], _first_images(draws, 8))  # warm-up of torch kernels
    ours, ours_seconds = _timed(lambda: sliced_wasserstein_from_draws(a, b, draws, memory_budget=budget))
    reference, reference_seconds = _timed(
        lambda: swd_tests.reference_swd(a, b, draws.centres_a, draws.centres_b, draws.directions))
    worst = max(abs(ours[key] - reference[key]) / abs(reference[key]) for key in reference)
    print(f"ours (torch, float32):        {ours_seconds:8.2f} s  {_format(ours)}")
    print(f"reference (NumPy, float64):   {reference_seconds:8.2f} s  {_format(reference)}")
    print(f"ratio reference / ours: {reference_seconds / ours_seconds:.1f}x;"
          f" largest relative difference: {worst:.2e}")

    if args.official is not None:
        _compare_official(args.official, a, b, ours_seconds)


def _first_images(draws: RandomDraws, count: int) -> RandomDraws:
    return RandomDraws([centres[:count] for centres in draws.centres_a],
                       [centres[:count] for centres in draws.centres_b], draws.directions)


def _timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def _format(result: dict[str, float]) -> str:
    return "  ".join(f"{key}={value:.4f}" for key, value in result.items())


def _compare_official(path: Path, a: np.ndarray, b: np.ndarray, ours_seconds: float) -> None:
    if a.shape[1] != 3:
        print("official: skipped, it accepts RGB images only")
        return
    official = _load_module("official_sliced_wasserstein", path)
    api = official.API(num_images=len(a), image_shape=a.shape[1:], image_dtype=np.uint8,
                       minibatch_size=OFFICIAL_MINIBATCH)

    def evaluate(mode: str, images: np.ndarray) -> list[float]:
        api.begin(mode)
        for start in range(0, len(images), OFFICIAL_MINIBATCH):
            api.feed(mode, images[start:start + OFFICIAL_MINIBATCH])
        return api.end(mode)

    # The reals pass keeps the real descriptors and also compares them with themselves; the fakes
    # pass is what each later evaluation of a generator costs. One SWD from scratch needs both.
    _, reals_seconds = _timed(lambda: evaluate("reals", a))
    values, fakes_seconds = _timed(lambda: evaluate("fakes", b))
    names = [name.replace("SWDx1e3_", "swd/") for name in api.get_metric_names()]
    total = reals_seconds + fakes_seconds
    print(f"official (NumPy, float32):    {total:8.2f} s  {_format(dict(zip(names, map(float, values))))}")
    print(f"  reals pass {reals_seconds:.2f} s, fakes pass {fakes_seconds:.2f} s;"
          f" ratio official / ours: {total / ours_seconds:.1f}x")


def _measure_large(count: int, resolution: int, budget: int) -> None:
    a = swd_tests.random_images(count, 3, resolution, seed=3)
    b = swd_tests.random_images(count, 3, resolution, seed=4)
    baseline = _peak_rss_bytes()
    result, seconds = _timed(lambda: sliced_wasserstein(a, b, seed=0, memory_budget=budget))
    growth = _peak_rss_bytes() - baseline
    print(f"large: 2 x {count} RGB images at {resolution}x{resolution}, memory_budget {budget / 2**30:.2f} GiB:"
          f" {seconds:.1f} s, peak resident memory grew by {growth / 2**30:.2f} GiB  {_format(result)}")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


if __name__ == "__main__":
    main()
