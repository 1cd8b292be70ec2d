"""Fréchet Inception distance (FID) and kernel Inception distance (KID) from feature vectors.

FID compares Gaussians fitted to two feature sets: mean and `np.cov` (N - 1 denominator), as the
official ProGAN code and torch-fidelity do. KID is the unbiased squared MMD with the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets with torch-fidelity 0.4.0's defaults
(metric_kid.py: 100 subsets of 1000 features drawn with numpy RandomState(2020)). Everything here
runs in float64.
"""

from __future__ import annotations

import warnings

import numpy as np

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 2020
KID_DEGREE = 3
KID_COEF0 = 1.0

# Relative size, against the largest entry or eigenvalue, up to which an asymmetry, a negative
# eigenvalue or a Cholesky remainder counts as rounding error. Beyond it the input is not a covariance
# matrix. The margin leaves room for covariances stored in float32.
COVARIANCE_TOLERANCE = 1e-4


class RankDeficientCovarianceWarning(UserWarning):
    """A covariance from no more samples than dimensions: singular, so FID is finite but biased."""


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean (d,) and covariance (d, d) of features (N, d) in float64.

    With N <= d the covariance is singular. That is allowed, but a RankDeficientCovarianceWarning is
    issued, which Python's default filter shows once per distinct message.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"expected features of shape (N, d) with N >= 2, got {features.shape}")
    nonfinite = int(np.count_nonzero(~np.isfinite(features)))
    if nonfinite:
        raise ValueError(f"features contain {nonfinite} NaN or infinite values")
    count, dim = features.shape
    if count <= dim:
        warnings.warn(RankDeficientCovarianceWarning(
            f"{count} feature vectors of dimension {dim} give a singular covariance (rank <= {count - 1});"
            f" FID stays finite but is biased upward, so compare it only with FIDs from {count} images"),
            stacklevel=2)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Return ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) in float64, also for singular covariances.

    Tr sqrtm(S1 S2) is the sum of the square roots of the eigenvalues of S1 S2. With S1 = F F^T
    (pivoted Cholesky, F of shape (d, rank S1)), those are the eigenvalues of F^T S2 F, which is
    symmetric positive semi-definite. So one symmetric eigenvalue problem of size rank S1 replaces
    scipy's sqrtm of the non-symmetric S1 S2, which can come out complex or not finite for singular
    products (pytorch-fid then retries with 1e-6 added to the diagonals). Eigenvalues at rounding
    level, which can come out slightly negative, are set to 0, so the result is never NaN or complex.
    Raises ValueError for non-finite input or for a matrix that is not a covariance.
    """
    mu1, mu2 = _vector(mu1, "mu1"), _vector(mu2, "mu2")
    dim = mu1.shape[0]
    if mu2.shape[0] != dim:
        raise ValueError(f"mu1 has {dim} dimensions but mu2 has {mu2.shape[0]}")
    sigma1, sigma2 = _covariance(sigma1, "sigma1", dim), _covariance(sigma2, "sigma2", dim)

    factor = _psd_factor(sigma1, "sigma1")
    product = factor.T @ sigma2 @ factor
    product = (product + product.T) / 2  # symmetric in exact arithmetic; drop the rounding asymmetry
    product_eigenvalues = np.linalg.eigvalsh(product) if product.size else np.zeros(0)
    trace_sqrt = np.sqrt(_clip_rounding(product_eigenvalues, "F^T sigma2 F")).sum()

    difference = mu1 - mu2
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray, *, subsets: int = KID_SUBSETS,
                              subset_size: int = KID_SUBSET_SIZE, seed: int = KID_SEED) -> tuple[float, float]:
    """Return the mean and standard deviation (ddof 0) of the unbiased MMD^2 over random subsets.

    Each subset draws `subset_size` rows of each set without replacement, in the order torch-fidelity
    draws them, so equal inputs give torch-fidelity's value up to its float32 rounding. Where
    torch-fidelity fails on sets smaller than `subset_size`, the subsets here shrink to the smaller
    set. Such values are noisier, so compare them only at equal set sizes.
    """
    features1 = np.asarray(features1, dtype=np.float64)
    features2 = np.asarray(features2, dtype=np.float64)
    if features1.ndim != 2 or features2.ndim != 2 or features1.shape[1] != features2.shape[1]:
        raise ValueError(f"expected two feature arrays (N, d) with equal d, got {features1.shape}"
                         f" and {features2.shape}")
    size = min(subset_size, len(features1), len(features2))
    if size < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {len(features1)} and {len(features2)}")

    # A RandomState instance, not the global numpy RNG: it reproduces torch-fidelity's subsets.
    random_state = np.random.RandomState(seed)
    values = np.empty(subsets)
    for index in range(subsets):
        subset1 = features1[random_state.choice(len(features1), size, replace=False)]
        subset2 = features2[random_state.choice(len(features2), size, replace=False)]
        values[index] = _unbiased_mmd2(subset1, subset2)
    return float(values.mean()), float(values.std())


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Return the unbiased MMD^2 estimate of two equally sized samples (diagonals of K_xx, K_yy left out)."""
    size = len(x)
    kernel_xx = _polynomial_kernel(x, x)
    kernel_yy = _polynomial_kernel(y, y)
    kernel_xy = _polynomial_kernel(x, y)
    within = (kernel_xx.sum() - np.trace(kernel_xx) + kernel_yy.sum() - np.trace(kernel_yy)) / (size * (size - 1))
    return float(within - 2.0 * kernel_xy.sum() / (size * size))


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + KID_COEF0) ** KID_DEGREE


def _vector(value: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a vector, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _covariance(value: np.ndarray, name: str, dim: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (dim, dim):
        raise ValueError(f"{name} must have shape ({dim}, {dim}) to match the means, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    asymmetry = float(np.abs(array - array.T).max(initial=0.0))
    if asymmetry > COVARIANCE_TOLERANCE * float(np.abs(array).max(initial=0.0)):
        raise ValueError(f"{name} is not symmetric (largest |S - S^T| entry {asymmetry:.6g}); pass covariance matrices")
    return (array + array.T) / 2


def _psd_factor(sigma: np.ndarray, name: str) -> np.ndarray:
    """Return F (d, rank) with F F^T = sigma, by Cholesky with full pivoting (LAPACK dpstrf).

    The factorization stops at pivots below d * eps * max(diag), LAPACK's default tolerance. What it
    leaves out must be rounding-sized, which holds only for a positive semi-definite matrix.
    """
    from scipy.linalg.lapack import dpstrf

    lower, pivots, rank, info = dpstrf(sigma, lower=1)
    if info < 0:
        raise ValueError(f"{name}: LAPACK dpstrf rejected argument {-info}")
    factor = np.empty((len(sigma), rank))
    factor[pivots - 1] = np.tril(lower)[:, :rank]
    residual = float(np.abs(sigma - factor @ factor.T).max(initial=0.0))
    if residual > COVARIANCE_TOLERANCE * float(np.abs(sigma).max(initial=0.0)):
        raise ValueError(f"{name} is not positive semi-definite: after {rank} pivots of its Cholesky"
                         f" factorization {residual:.6g} remains; pass covariance matrices")
    return factor


def _clip_rounding(eigenvalues: np.ndarray, name: str) -> np.ndarray:
    """Set eigenvalues at rounding level to 0; raise ValueError for clearly negative ones.

    Eigenvalues below d * eps * max|eigenvalue| (numpy's matrix_rank tolerance), negative ones
    included, cannot be distinguished from 0. Zeroing them keeps their square roots, about sqrt(eps) each,
    from adding up over the null space of a singular covariance.
    """
    largest = float(np.abs(eigenvalues).max(initial=0.0))
    smallest = float(eigenvalues.min(initial=0.0))
    if smallest < -COVARIANCE_TOLERANCE * largest:
        raise ValueError(f"{name} is not positive semi-definite: eigenvalue {smallest:.6g} against a"
                         f" largest of {largest:.6g}; pass covariance matrices")
    rounding_level = len(eigenvalues) * np.finfo(np.float64).eps * largest
    return np.where(eigenvalues > rounding_level, eigenvalues, 0.0)
