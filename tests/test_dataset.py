"""Dataset format: levels, manifest, atomic writes, reading errors, config checks, real minibatches."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from gan.config import ModelConfig
from gan.dataset import (RealSampler, check_dataset, open_dataset, process_reals, write_dataset)
from gan.errors import DataError


def random_images(count: int, channels: int, resolution: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, channels, resolution, resolution), dtype=np.uint8)


def block_mean_level(full: np.ndarray, resolution: int) -> np.ndarray:
    """Reference level: each pixel is the float64 mean of its whole block of full-res pixels."""
    count, channels, full_resolution, _ = full.shape
    block = full_resolution // resolution
    blocks = full.astype(np.float64).reshape(count, channels, resolution, block, resolution, block)
    return np.clip(np.rint(blocks.mean(axis=(3, 5))), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Writing


def test_levels_equal_block_means(tmp_path):
    full = random_images(5, 3, 32)
    write_dataset(tmp_path / "data", full)
    dataset = open_dataset(tmp_path / "data")

    assert dataset.resolutions == [4, 8, 16, 32]
    for resolution in (4, 8, 16, 32):
        level = dataset.level(resolution)
        assert level.dtype == np.uint8
        np.testing.assert_array_equal(level, block_mean_level(full, resolution), err_msg=f"level {resolution}")


def test_levels_rounded_once(tmp_path):
    # The four 2x2 blocks of the top-left 4x4 block have means 0.5, 0.5, 0.5 and 1.5.
    # Rounded once: mean 0.75 -> 1. Rounded per level: 0, 0, 0, 2 -> mean 0.5 -> 0 (half to even).
    full = np.zeros((1, 1, 16, 16), dtype=np.uint8)
    full[0, 0, :4, :4] = [[0, 1, 0, 1], [0, 1, 0, 1], [0, 1, 1, 2], [0, 1, 1, 2]]
    write_dataset(tmp_path / "data", full)
    dataset = open_dataset(tmp_path / "data")

    assert dataset.level(8)[0, 0, 0, 0] == 0
    assert dataset.level(8)[0, 0, 1, 1] == 2
    assert dataset.level(4)[0, 0, 0, 0] == 1


def test_levels_random_rounded_once(tmp_path):
    full = random_images(8, 1, 16, seed=3)
    write_dataset(tmp_path / "data", full)
    stored = open_dataset(tmp_path / "data").level(4)

    level8 = block_mean_level(full, 8)
    rounded_twice = block_mean_level(level8, 4)
    assert np.any(rounded_twice != stored)
    np.testing.assert_array_equal(stored, block_mean_level(full, 4))


def test_manifest_fields(tmp_path):
    full = random_images(7, 1, 16, seed=1)
    manifest = write_dataset(tmp_path / "data", full, source="unit test")
    on_disk = json.loads((tmp_path / "data" / "dataset.json").read_text())

    expected_hash = hashlib.sha256(full.tobytes() + b"shape=7,1,16,16").hexdigest()
    assert on_disk == manifest
    assert on_disk["format"] == "progan-dataset"
    assert on_disk["version"] == 1
    assert on_disk["resolutions"] == [4, 8, 16]
    assert on_disk["channels"] == 1
    assert on_disk["count"] == 7
    assert on_disk["content_sha256"] == expected_hash
    assert on_disk["levels"] == {"4": "level-0004.npy", "8": "level-0008.npy", "16": "level-0016.npy"}
    assert on_disk["source"] == "unit test"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "dataset.json", "level-0004.npy", "level-0008.npy", "level-0016.npy"]


def test_level_files_are_plain_npy(tmp_path):
    full = random_images(3, 3, 8)
    write_dataset(tmp_path / "data", full)

    loaded = np.load(tmp_path / "data" / "level-0008.npy")
    assert loaded.shape == (3, 3, 8, 8)
    np.testing.assert_array_equal(loaded, full)
    mapped = open_dataset(tmp_path / "data").level(8)
    assert isinstance(mapped, np.memmap)
    assert not mapped.flags.writeable


def test_chunks_equal_one_array(tmp_path):
    full = random_images(9, 3, 16, seed=2)
    whole = write_dataset(tmp_path / "whole", full)
    chunked = write_dataset(tmp_path / "chunked", iter([full[:4], full[4:4], full[4:]]))

    assert chunked["content_sha256"] == whole["content_sha256"]
    assert chunked["count"] == 9
    for resolution in (4, 8, 16):
        name = f"level-{resolution:04d}.npy"
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "chunked" / name).read_bytes()


def test_memory_split_keeps_levels(tmp_path, monkeypatch):
    import gan.dataset

    # Force one image per float64 batch; the result must not depend on the split.
    monkeypatch.setattr(gan.dataset, "FLOAT_WORK_VALUES", 1)
    full = random_images(4, 1, 16, seed=4)
    write_dataset(tmp_path / "data", full)
    np.testing.assert_array_equal(open_dataset(tmp_path / "data").level(4), block_mean_level(full, 4))


def test_rejects_bad_image_arrays(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_dataset(tmp_path / "a", np.zeros((2, 1, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="power-of-two"):
        write_dataset(tmp_path / "b", np.zeros((2, 1, 12, 12), dtype=np.uint8))
    with pytest.raises(ValueError, match="image shape"):
        write_dataset(tmp_path / "c", iter([np.zeros((2, 1, 8, 8), np.uint8), np.zeros((2, 3, 8, 8), np.uint8)]))
    with pytest.raises(DataError, match="no images"):
        write_dataset(tmp_path / "d", iter([]))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_refuses_non_empty_dest(tmp_path):
    dest = tmp_path / "data"
    write_dataset(dest, random_images(2, 1, 8, seed=0))
    with pytest.raises(DataError, match="not empty"):
        write_dataset(dest, random_images(2, 1, 8, seed=1))
    np.testing.assert_array_equal(open_dataset(dest).level(8), random_images(2, 1, 8, seed=0))

    write_dataset(dest, random_images(3, 1, 8, seed=1), overwrite=True)
    np.testing.assert_array_equal(open_dataset(dest).level(8), random_images(3, 1, 8, seed=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_overwrite_replaces_only_datasets(tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not a dataset folder"):
        write_dataset(other, random_images(2, 1, 8), overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"

    empty = tmp_path / "empty"
    empty.mkdir()
    write_dataset(empty, random_images(2, 1, 8))
    assert open_dataset(empty).count == 2


def test_interrupted_write_leaves_nothing(tmp_path):
    def chunks():
        yield random_images(2, 3, 16)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "data", chunks())
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_old(tmp_path):
    dest = tmp_path / "data"
    old = random_images(2, 1, 8, seed=5)
    write_dataset(dest, old)

    def chunks():
        yield random_images(4, 1, 8, seed=6)
        raise RuntimeError("decoder failed")

    with pytest.raises(RuntimeError, match="decoder failed"):
        write_dataset(dest, chunks(), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    np.testing.assert_array_equal(open_dataset(dest).level(8), old)


# ----------------------------------------------------------------------------------------------
# Reading


@pytest.fixture
def small_dataset(tmp_path):
    path = tmp_path / "data"
    write_dataset(path, random_images(6, 1, 16, seed=7))
    return path


def test_open_missing_folder(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        open_dataset(tmp_path / "absent")


def test_open_missing_manifest(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="no dataset.json"):
        open_dataset(tmp_path / "data")


def test_open_malformed_manifest(small_dataset):
    (small_dataset / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="invalid JSON"):
        open_dataset(small_dataset)


@pytest.mark.parametrize("key, value, message", [
    ("format", "tfrecords", "format"),
    ("version", 2, "version"),
    ("resolutions", [8, 16], "resolutions"),
    ("channels", 2, "channels"),
    ("count", 0, "count"),
    ("content_sha256", "abc", "content_sha256"),
    ("levels", {"4": "../x.npy", "8": "a.npy", "16": "b.npy"}, "levels"),
])
def test_open_invalid_manifest_field(small_dataset, key, value, message):
    manifest = json.loads((small_dataset / "dataset.json").read_text())
    manifest[key] = value
    (small_dataset / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=f"dataset.json: {message}:"):
        open_dataset(small_dataset)


def test_open_missing_level_file(small_dataset):
    (small_dataset / "level-0008.npy").unlink()
    with pytest.raises(DataError, match="level-0008.npy: level file listed in dataset.json is missing"):
        open_dataset(small_dataset)


def test_level_with_wrong_shape(small_dataset):
    np.save(small_dataset / "level-0004.npy", np.zeros((5, 1, 4, 4), dtype=np.uint8))
    dataset = open_dataset(small_dataset)
    with pytest.raises(DataError, match=r"lists uint8 \(6, 1, 4, 4\)"):
        dataset.level(4)
    with pytest.raises(DataError, match="no 32x32 level"):
        dataset.level(32)


def test_check_dataset_names_keys(small_dataset):
    dataset = open_dataset(small_dataset)
    check_dataset(dataset, ModelConfig(resolution=16, channels=1))
    check_dataset(dataset, ModelConfig(resolution=8, channels=1))

    with pytest.raises(DataError, match="^model.resolution: 32 .*data.path s3://bucket/faces .*levels 4..16"):
        check_dataset(dataset, ModelConfig(resolution=32, channels=1), data_path="s3://bucket/faces")
    with pytest.raises(DataError, match=f"^model.channels: 3 .*data.path {small_dataset}.* 1 channel"):
        check_dataset(dataset, ModelConfig(resolution=16, channels=3))


# ----------------------------------------------------------------------------------------------
# Real minibatches


def test_sampler_draws_dataset_rows(small_dataset):
    dataset = open_dataset(small_dataset)
    level = dataset.level(8)
    first = RealSampler(dataset, torch.Generator().manual_seed(11)).sample(32, 8)
    second = RealSampler(dataset, torch.Generator().manual_seed(11)).sample(32, 8)

    assert first.dtype == torch.uint8
    assert first.shape == (32, 1, 8, 8)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    rows = {level[i].tobytes(): i for i in range(dataset.count)}
    drawn = [rows.get(image.numpy().tobytes()) for image in first]
    assert None not in drawn
    assert len(set(drawn)) > 1


def mapped_float64(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64) / 127.5 - 1.0


def up2_avgpool2(x: np.ndarray) -> np.ndarray:
    count, channels, resolution, _ = x.shape
    half = resolution // 2
    pooled = x.reshape(count, channels, half, 2, half, 2).mean(axis=(3, 5))
    return pooled.repeat(2, axis=2).repeat(2, axis=3)


def test_process_reals_maps_to_unit_range():
    batch = random_images(4, 3, 8, seed=8)
    batch[0, 0, 0, 0], batch[0, 0, 0, 1] = 0, 255
    result = process_reals(torch.from_numpy(batch), lod=1.0, mirror=False, generator=torch.Generator())

    assert result.dtype == torch.float32
    assert result[0, 0, 0, 0] == -1.0
    assert result[0, 0, 0, 1] == 1.0
    np.testing.assert_allclose(result.numpy(), mapped_float64(batch), rtol=0, atol=1e-6)


@pytest.mark.parametrize("lod", [0.25, 0.5, 2.75, 1 - 1e-9])
def test_process_reals_fades(lod):
    batch = random_images(3, 3, 16, seed=9)
    result = process_reals(torch.from_numpy(batch), lod=lod, mirror=False, generator=torch.Generator())

    x = mapped_float64(batch)
    fraction = lod - np.floor(lod)
    expected = x + (up2_avgpool2(x) - x) * fraction
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-5)


def test_process_reals_fade_end_is_coarse():
    batch = random_images(2, 1, 8, seed=10)
    result = process_reals(torch.from_numpy(batch), lod=1 - 1e-9, mirror=False, generator=torch.Generator())
    np.testing.assert_allclose(result.numpy(), up2_avgpool2(mapped_float64(batch)), rtol=0, atol=1e-5)
    # Each 2x2 block is constant at the fade start.
    assert np.allclose(result.numpy()[..., ::2, ::2], result.numpy()[..., 1::2, 1::2], atol=1e-5)


def test_process_reals_mirror_flips_half_exactly():
    count = 2000
    batch = torch.from_numpy(random_images(count, 3, 8, seed=12))
    generator = torch.Generator().manual_seed(1000)
    result = process_reals(batch, lod=0.0, mirror=True, generator=generator)

    plain = batch.to(torch.float32) / 127.5 - 1.0
    flipped = plain.flip(-1)
    is_plain = (result == plain).flatten(1).all(1)
    is_flipped = (result == flipped).flatten(1).all(1)
    assert bool((is_plain ^ is_flipped).all())
    # Binomial(2000, 0.5) has a standard deviation of 22.4; 100 is about 4.5 of them.
    assert 900 <= int(is_flipped.sum()) <= 1100

    again = process_reals(batch, lod=0.0, mirror=True, generator=torch.Generator().manual_seed(1000))
    torch.testing.assert_close(again, result, rtol=0, atol=0)


def test_process_reals_without_mirror_leaves_generator():
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    batch = torch.from_numpy(random_images(4, 1, 8))
    result = process_reals(batch, lod=0.0, mirror=False, generator=generator)

    torch.testing.assert_close(result, batch.to(torch.float32) / 127.5 - 1.0, rtol=0, atol=0)
    assert torch.equal(generator.get_state(), state)
