"""Turn a folder of images, a .zip of images or the built-in face set into a dataset folder.

Folder and zip sources are read in two passes. The first reads only image headers, to choose the
default resolution and channel count. The second decodes each image, center-crops it to a square,
resizes it with a Lanczos filter and hands it to write_dataset. Files that cannot be used are skipped
and reported by name with the reason:
- not an image Pillow can identify, or an encrypted zip entry;
- truncated or corrupt pixel data;
- a shorter side below the target resolution (images are never upsampled);
- a mode other than 1, L, LA, P, PA, RGB or RGBA (for example CMYK, which needs a color profile
  to convert faithfully, or 16-bit and float modes);
- transparent pixels, since filling them would invent a background;
- a channel count other than the dataset's: grayscale modes (1, L, LA) give 1 channel, color modes
  (P, PA, RGB, RGBA) give 3, and neither is converted into the other.
Hidden files and folders (names starting with ".") and `__MACOSX/` zip entries are ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from gan.dataset import MIN_RESOLUTION, EmptyDatasetError, is_power_of_two, write_dataset
from gan.errors import DataError, UserError

BUILTIN_LFW_FACES = "builtin:lfw-faces"
# scikit-image's data.lfw_subset() contains 200 grayscale 25x25 crops of LFW photographs in [0, 1].
# The first 100 are faces and the other 100 are not.
LFW_FACE_COUNT = 100
LFW_RESOLUTION = 32

# Images are passed to write_dataset in chunks of about this many uint8 bytes.
CHUNK_BYTES = 64 * 2**20

GRAYSCALE_MODES = {"1", "L", "LA"}
COLOR_MODES = {"P", "PA", "RGB", "RGBA"}

# Exceptions that Pillow raises on malformed files. OSError covers UnidentifiedImageError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, zipfile.BadZipFile)


@dataclasses.dataclass
class PrepareReport:
    """Result of prepare_dataset: images written, files skipped with their reasons, the manifest."""

    dest: str
    count: int
    skipped: list[tuple[str, str]]
    manifest: dict[str, Any]


@dataclasses.dataclass
class _Header:
    name: str
    width: int
    height: int
    mode: str

    @property
    def channels(self) -> int:
        return 1 if self.mode in GRAYSCALE_MODES else 3


def prepare_dataset(source: str, dest: str | Path, resolution: int | None = None,
                    channels: int | None = None, overwrite: bool = False,
                    progress: bool = True) -> PrepareReport:
    """Write the dataset for `source` at `dest` and return what was written and skipped.

    `source` is a folder (searched recursively, in sorted path order), a .zip file, or
    builtin:lfw-faces. `resolution` defaults to the largest power of two not above the median
    shorter side of the usable images (32 for builtin:lfw-faces). `channels` defaults to the channel
    count of most usable images (3 on a tie). Nothing is left at `dest` if the run fails.
    """
    _check_options(resolution, channels)
    if source.startswith("builtin:"):
        images, source_text = _builtin_images(source, resolution, channels), source
        return _write(dest, iter([images]), [], source_text, overwrite)

    path = Path(source)
    with _open_image_source(path) as (names, opener):
        if not names:
            raise DataError(f"{source}: no files found (hidden files and folders are ignored)")
        with _progress_bar(progress) as bar:
            headers, skipped = _scan_headers(names, opener, bar)
            if not headers:
                raise _nothing_written(source, skipped)
            resolution = resolution or _default_resolution(headers, source)
            channels = channels or _default_channels(headers)
            chunks = _decoded_chunks(headers, opener, resolution, channels, skipped, bar)
            return _write(dest, chunks, skipped, str(path.resolve()), overwrite)


def _write(dest: str | Path, chunks: Iterator[np.ndarray], skipped: list[tuple[str, str]],
           source: str, overwrite: bool) -> PrepareReport:
    try:
        manifest = write_dataset(dest, chunks, source=source, overwrite=overwrite)
    except EmptyDatasetError:
        raise _nothing_written(source, skipped) from None
    return PrepareReport(dest=str(dest), count=manifest["count"], skipped=skipped, manifest=manifest)


def _nothing_written(source: str, skipped: list[tuple[str, str]]) -> DataError:
    first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
    return DataError(f"{source}: no images written, skipped files: {len(skipped)}{first}")


def _check_options(resolution: int | None, channels: int | None) -> None:
    if resolution is not None and (not is_power_of_two(resolution) or resolution < MIN_RESOLUTION):
        raise UserError(f"--resolution: expected a power of two >= {MIN_RESOLUTION}, got {resolution}")
    if channels is not None and channels not in (1, 3):
        raise UserError(f"--channels: expected 1 or 3, got {channels}")


# ----------------------------------------------------------------------------------------------
# Built-in data


def _builtin_images(source: str, resolution: int | None, channels: int | None) -> np.ndarray:
    """Return the first 100 LFW faces of scikit-image as uint8 (100, 1, R, R), R = 32 by default."""
    if source != BUILTIN_LFW_FACES:
        raise UserError(f"{source}: unknown built-in data set; available: {BUILTIN_LFW_FACES}")
    if channels not in (None, 1):
        raise UserError(f"--channels: {BUILTIN_LFW_FACES} is grayscale, so only 1 channel is possible")
    resolution = resolution or LFW_RESOLUTION
    if resolution > LFW_RESOLUTION:
        raise UserError(f"--resolution: {BUILTIN_LFW_FACES} goes up to {LFW_RESOLUTION}"
                        f" (the faces are 25x25), got {resolution}")

    from PIL import Image
    from skimage import data

    faces = data.lfw_subset()[:LFW_FACE_COUNT]
    images = np.empty((len(faces), 1, resolution, resolution), dtype=np.uint8)
    for index, face in enumerate(faces):
        # Resize in 32-bit float ("F" mode) so that the only rounding is the final one to uint8.
        picture = Image.fromarray(face.astype(np.float32))
        resized = np.asarray(picture.resize((resolution, resolution), Image.Resampling.LANCZOS),
                             dtype=np.float64)
        images[index, 0] = np.clip(np.rint(resized * 255.0), 0, 255)
    return images


# ----------------------------------------------------------------------------------------------
# Folder and zip sources

Opener = Callable[[str], contextlib.AbstractContextManager[IO[bytes]]]


@contextlib.contextmanager
def _open_image_source(path: Path) -> Iterator[tuple[list[str], Opener]]:
    """Yield the sorted candidate names and a function that opens one of them as a binary file."""
    if path.is_dir():
        names = sorted(_folder_names(path))
        yield names, lambda name: open(path / name, "rb")
        return
    if not path.exists():
        raise DataError(f"{path}: source not found; expected a folder, a .zip file or {BUILTIN_LFW_FACES}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a folder or a .zip file; expected a folder, a .zip file"
                        f" or {BUILTIN_LFW_FACES}")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{path}: unreadable zip file: {error}") from error
    with archive:
        encrypted = {info.filename for info in archive.infolist() if info.flag_bits & 0x1}

        @contextlib.contextmanager
        def open_entry(name: str) -> Iterator[IO[bytes]]:
            if name in encrypted:
                raise zipfile.BadZipFile("encrypted zip entries are not supported")
            with archive.open(name) as file:
                yield file

        names = sorted(info.filename for info in archive.infolist()
                       if not info.is_dir() and not _is_hidden(info.filename))
        yield names, open_entry


def _folder_names(root: Path) -> Iterator[str]:
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and not _is_hidden(relative):
            yield relative


def _is_hidden(relative: str) -> bool:
    parts = relative.split("/")
    return parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts)


def _scan_headers(names: list[str], opener: Opener, bar: Any) -> tuple[list[_Header], list[tuple[str, str]]]:
    """Read each file's header; return the usable ones and (name, reason) for the rest."""
    from PIL import Image, UnidentifiedImageError

    headers, skipped = [], []
    task = bar.add_task("reading image headers", total=len(names))
    for name in names:
        try:
            with opener(name) as file, Image.open(file) as picture:
                header = _Header(name, picture.width, picture.height, picture.mode)
        except UnidentifiedImageError:
            skipped.append((name, "not an image that Pillow can read"))
        except Image.DecompressionBombError as error:
            skipped.append((name, f"too many pixels: {error}"))
        except _DECODE_ERRORS as error:
            skipped.append((name, f"unreadable: {error}"))
        else:
            if header.mode in GRAYSCALE_MODES or header.mode in COLOR_MODES:
                headers.append(header)
            else:
                skipped.append((name, f"unsupported mode {header.mode}; convert it to RGB or L first"))
        bar.advance(task)
    return headers, skipped


def _default_resolution(headers: list[_Header], source: str) -> int:
    median_side = statistics.median(min(h.width, h.height) for h in headers)
    if median_side < MIN_RESOLUTION:
        raise DataError(f"{source}: the median image is {median_side} pixels on its shorter side,"
                        f" below the minimum resolution {MIN_RESOLUTION}")
    return 2 ** int(np.floor(np.log2(median_side)))


def _default_channels(headers: list[_Header]) -> int:
    grayscale = sum(1 for header in headers if header.channels == 1)
    return 1 if grayscale > len(headers) - grayscale else 3


def _decoded_chunks(headers: list[_Header], opener: Opener, resolution: int, channels: int,
                    skipped: list[tuple[str, str]], bar: Any) -> Iterator[np.ndarray]:
    """Yield uint8 chunks (n, C, R, R) of the usable images; appends the rest to `skipped`."""
    chunk_size = max(1, CHUNK_BYTES // (channels * resolution * resolution))
    buffer: list[np.ndarray] = []
    task = bar.add_task(f"writing {resolution}x{resolution}x{channels}", total=len(headers))
    for header in headers:
        image, reason = _decode(header, opener, resolution, channels)
        if image is None:
            skipped.append((header.name, reason))
        else:
            buffer.append(image)
        if len(buffer) == chunk_size:
            yield np.stack(buffer)
            buffer = []
        bar.advance(task)
    if buffer:
        yield np.stack(buffer)


def _decode(header: _Header, opener: Opener, resolution: int,
            channels: int) -> tuple[np.ndarray | None, str]:
    """Return (uint8 (C, R, R), "") for a usable image, or (None, reason) for one to skip."""
    from PIL import Image, ImageOps

    shorter = min(header.width, header.height)
    if shorter < resolution:
        return None, (f"too small: {header.width}x{header.height}, the shorter side must be at least"
                      f" {resolution} (--resolution)")
    if header.channels != channels:
        kind = "grayscale" if header.channels == 1 else "color"
        return None, f"{kind} image (mode {header.mode}) in a {channels}-channel dataset (--channels)"

    try:
        with opener(header.name) as file, Image.open(file) as picture:
            picture.load()
            picture = ImageOps.exif_transpose(picture)
            if _has_transparency(picture):
                return None, "has transparent pixels; flatten it onto a background first"
            picture = picture.convert("L" if channels == 1 else "RGB")
    except Image.DecompressionBombError as error:
        return None, f"too many pixels: {error}"
    except _DECODE_ERRORS as error:
        return None, f"truncated or corrupt: {error}"

    picture = _center_square(picture, resolution)
    pixels = np.asarray(picture, dtype=np.uint8)
    return (pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)), ""


def _has_transparency(picture: Any) -> bool:
    if picture.mode in ("LA", "RGBA", "PA"):
        return picture.getchannel("A").getextrema()[0] < 255
    if picture.mode == "P" and "transparency" in picture.info:
        return picture.convert("RGBA").getchannel("A").getextrema()[0] < 255
    return False


def _center_square(picture: Any, resolution: int) -> Any:
    """Crop the largest centered square and resize it to resolution x resolution (Lanczos)."""
    from PIL import Image

    side = min(picture.width, picture.height)
    left = (picture.width - side) // 2
    top = (picture.height - side) // 2
    box = (left, top, left + side, top + side)
    if side == resolution:
        return picture.crop(box) if picture.size != (side, side) else picture
    return picture.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box)


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator[Any]:
    """Yield a rich Progress on stderr that disappears when done (does nothing if disabled)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=not enabled) as bar:
        yield bar
