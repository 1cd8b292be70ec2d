"""Conversion of network images to uint8 and image-grid PNG files."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

# The official code maps the network range [-1, 1] to [0, 255] as x * 127.5 + 127.5, then rounds
# (half to even, like tf.round) and saturates (tkarras/progressive_growing_of_gans tfutil.py).
UINT8_SCALE = 127.5
UINT8_OFFSET = 127.5


def to_uint8(images: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Convert images in [-1, 1] to uint8 [0, 255]: round(x * 127.5 + 127.5), clamped.

    Returns the same kind of array as given (torch tensor on the same device, or numpy array).
    Raises ValueError on NaN, which has no uint8 value.
    """
    if isinstance(images, np.ndarray):
        return to_uint8(torch.from_numpy(images)).numpy()
    if torch.isnan(images).any():
        count = int(torch.isnan(images).sum())
        raise ValueError(f"cannot convert images to uint8: {count} values are NaN")
    scaled = images.to(torch.float32) * UINT8_SCALE + UINT8_OFFSET
    return torch.round(scaled).clamp_(0, 255).to(torch.uint8)


def image_grid(images: torch.Tensor | np.ndarray, columns: int) -> np.ndarray:
    """Tile uint8 images (N, C, H, W), row by row, into one (rows*H, columns*W, C) array.

    Cells after the last image in the final row stay black.
    """
    images = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {images.shape}")
    count, channels, height, width = images.shape
    if channels not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {channels}")
    if count == 0 or columns < 1:
        raise ValueError(f"need at least one image and one column, got {count} images, {columns} columns")

    columns = min(columns, count)
    rows = math.ceil(count / columns)
    grid = np.zeros((rows * height, columns * width, channels), dtype=np.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        cell = images[index].transpose(1, 2, 0)
        grid[row * height:(row + 1) * height, column * width:(column + 1) * width] = cell
    return grid


def save_image_grid(images: torch.Tensor | np.ndarray, path: str | os.PathLike, columns: int) -> Path:
    """Write uint8 images (N, C, H, W) as one PNG grid with `columns` images per row.

    The file appears whole or not at all: it is written under a temporary name in the same
    folder and then renamed. Returns the path written.
    """
    from PIL import Image

    grid = image_grid(images, columns)
    picture = Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            picture.save(file, format="PNG")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
