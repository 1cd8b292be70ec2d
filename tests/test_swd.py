"""SWD tests against a float64 NumPy/SciPy version of the official algorithm written here.

The reference follows tkarras/progressive_growing_of_gans, metrics/sliced_wasserstein.py: a pyramid by
scipy.ndimage.convolve in mode='mirror', fancy-indexed 7x7 patches, per-set per-channel normalization
and sorted projections. It takes the patch centres and directions as inputs, so both implementations
can be fed the same random draws. bench/bench_swd.py imports it from here.
"""

import json

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch

from gan.errors import DataError
from gan.metrics import swd
from gan.metrics.pyramid import laplacian_pyramid, pyr_down, pyr_up
from gan.metrics.swd import (
    draw_random,
    extract_patches,
    normalize_descriptors,
    pyramid_resolutions,
    sample_patch_centres,
    sliced_wasserstein,
    sliced_wasserstein_from_draws,
)
from gan.metrics.wasserstein import quantile_pairing, sliced_distance, sorted_distances

# The official 5x5 filter, written out rather than built from the code under test.
REFERENCE_KERNEL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0


# ----------------------------------------------------------------------------------------------
# Float64 reference


def reference_pyr_down(x):
    return scipy.ndimage.convolve(x, REFERENCE_KERNEL[None, None], mode="mirror")[:, :, ::2, ::2]


def reference_pyr_up(x):
    upsampled = np.zeros(x.shape[:2] + (2 * x.shape[2], 2 * x.shape[3]))
    upsampled[:, :, ::2, ::2] = x
    return scipy.ndimage.convolve(upsampled, 4.0 * REFERENCE_KERNEL[None, None], mode="mirror")


def reference_pyramid(images, num_levels):
    pyramid = [images.astype(np.float64)]
    for _ in range(1, num_levels):
        pyramid.append(reference_pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - reference_pyr_up(pyramid[-1])
    return pyramid


def reference_patches(level, centres):
    """(N, C, S, S) level, (N, P, 2) centres as (row, column) -> (N * P, C, 7, 7) patches."""
    windows = np.lib.stride_tricks.sliding_window_view(level, (7, 7), axis=(2, 3))  # (N, C, S-6, S-6, 7, 7)
    count, patches_per_image = centres.shape[:2]
    image = np.repeat(np.arange(count), patches_per_image)
    rows = centres[:, :, 0].reshape(-1).astype(np.int64) - 3
    columns = centres[:, :, 1].reshape(-1).astype(np.int64) - 3
    return windows[image, :, rows, columns]


def reference_normalize(patches):
    patches = patches - patches.mean(axis=(0, 2, 3), keepdims=True)
    patches = patches / patches.std(axis=(0, 2, 3), keepdims=True)
    return patches.reshape(patches.shape[0], -1)


def reference_level_distance(descriptors_a, descriptors_b, directions):
    """Mean over repeats of the mean 1-D Wasserstein distance; directions (repeats, per_repeat, D)."""
    per_repeat = []
    for repeat_directions in directions:
        projections_a = descriptors_a @ repeat_directions.T
        projections_b = descriptors_b @ repeat_directions.T
        if len(descriptors_a) == len(descriptors_b):
            gaps = np.abs(np.sort(projections_a, axis=0) - np.sort(projections_b, axis=0))
            per_repeat.append(gaps.mean())
        else:
            per_repeat.append(np.mean([scipy.stats.wasserstein_distance(projections_a[:, k], projections_b[:, k])
                                       for k in range(projections_a.shape[1])]))
    return float(np.mean(per_repeat))


def reference_swd(a, b, centres_a, centres_b, directions):
    """SWD x 1e3 per level of uint8 sets a and b, with the given per-level centres and directions."""
    num_levels = len(directions)
    pyramid_a = reference_pyramid(np.asarray(a), num_levels)
    pyramid_b = reference_pyramid(np.asarray(b), num_levels)
    size = a.shape[-1]
    result = {}
    for level in range(num_levels):
        descriptors_a = reference_normalize(reference_patches(pyramid_a[level], np.asarray(centres_a[level])))
        descriptors_b = reference_normalize(reference_patches(pyramid_b[level], np.asarray(centres_b[level])))
        distance = reference_level_distance(descriptors_a, descriptors_b, np.asarray(directions[level], np.float64))
        result[f"swd/{size >> level}"] = 1e3 * distance
    result["swd/avg"] = float(np.mean(list(result.values())))
    return result


# ----------------------------------------------------------------------------------------------
# Inputs


def random_images(count, channels, size, seed):
    return np.random.default_rng(seed).integers(0, 256, (count, channels, size, size), dtype=np.uint8)


def smooth_images(count, channels, size, seed):
    """Blurred noise: images with structure at several scales, unlike white noise."""
    noise = np.random.default_rng(seed).normal(size=(count, channels, size, size))
    blurred = scipy.ndimage.gaussian_filter(noise, sigma=(0, 0, 2, 2), mode="wrap")
    scaled = 128 + blurred / blurred.std() * 50
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def lfw_faces_32():
    """The first 100 images of scikit-image's lfw_subset (faces), resized to 32x32 uint8 (N, 1, 32, 32)."""
    from PIL import Image
    from skimage import data

    faces = data.lfw_subset()[:100]
    resized = [np.asarray(Image.fromarray(face.astype(np.float32)).resize((32, 32), Image.Resampling.BILINEAR))
               for face in faces]
    return np.clip(np.rint(np.stack(resized) * 255), 0, 255).astype(np.uint8)[:, None]


def assert_results_close(actual, expected, rtol):
    assert list(actual) == list(expected)
    for key in expected:
        assert actual[key] == pytest.approx(expected[key], rel=rtol), key


# ----------------------------------------------------------------------------------------------
# Building blocks against the reference


def test_pyramid_resolutions():
    assert pyramid_resolutions(128) == [128, 64, 32, 16]
    assert pyramid_resolutions(1024) == [1024, 512, 256, 128, 64, 32, 16]
    assert pyramid_resolutions(16) == [16]
    assert pyramid_resolutions(48) == [48, 24]


@pytest.mark.parametrize("size", [8, 15])
def test_pyramid_rejects_small_images(size):
    with pytest.raises(DataError, match="at least 16x16"):
        pyramid_resolutions(size)


def test_pyramid_rejects_odd_halving():
    with pytest.raises(DataError, match="33 is odd"):
        pyramid_resolutions(66)


def test_pyr_down_and_up_match_scipy_mirror():
    images = random_images(3, 3, 32, seed=1).astype(np.float64)
    down = pyr_down(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(down, reference_pyr_down(images), rtol=0, atol=1e-9)
    up = pyr_up(torch.from_numpy(down)).numpy()
    np.testing.assert_allclose(up, reference_pyr_up(down), rtol=0, atol=1e-9)


def test_laplacian_pyramid_matches_reference():
    images = random_images(2, 1, 64, seed=2)
    levels = laplacian_pyramid(torch.from_numpy(images).float(), 3)
    expected = reference_pyramid(images, 3)
    assert [level.shape[-1] for level in levels] == [64, 32, 16]
    for level, reference in zip(levels, expected):
        np.testing.assert_allclose(level.numpy(), reference, rtol=0, atol=1e-3)


def test_patch_centres_cover_valid_range():
    centres = sample_patch_centres(100, 16, 128, torch.Generator().manual_seed(0))
    assert centres.shape == (100, 128, 2)
    # A 7x7 patch fits in a 16x16 level for centres 3..12, and each of the 10 values should appear.
    for axis in (0, 1):
        assert sorted(set(centres[:, :, axis].flatten().tolist())) == list(range(3, 13))


def test_patches_match_reference_layout():
    level = np.arange(2 * 3 * 16 * 16, dtype=np.float64).reshape(2, 3, 16, 16)
    centres = np.array([[[3, 3], [12, 12], [5, 9]], [[8, 4], [3, 12], [12, 3]]], dtype=np.int16)
    patches = extract_patches(torch.from_numpy(level), torch.from_numpy(centres)).numpy()
    expected = reference_patches(level, centres).reshape(6, -1)
    np.testing.assert_array_equal(patches, expected)
    # Descriptor 2 is image 0 at row 5, column 9; its first entry is channel 0 at row 2, column 6.
    assert patches[2, 0] == level[0, 0, 2, 6]


def test_normalization_matches_reference():
    patches = np.random.default_rng(3).normal(5.0, 3.0, size=(200, 3, 7, 7)) * np.array([1, 2, 5])[:, None, None]
    normalized = normalize_descriptors(torch.from_numpy(patches.reshape(200, -1)), channels=3).numpy()
    np.testing.assert_allclose(normalized, reference_normalize(patches), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("channels", [1, 3])
def test_swd_matches_reference_with_shared_draws(channels):
    a = smooth_images(6, channels, 32, seed=4)
    b = random_images(5, channels, 32, seed=5)
    b[:3] = smooth_images(3, channels, 32, seed=6)
    same_size_b = np.concatenate([b, smooth_images(1, channels, 32, seed=7)])
    generator = torch.Generator().manual_seed(8)
    for other in (same_size_b, b):
        draws = draw_random(len(a), len(other), 32, channels, generator, patches_per_image=16,
                            direction_repeats=2, directions_per_repeat=8)
        expected = reference_swd(a, other, draws.centres_a, draws.centres_b, draws.directions)
        actual = sliced_wasserstein_from_draws(a, other, draws)
        assert_results_close(actual, expected, rtol=1e-4)


# 2 sets x 8 images x 32 patches = 512 descriptors of 147 floats: 294 KiB per level, 2 KiB per direction.
# Three quarters of the budget is usable, so 2**18 bytes keeps no level, 600 000 keeps one level at
# a time and the default keeps both levels.
@pytest.mark.parametrize(("memory_budget", "expected_keeps"), [(2**18, []), (600_000, [[0], [1]]),
                                                               (None, [[0, 1]])])
def test_memory_budget_paths_match_reference(monkeypatch, memory_budget, expected_keeps):
    a, b = smooth_images(8, 3, 32, seed=9), random_images(8, 3, 32, seed=10)
    draws = draw_random(8, 8, 32, 3, torch.Generator().manual_seed(11), patches_per_image=32)
    expected = reference_swd(a, b, draws.centres_a, draws.centres_b, draws.directions)

    keeps = []
    original_keep = swd._DescriptorSource.keep
    monkeypatch.setattr(swd._DescriptorSource, "keep",
                        lambda source, levels: keeps.append(list(levels)) or original_keep(source, levels))
    options = {} if memory_budget is None else {"memory_budget": memory_budget}
    actual = sliced_wasserstein_from_draws(a, b, draws, **options)
    assert keeps == [level for level in expected_keeps for _ in "ab"]
    assert_results_close(actual, expected, rtol=1e-4)


def test_memory_budget_too_small():
    images = random_images(8, 3, 32, seed=20)
    with pytest.raises(ValueError, match="too small"):
        sliced_wasserstein(images, images, seed=0, memory_budget=1000)


# ----------------------------------------------------------------------------------------------
# 1-D distances


def test_sorted_distance_of_shifted_sets():
    values = torch.tensor([[3.0, 0.0, 2.0, 1.0]])
    shifted = values[:, [2, 0, 3, 1]] + 0.5
    distance = sorted_distances(values.sort(dim=1).values, shifted.sort(dim=1).values)
    assert distance.item() == pytest.approx(0.5, abs=1e-12)


def test_sliced_distance_of_shifted_vectors():
    # B is A shifted by t along e0, so along unit direction d every sorted gap is t * |d0|.
    vectors = torch.tensor(np.random.default_rng(12).normal(size=(50, 3)), dtype=torch.float32)
    shift = 2.0
    shifted = vectors.flip(0) + torch.tensor([shift, 0.0, 0.0])
    directions = torch.tensor([[[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], [[0.0, 0.0, 1.0], [0.0, 0.6, -0.8]]])
    # Repeat 1: gaps 2 and 1.2 average 1.6; repeat 2: both gaps 0. The mean over repeats is 0.8.
    assert sliced_distance(vectors, shifted, directions) == pytest.approx(0.8, abs=1e-6)


def test_sorted_distance_of_unequal_sizes():
    # Uniform on {0, 1} against uniform on {0, 1, 2}: the CDFs differ by 1/6 on [0, 1) and 1/3 on [1, 2).
    distance = sorted_distances(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0, 2.0]]))
    assert distance.item() == pytest.approx(0.5, abs=1e-12)

    rng = np.random.default_rng(13)
    a, b = np.sort(rng.normal(size=37)), np.sort(rng.normal(0.3, 1.5, size=52))
    distance = sorted_distances(torch.tensor(a[None]), torch.tensor(b[None]))
    assert distance.item() == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-12)


def test_quantile_pairing_of_equal_sizes_is_identity():
    index_a, index_b, weight = quantile_pairing(5, 5)
    assert index_a.tolist() == [0, 1, 2, 3, 4]
    assert index_b.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(weight.numpy(), 0.2)


# ----------------------------------------------------------------------------------------------
# Whole metric


def test_swd_noise_far_above_real_noise_floor(lfw_faces_32):
    # With 50 images per set the floor is high (about 29 at 32x32 and 67 at 16x16 for seeds 0-2),
    # and noise scores 3.4 to 4.6 times as much at every level.
    faces = lfw_faces_32
    noise = random_images(50, 1, 32, seed=14)
    floor = sliced_wasserstein(faces[:50], faces[50:], seed=0)
    to_noise = sliced_wasserstein(faces[:50], noise, seed=0)
    assert list(floor) == ["swd/32", "swd/16", "swd/avg"]
    for key in floor:
        assert to_noise[key] > 3 * floor[key], (key, floor[key], to_noise[key])


def test_swd_of_identical_sets_is_small(lfw_faces_32):
    # The same images with different patch centres: only sampling noise remains.
    faces = lfw_faces_32[:50]
    result = sliced_wasserstein(faces, faces.copy(), seed=1)
    to_noise = sliced_wasserstein(faces, random_images(50, 1, 32, seed=15), seed=1)
    assert result["swd/avg"] < to_noise["swd/avg"] / 5


def test_swd_seed_repeatable():
    a, b = smooth_images(6, 3, 32, seed=16), random_images(7, 3, 32, seed=17)
    first = sliced_wasserstein(a, b, seed=123, patches_per_image=16)
    again = sliced_wasserstein(torch.from_numpy(a), torch.from_numpy(b), seed=123, patches_per_image=16)
    other = sliced_wasserstein(a, b, seed=124, patches_per_image=16)
    assert first == again
    assert first != other
    from_generator = sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(123), patches_per_image=16)
    assert from_generator == first


def test_swd_input_errors():
    images = random_images(4, 3, 32, seed=18)
    with pytest.raises(DataError, match="uint8"):
        sliced_wasserstein(images.astype(np.float32), images, seed=0)
    with pytest.raises(DataError, match="C = 1 or 3"):
        sliced_wasserstein(images[:, :2], images[:, :2], seed=0)
    with pytest.raises(DataError, match="differ in shape"):
        sliced_wasserstein(images, images[:, :1], seed=0)
    with pytest.raises(DataError, match="at least 16x16"):
        sliced_wasserstein(images[:, :, :8, :8], images[:, :, :8, :8], seed=0)
    with pytest.raises(ValueError, match="either seed or generator"):
        sliced_wasserstein(images, images, seed=0, generator=torch.Generator())


def test_constant_channel_gives_nan():
    constant = np.full((4, 1, 16, 16), 7, dtype=np.uint8)
    result = sliced_wasserstein(constant, random_images(4, 1, 16, seed=19), seed=0)
    assert np.isnan(result["swd/16"])


# ----------------------------------------------------------------------------------------------
# Command line


@pytest.fixture(scope="module")
def face_sets(lfw_faces_32, tmp_path_factory):
    """The 100 faces as a prepared dataset, and faces 50-99 as a folder of PNG files."""
    from PIL import Image

    from gan.dataset import write_dataset

    root = tmp_path_factory.mktemp("face_sets")
    write_dataset(root / "dataset", lfw_faces_32, source="lfw_subset faces")
    folder = root / "pngs"
    folder.mkdir()
    for index, face in enumerate(lfw_faces_32[50:]):
        Image.fromarray(face[0]).save(folder / f"face-{index:03d}.png")
    return root / "dataset", folder


def run_cli(capsys, *argv):
    from orchestrator.cli import main

    code = main(["metrics", "swd", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_dataset_against_png_folder(capsys, face_sets, lfw_faces_32):
    dataset, folder = face_sets
    code, out, _ = run_cli(capsys, dataset, folder, "--images", 40, "--seed", 5, "--output", "json")
    assert code == 0
    # The command draws from a generator seeded with --seed, like sliced_wasserstein(seed=5).
    draws = draw_random(40, 40, 32, 1, torch.Generator().manual_seed(5))
    expected = reference_swd(lfw_faces_32[:40], lfw_faces_32[50:90], draws.centres_a, draws.centres_b,
                             draws.directions)
    assert_results_close(json.loads(out), expected, rtol=1e-4)


def test_cli_dataset_level_and_table(capsys, face_sets):
    dataset, _ = face_sets
    code, out, _ = run_cli(capsys, dataset, dataset, "--resolution", 16, "--seed", 0, "--images", 20)
    assert code == 0
    assert "swd/16" in out
    assert "swd/avg" in out
    assert "swd/32" not in out


# Each case builds the arguments from (dataset folder, PNG folder, empty temporary folder).
@pytest.mark.parametrize(("make_arguments", "message"), [
    pytest.param(lambda data, pngs, empty: [data, empty / "missing"], "folder not found", id="missing"),
    pytest.param(lambda data, pngs, empty: [data, empty], "no dataset.json and no .png", id="empty"),
    pytest.param(lambda data, pngs, empty: [data, data, "--images", 101],
                 "contains 100 images, fewer than --images 101", id="too-few-images"),
    pytest.param(lambda data, pngs, empty: [data, data, "--resolution", 64], "no 64x64 level", id="no-level"),
    pytest.param(lambda data, pngs, empty: [data, pngs, "--resolution", 16], "not --resolution 16",
                 id="folder-size"),
    pytest.param(lambda data, pngs, empty: [data, data, "--resolution", 8], "at least 16x16", id="too-small"),
])
def test_cli_errors_exit_2(capsys, face_sets, tmp_path, make_arguments, message):
    code, out, err = run_cli(capsys, *make_arguments(*face_sets, tmp_path))
    assert code == 2
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_cli_rejects_mixed_channels(capsys, face_sets, tmp_path):
    from PIL import Image

    dataset, _ = face_sets
    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "colour.png")
    code, _, err = run_cli(capsys, dataset, tmp_path, "--seed", 0)
    assert code == 2
    assert "grayscale 32x32" in err
    assert "RGB 32x32" in err
