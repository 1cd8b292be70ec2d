"""Time the Fréchet distance against scipy's sqrtm at 2048 dimensions, and the Inception extractor.

Part 1 fits two Gaussians to random 2048-d features (as many samples as --samples) and computes FID
twice in one process: with gan.metrics.fid.frechet_distance, and as the official ProGAN code does,
with scipy.linalg.sqrtm(S1 S2) and its real part. Printed: the seconds of each, the ratio, and
the relative difference of the values. --rank-deficient uses 1000 samples instead, so both
covariances are singular, and reports whether scipy's result is finite.

Part 2 measures images per second of the InceptionV3 extractor (torch-fidelity, resize to 299x299)
on the CPU with random weights, which cost the same time as the real ones.

Run from the repository root:
    .venv/bin/python bench/bench_fid.py [--samples 4096] [--images 16] [--batch 8]
"""

from __future__ import annotations

import argparse
import io
import math
import time
import warnings

import numpy as np
import scipy.linalg
import torch

from gan.metrics.features import ArrayImages, extract_features
from gan.metrics.fid import RankDeficientCovarianceWarning, feature_statistics, frechet_distance
from gan.metrics.inception import FEATURE_DIM, InceptionFeatures, random_inception_state_dict

RANK_DEFICIENT_SAMPLES = 1000


def scipy_frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    difference = mu1 - mu2
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root).real)


def bench_distance(samples: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((FEATURE_DIM, FEATURE_DIM)) / math.sqrt(FEATURE_DIM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientCovarianceWarning)
        mu1, sigma1 = feature_statistics(rng.standard_normal((samples, FEATURE_DIM)))
        mu2, sigma2 = feature_statistics(rng.standard_normal((samples, FEATURE_DIM)) @ mixing + 0.1)

    start = time.perf_counter()
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = scipy_frechet_distance(mu1, sigma1, mu2, sigma2)
    scipy_s = time.perf_counter() - start

    print(f"Frechet distance, d={FEATURE_DIM}, {samples} samples per set")
    print(f"  ours (pivoted Cholesky + eigvalsh): {ours_s:8.2f} s   FID {ours:.10g}")
    print(f"  scipy sqrtm(S1 S2), real part:      {scipy_s:8.2f} s   FID {reference:.10g}"
          f"{'' if math.isfinite(reference) else '  (not finite)'}")
    print(f"  ratio scipy / ours: {scipy_s / ours_s:.1f}x   relative difference:"
          f" {abs(ours - reference) / abs(reference):.2e}")


def bench_extractor(images: int, batch: int, seed: int) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    buffer = io.BytesIO()
    torch.save(random_inception_state_dict(seed), buffer)
    buffer.seek(0)
    model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=buffer)
    extractor = InceptionFeatures(model, "random", torch.device("cpu"))
    pixels = np.random.default_rng(seed).integers(0, 256, size=(images, 3, 128, 128), dtype=np.uint8)
    extractor(torch.from_numpy(pixels[:1]))  # the first call pays oneDNN's set-up

    start = time.perf_counter()
    extract_features(extractor, ArrayImages(pixels), batch_size=batch)
    elapsed = time.perf_counter() - start
    print(f"Inception features on CPU ({torch.get_num_threads()} threads), {images} RGB 128x128 images,"
          f" batch {batch}: {images / elapsed:.2f} images/s ({elapsed:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4096, help="features per set for part 1 (default: 4096)")
    parser.add_argument("--rank-deficient", action="store_true",
                        help=f"use {RANK_DEFICIENT_SAMPLES} features per set, fewer than the dimension")
    parser.add_argument("--images", type=int, default=16, help="images for part 2 (default: 16)")
    parser.add_argument("--batch", type=int, default=8, help="Inception batch size (default: 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    bench_distance(RANK_DEFICIENT_SAMPLES if args.rank_deficient else args.samples, args.seed)
    bench_extractor(args.images, args.batch, args.seed)


if __name__ == "__main__":
    main()
