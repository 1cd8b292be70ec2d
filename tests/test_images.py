"""uint8 conversion of network images and the PNG grid writer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gan.images import save_image_grid, to_uint8


def test_to_uint8_matches_official_mapping():
    values = torch.tensor([-1.5, -1.0, -0.999, 0.0, 1 / 255, 0.5, 0.999, 1.0, 3.0], dtype=torch.float64)
    expected = np.clip(np.rint(values.numpy() * 127.5 + 127.5), 0, 255).astype(np.uint8)

    result = to_uint8(values)
    assert result.dtype == torch.uint8
    np.testing.assert_array_equal(result.numpy(), expected)
    assert result.tolist()[:4] == [0, 0, 0, 128]
    assert result.tolist()[-2:] == [255, 255]


def test_to_uint8_numpy_and_nan():
    result = to_uint8(np.array([[-1.0, 1.0]], dtype=np.float32))
    assert isinstance(result, np.ndarray)
    assert result.tolist() == [[0, 255]]
    with pytest.raises(ValueError, match="1 values are NaN"):
        to_uint8(torch.tensor([0.0, float("nan")]))


def test_save_image_grid_layout(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 4, 6), dtype=np.uint8)
    path = save_image_grid(torch.from_numpy(images), tmp_path / "grids" / "grid.png", columns=3)

    grid = np.asarray(Image.open(path))
    assert grid.shape == (8, 18, 3)
    for index in range(5):
        row, column = divmod(index, 3)
        cell = grid[row * 4:(row + 1) * 4, column * 6:(column + 1) * 6]
        np.testing.assert_array_equal(cell, images[index].transpose(1, 2, 0))
    assert not grid[4:, 12:].any()
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]


def test_save_image_grid_grayscale(tmp_path):
    images = np.arange(2 * 1 * 2 * 2, dtype=np.uint8).reshape(2, 1, 2, 2)
    path = save_image_grid(images, tmp_path / "gray.png", columns=8)

    picture = Image.open(path)
    assert picture.mode == "L"
    np.testing.assert_array_equal(np.asarray(picture), np.array([[0, 1, 4, 5], [2, 3, 6, 7]]))
