"""Multi-resolution image dataset on disk, and the real minibatches that training draws from it.

A dataset is a folder holding one uint8 NumPy array (N, C, r, r) per resolution r = 4, 8, ..., R
(`level-0004.npy`, ...) and a `dataset.json` manifest. Every level is computed from the full-resolution
image in float64 by repeated 2x2 box averaging and rounded once, as the official ProGAN dataset tool
does (tkarras/progressive_growing_of_gans, dataset_tool.py), so no rounding error builds up across levels.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gan.errors import DataError

FORMAT_NAME = "progan-dataset"
FORMAT_VERSION = 1
MANIFEST_NAME = "dataset.json"
MIN_RESOLUTION = 4
# Upper bound on float64 values box-averaged at once (16 Mi values = 128 MiB), so 1024x1024 images
# are processed a few at a time.
FLOAT_WORK_VALUES = 16 * 2**20


class EmptyDatasetError(DataError):
    """write_dataset received no images."""


def level_file_name(resolution: int) -> str:
    return f"level-{resolution:04d}.npy"


def downscale_levels(images: np.ndarray) -> dict[int, np.ndarray]:
    """Return {resolution: uint8 (N, C, r, r)} for every level from the full resolution down to 4.

    Each level is the float64 2x2 box average of the previous float64 level, rounded half to even
    (np.rint) and clipped only when converted to uint8.
    """
    count, channels, resolution, _ = images.shape
    levels = {resolution: images}
    exact = images.astype(np.float64)
    while resolution > MIN_RESOLUTION:
        half = resolution // 2
        exact = exact.reshape(count, channels, half, 2, half, 2).mean(axis=(3, 5))
        levels[half] = np.clip(np.rint(exact), 0, 255).astype(np.uint8)
        resolution = half
    return levels


def content_sha256(images: np.ndarray) -> str:
    """Return the dataset identity: SHA-256 of the full-resolution uint8 bytes (C order), then the
    ASCII text `shape=N,C,R,R`."""
    hasher = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    hasher.update(_shape_text(images.shape))
    return hasher.hexdigest()


def _shape_text(shape: tuple[int, ...]) -> bytes:
    return ("shape=" + ",".join(str(size) for size in shape)).encode("ascii")


# ----------------------------------------------------------------------------------------------
# Writing


class _LevelWriter:
    """Appends uint8 images to one .npy file whose first dimension is filled in on close.

    NumPy (checked with 2.4) pads the .npy header so that the first dimension can grow to 21 digits
    without changing the header length, so the header is rewritten in place once the count is known.
    """

    def __init__(self, path: Path, image_shape: tuple[int, int, int]):
        self.path = path
        self.image_shape = image_shape
        self.count = 0
        self.file = open(path, "wb")
        self._write_header()
        self.data_offset = self.file.tell()

    def _write_header(self) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": (self.count, *self.image_shape)}
        np.lib.format.write_array_header_1_0(self.file, header)

    def append(self, images: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(images).tobytes())
        self.count += len(images)

    def finish(self) -> None:
        self.file.seek(0)
        self._write_header()
        if self.file.tell() != self.data_offset:
            raise RuntimeError(f"{self.path}: .npy header changed length when the count was written")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def close(self) -> None:
        self.file.close()


def write_dataset(dest: str | os.PathLike, images: np.ndarray | Iterable[np.ndarray], *,
                  source: str = "", overwrite: bool = False) -> dict[str, Any]:
    """Write a dataset folder at `dest` from uint8 images (N, C, R, R), or from an iterable of such
    chunks with equal C and R; returns the manifest.

    All files are written into a temporary folder next to `dest`, which is renamed to `dest` only
    when complete, so an exception or interrupt leaves `dest` as it was. An existing non-empty `dest`
    raises DataError unless `overwrite` is set, and even then only a dataset folder (one that contains
    a dataset.json) is replaced.
    """
    dest = Path(dest)
    _check_destination(dest, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    chunks = [images] if isinstance(images, np.ndarray) else images

    staging = _sibling_name(dest, "partial")
    # mkdir, unlike tempfile.mkdtemp, leaves the umask's permissions on the folder that becomes dest.
    staging.mkdir()
    try:
        manifest = _write_levels(staging, chunks, source)
        _write_json(staging / MANIFEST_NAME, manifest)
        _commit(staging, dest, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write_levels(folder: Path, chunks: Iterable[np.ndarray], source: str) -> dict[str, Any]:
    writers: dict[int, _LevelWriter] = {}
    hasher = hashlib.sha256()
    shape: tuple[int, int, int] | None = None
    try:
        for chunk in chunks:
            shape = _check_chunk(chunk, shape)
            if not writers:
                writers = _open_writers(folder, shape)
            for part in _split_for_memory(chunk):
                hasher.update(np.ascontiguousarray(part).tobytes())
                for resolution, level in downscale_levels(part).items():
                    writers[resolution].append(level)
        count = writers[shape[1]].count if writers else 0
        if count == 0:
            raise EmptyDatasetError("no images to write")
        for writer in writers.values():
            writer.finish()
    finally:
        for writer in writers.values():
            writer.close()

    channels, resolution, _ = shape
    hasher.update(_shape_text((count, channels, resolution, resolution)))
    resolutions = sorted(writers)
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "resolutions": resolutions,
        "channels": channels,
        "count": count,
        "content_sha256": hasher.hexdigest(),
        "levels": {str(r): level_file_name(r) for r in resolutions},
        "source": source,
    }


def _check_chunk(chunk: np.ndarray, shape: tuple[int, int, int] | None) -> tuple[int, int, int]:
    if not isinstance(chunk, np.ndarray) or chunk.dtype != np.uint8 or chunk.ndim != 4:
        kind = f"{chunk.dtype} {chunk.shape}" if isinstance(chunk, np.ndarray) else type(chunk).__name__
        raise ValueError(f"expected uint8 images (N, C, R, R), got {kind}")
    _, channels, height, width = chunk.shape
    if shape is None:
        if height != width or not is_power_of_two(height) or height < MIN_RESOLUTION:
            raise ValueError(f"images must be square with a power-of-two side >= {MIN_RESOLUTION},"
                             f" got {height}x{width}")
        if channels not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got {channels}")
        return channels, height, width
    if chunk.shape[1:] != shape:
        raise ValueError(f"all chunks must have the image shape {shape}, got {chunk.shape[1:]}")
    return shape


def _open_writers(folder: Path, shape: tuple[int, int, int]) -> dict[int, _LevelWriter]:
    channels, resolution, _ = shape
    writers = {}
    while resolution >= MIN_RESOLUTION:
        path = folder / level_file_name(resolution)
        writers[resolution] = _LevelWriter(path, (channels, resolution, resolution))
        resolution //= 2
    return writers


def _split_for_memory(chunk: np.ndarray) -> Iterator[np.ndarray]:
    per_image = max(1, int(np.prod(chunk.shape[1:])))
    step = max(1, FLOAT_WORK_VALUES // per_image)
    for start in range(0, len(chunk), step):
        yield chunk[start:start + step]


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as file:
        json.dump(data, file, indent=2)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())


def _sibling_name(dest: Path, suffix: str) -> Path:
    """Return an unused hidden name next to `dest`, so that renames stay on one file system."""
    return dest.parent / f".{dest.name}.{secrets.token_hex(6)}.{suffix}"


def _check_destination(dest: Path, overwrite: bool) -> None:
    if not dest.exists():
        return
    if not dest.is_dir():
        raise DataError(f"{dest}: exists and is not a folder; choose another destination")
    if not any(dest.iterdir()):
        return
    if not overwrite:
        raise DataError(f"{dest}: folder exists and is not empty; use --overwrite to replace a dataset there")
    if not (dest / MANIFEST_NAME).is_file():
        raise DataError(f"{dest}: not a dataset folder (no {MANIFEST_NAME}), so --overwrite does not"
                        " replace it; remove it yourself or choose another destination")


def _commit(staging: Path, dest: Path, overwrite: bool) -> None:
    """Rename the finished staging folder to `dest`, replacing an empty folder or an old dataset."""
    _check_destination(dest, overwrite)
    if not dest.exists():
        os.rename(staging, dest)
        return
    if not any(dest.iterdir()):
        dest.rmdir()
        os.rename(staging, dest)
        return

    # Move the old dataset aside first, so that a failed rename can put it back.
    old = _sibling_name(dest, "old")
    os.rename(dest, old)
    try:
        os.rename(staging, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old)


# ----------------------------------------------------------------------------------------------
# Reading


class Dataset:
    """A prepared dataset folder; levels are memory-mapped on first use."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self.count: int = manifest["count"]
        self.channels: int = manifest["channels"]
        self.resolutions: list[int] = list(manifest["resolutions"])
        self.max_resolution: int = max(self.resolutions)
        self._levels: dict[int, np.ndarray] = {}

    def __repr__(self) -> str:
        return (f"Dataset({str(self.path)!r}, count={self.count}, channels={self.channels},"
                f" resolutions={self.resolutions})")

    def level(self, resolution: int) -> np.ndarray:
        """Return the read-only memory-mapped uint8 array (N, C, r, r) of one resolution."""
        if resolution in self._levels:
            return self._levels[resolution]
        if resolution not in self.resolutions:
            raise DataError(f"{self.path}: no {resolution}x{resolution} level; the dataset has"
                            f" {_describe_levels(self.resolutions)}")
        file = self.path / self.manifest["levels"][str(resolution)]
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(f"{file}: unreadable level file: {error}") from error
        expected = (self.count, self.channels, resolution, resolution)
        if array.dtype != np.uint8 or array.shape != expected:
            raise DataError(f"{file}: invalid level file: {MANIFEST_NAME} lists uint8 {expected},"
                            f" found {array.dtype} {array.shape}; prepare the dataset again")
        self._levels[resolution] = array
        return array


def open_dataset(path: str | os.PathLike) -> Dataset:
    """Open a local dataset folder written by write_dataset; raises DataError naming what is wrong."""
    if str(path).startswith("s3://"):
        raise DataError(f"{path}: open_dataset reads local folders only; copy the dataset to local disk first")
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        raise DataError(f"{path}: dataset folder not found")
    if not manifest_path.is_file():
        raise DataError(f"{path}: no {MANIFEST_NAME}, so it is not a prepared dataset;"
                        f" create one with `progan prepare-data SRC {path}`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{manifest_path}: invalid JSON: {error}") from error

    _check_manifest(manifest, manifest_path)
    for name in manifest["levels"].values():
        if not (path / name).is_file():
            raise DataError(f"{path / name}: level file listed in {MANIFEST_NAME} is missing;"
                            " prepare the dataset again")
    return Dataset(path, manifest)


def _check_manifest(manifest: Any, where: Path) -> None:
    def fail(key: str, problem: str) -> DataError:
        return DataError(f"{where}: {key}: {problem}")

    if not isinstance(manifest, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(manifest).__name__}")
    for key in ("format", "version", "resolutions", "channels", "count", "content_sha256", "levels"):
        if key not in manifest:
            raise fail(key, "missing")
    if manifest["format"] != FORMAT_NAME:
        raise fail("format", f"expected {FORMAT_NAME!r}, got {manifest['format']!r}")
    if manifest["version"] != FORMAT_VERSION:
        raise fail("version", f"unsupported version {manifest['version']!r}; this progan reads version {FORMAT_VERSION}")

    resolutions = manifest["resolutions"]
    top = resolutions[-1] if isinstance(resolutions, list) and resolutions else None
    if not _is_int(top) or not is_power_of_two(top) or top < MIN_RESOLUTION \
            or resolutions != [2**k for k in range(2, int(math.log2(top)) + 1)]:
        raise fail("resolutions", f"expected [4, 8, ..., R] with R a power of two, got {resolutions!r}")
    if manifest["channels"] not in (1, 3) or not _is_int(manifest["channels"]):
        raise fail("channels", f"expected 1 or 3, got {manifest['channels']!r}")
    if not _is_int(manifest["count"]) or manifest["count"] < 1:
        raise fail("count", f"expected a positive integer, got {manifest['count']!r}")
    digest = manifest["content_sha256"]
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise fail("content_sha256", f"expected 64 hex digits, got {digest!r}")

    levels = manifest["levels"]
    if not isinstance(levels, dict) or sorted(levels) != sorted(str(r) for r in resolutions):
        raise fail("levels", f"expected one file per resolution {resolutions}, got {levels!r}")
    for name in levels.values():
        # Plain file names only, so that a manifest cannot point outside its folder.
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise fail("levels", f"expected a file name inside the dataset folder, got {name!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe_levels(resolutions: list[int]) -> str:
    return f"levels {resolutions[0]}..{resolutions[-1]}"


def check_dataset(dataset: Dataset, model_config: Any, data_path: str | None = None) -> None:
    """Raise DataError unless the dataset has the model's final resolution and channel count.

    `model_config` is a ModelConfig. `data_path`, the config's data.path, is the name used in
    messages when it differs from the local folder that was opened (an s3:// URI cached locally).
    """
    where = data_path or str(dataset.path)
    resolution = model_config.resolution
    if resolution not in dataset.resolutions:
        raise DataError(f"model.resolution: {resolution} needs a {resolution}x{resolution} level, but the"
                        f" dataset at data.path {where} has {_describe_levels(dataset.resolutions)};"
                        f" set model.resolution to at most {dataset.max_resolution} or prepare the data"
                        f" with --resolution {resolution}")
    if model_config.channels != dataset.channels:
        raise DataError(f"model.channels: {model_config.channels} does not match the dataset at data.path"
                        f" {where}, which has {dataset.channels} channel(s);"
                        f" set model.channels to {dataset.channels}")


# ----------------------------------------------------------------------------------------------
# Minibatches of reals


class RealSampler:
    """Draws real minibatches of one level, with indices uniform over the dataset (with replacement)
    from the given torch.Generator, so a resumed run that restores the generator draws the same."""

    def __init__(self, dataset: Dataset, generator: torch.Generator):
        self.dataset = dataset
        self.generator = generator

    def sample(self, batch_size: int, resolution: int) -> torch.Tensor:
        """Return uint8 images (batch_size, C, r, r) on the CPU."""
        level = self.dataset.level(resolution)
        indices = torch.randint(self.dataset.count, (batch_size,), generator=self.generator,
                                device=self.generator.device).cpu().numpy()
        return torch.from_numpy(np.array(level[indices]))


def process_reals(batch: torch.Tensor, lod: float, mirror: bool, generator: torch.Generator) -> torch.Tensor:
    """Turn uint8 reals (N, C, r, r) into float32 network input in [-1, 1], as the official
    process_reals does at native resolution.

    The images are mapped from [0, 255] to [-1, 1]. With `mirror`, each one is flipped horizontally
    with probability 0.5, which draws N values from `generator`. Then they are blended toward the
    half-resolution image, x + (up2(avgpool2(x)) - x) * frac(lod), as the generator's output is
    during a fade-in.
    """
    images = batch.to(torch.float32) / 127.5 - 1.0

    if mirror:
        flip = torch.rand(images.shape[0], generator=generator, device=generator.device) < 0.5
        flip = flip.to(images.device).view(-1, 1, 1, 1)
        images = torch.where(flip, images.flip(3), images)

    fraction = lod - math.floor(lod)
    if fraction > 0:
        if images.shape[-1] < 2 * MIN_RESOLUTION:
            raise ValueError(f"lod {lod} fades from a lower resolution, but the reals are only"
                             f" {images.shape[-1]}x{images.shape[-1]}")
        coarse = F.interpolate(F.avg_pool2d(images, 2), scale_factor=2, mode="nearest")
        images = images + (coarse - images) * fraction
    return images
