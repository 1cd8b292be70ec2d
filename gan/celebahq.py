"""CelebA-HQ-style face alignment: CelebA landmark and image-list files, and the oriented crop with
mirror padding and blurred borders that the official ProGAN dataset tool applies to each photo.

The geometry and resampling follow `create_celebahq` in tkarras/progressive_growing_of_gans
(dataset_tool.py). That tool's constants are written for 1024x1024 output. Here they are scaled
with the target resolution R, so R = 1024 gives the official numbers. The released CelebA-HQ images
were made with JPEG-artifact removal and super-resolution networks (Karras et al., "Progressive
Growing of GANs", ICLR 2018). The official tool upscales with a plain filter instead and then adds
encrypted per-image deltas to reach the released images. Here a Lanczos filter replaces the
networks and no deltas are applied, so the images are not bit-identical to CelebA-HQ.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import scipy.signal
from PIL import Image

from gan.dataset import MIN_RESOLUTION, is_power_of_two
from gan.errors import DataError

# CelebA's list_landmarks_celeba.txt: a row count, a header line, then one row per image with its
# file name and the x y pixel coordinates of these five points.
LANDMARK_NAMES = ("left eye", "right eye", "nose", "left mouth corner", "right mouth corner")
LANDMARK_FIELDS = 1 + 2 * len(LANDMARK_NAMES)
# Column of the CelebA-HQ image_list.txt that names the in-the-wild CelebA photo.
IMAGE_LIST_COLUMN = "orig_file"

# The official tool's output size; the constants below are fractions of it.
REFERENCE_RESOLUTION = 1024
# Half side of the crop square: max(2.0 * eye distance, 1.8 * eye-to-mouth distance).
EYE_DISTANCE_SCALE = 2.0
EYE_TO_MOUTH_SCALE = 1.8
# The square's center lies this fraction of the eye-to-mouth vector below the eye midpoint.
CENTER_SHIFT = 0.1
# Landmarks name pixels; the official tool adds half a pixel to the eye and mouth averages, and again
# to the quad handed to Pillow's transform.
PIXEL_CENTER = 0.5
# Margin kept around the square when cropping: 102.4 px at R = 1024 (never below 3 px).
BORDER_FRACTION = 0.1
MIN_BORDER = 3
# Mirror padding is applied when the square plus margin leaves the photo by more than (border - 4)
# pixels, and is then at least 307.2 px on every side at R = 1024.
PAD_TOLERANCE = 4
MIN_PAD_FRACTION = 0.3
# Standard deviation of the Gaussian blur over the padding: 20.48 px at R = 1024.
BLUR_FRACTION = 0.02
# The blur kernel ends at this many standard deviations, as in scipy.ndimage.gaussian_filter.
BLUR_TRUNCATE = 4.0
# The quad is sampled bilinearly at 4R x 4R and then reduced to R x R with a Lanczos filter.
SUPERSAMPLING = 4
# Eyes closer than this (in photo pixels) do not define an orientation.
MIN_EYE_DISTANCE = 1.0


class FaceAlignmentError(ValueError):
    """A photo and landmarks that give no usable crop; the message names the reason."""


@dataclasses.dataclass
class LandmarkTable:
    """Landmark rows of one file: names in file order, (5, 2) float64 points per name, and the
    rows that were skipped as (name, reason)."""

    names: list[str]
    points: dict[str, np.ndarray]
    skipped: list[tuple[str, str]]


# ----------------------------------------------------------------------------------------------
# Landmark and image-list files


def read_landmarks(path: str | Path) -> LandmarkTable:
    """Read a file in the format of CelebA's list_landmarks_celeba.txt.

    Rows with the wrong number of fields, non-numeric or non-finite coordinates, or a name seen
    before are skipped and named. A first line that is not the row count, or a count that does not
    match the rows, raises DataError.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: landmark file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: unreadable landmark file: {error}") from error
    if len(lines) < 2:
        raise DataError(f"{path}: expected a row count line and a header line, got {len(lines)} lines")
    try:
        declared = int(lines[0].strip())
    except ValueError:
        raise DataError(f"{path}: line 1: expected the row count, got {lines[0].strip()!r}") from None

    table = LandmarkTable(names=[], points={}, skipped=[])
    first_line = {}
    rows = [(number, line.split()) for number, line in enumerate(lines[2:], start=3) if line.strip()]
    if len(rows) != declared:
        raise DataError(f"{path}: line 1 declares {declared} rows but the file has {len(rows)};"
                        " the file may be truncated, or the count needs updating")
    for number, fields in rows:
        name, reason = _parse_landmark_row(fields, f"{path.name} line {number}")
        if reason:
            table.skipped.append((name, reason))
        elif name in first_line:
            table.skipped.append((name, f"{path.name} line {number}: name listed again;"
                                        f" the row on line {first_line[name]} is used"))
        else:
            first_line[name] = number
            table.names.append(name)
            table.points[name] = np.array(fields[1:], dtype=np.float64).reshape(len(LANDMARK_NAMES), 2)
    return table


def _parse_landmark_row(fields: list[str], where: str) -> tuple[str, str]:
    """Return (name, "") for a valid row, else (name or `where`, reason)."""
    if len(fields) != LANDMARK_FIELDS:
        name = fields[0] if fields else where
        return name, (f"{where}: expected a file name and {LANDMARK_FIELDS - 1} coordinates,"
                      f" got {len(fields)} fields")
    try:
        values = [float(field) for field in fields[1:]]
    except ValueError:
        return fields[0], f"{where}: coordinates must be numbers, got {' '.join(fields[1:])!r}"
    if not all(math.isfinite(value) for value in values):
        return fields[0], f"{where}: coordinates must be finite, got {' '.join(fields[1:])!r}"
    return fields[0], ""


def read_image_list(path: str | Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Return (photo names in file order, skipped rows as (name, reason)).

    The file is either the CelebA-HQ image_list.txt (a header line with an `orig_file` column and
    whitespace-separated rows) or a plain list with one file name per line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: image list not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: unreadable image list: {error}") from error

    numbered = [(number, line.split()) for number, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise DataError(f"{path}: image list is empty")
    header = numbered[0][1]
    column, width, rows = 0, 1, numbered
    if IMAGE_LIST_COLUMN in header:
        column, width, rows = header.index(IMAGE_LIST_COLUMN), len(header), numbered[1:]

    names, skipped = [], []
    for number, fields in rows:
        if len(fields) == width:
            names.append(fields[column])
        else:
            expected = f"{width} fields like the header" if width > 1 else "one file name"
            skipped.append((f"{path.name} line {number}",
                            f"expected {expected}, got {len(fields)} fields: {' '.join(fields)!r}"))
    return names, skipped


# ----------------------------------------------------------------------------------------------
# Alignment


def oriented_square(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """Return the crop square for five landmarks (x, y) in photo pixels.

    The result is (quad, half_side): quad is float64 (4, 2) with the corners top-left, bottom-left,
    bottom-right, top-right of the output image, and half_side is the length of half a side.
    Raises FaceAlignmentError when the eyes (nearly) coincide or the square has no size.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    left_eye, right_eye = points[0], points[1]
    eye_avg = (left_eye + right_eye) * 0.5 + PIXEL_CENTER
    mouth_avg = (points[3] + points[4]) * 0.5 + PIXEL_CENTER
    eye_to_eye = right_eye - left_eye
    eye_to_mouth = mouth_avg - eye_avg

    eye_distance = float(np.hypot(*eye_to_eye))
    if eye_distance < MIN_EYE_DISTANCE:
        raise FaceAlignmentError(f"degenerate landmarks: the eyes are {eye_distance:.2f} px apart"
                                 f" (at least {MIN_EYE_DISTANCE} px needed to orient the face)")
    x = eye_to_eye - _rot90(eye_to_mouth)
    length = float(np.hypot(*x))
    if length < MIN_EYE_DISTANCE:
        raise FaceAlignmentError("degenerate landmarks: the mouth lies beside the eyes, so the"
                                 " eye and mouth directions cancel out")
    half_side = max(eye_distance * EYE_DISTANCE_SCALE, float(np.hypot(*eye_to_mouth)) * EYE_TO_MOUTH_SCALE)
    x *= half_side / length
    y = _rot90(x)
    center = eye_avg + eye_to_mouth * CENTER_SHIFT
    quad = np.stack([center - x - y, center - x + y, center + x + y, center + x - y])
    return quad, half_side


def _rot90(vector: np.ndarray) -> np.ndarray:
    return np.array([-vector[1], vector[0]])


def align_face(image: np.ndarray, landmarks: np.ndarray, resolution: int) -> np.ndarray:
    """Return the aligned face as uint8 (3, R, R) for an RGB photo uint8 (H, W, 3) and its five
    landmarks (5, 2), in the order of LANDMARK_NAMES, as (x, y) pixel coordinates.

    Raises FaceAlignmentError for landmarks outside the photo or degenerate geometry, and
    ValueError for arguments of the wrong shape or type.
    """
    _check_arguments(image, landmarks, resolution)
    quad, half_side = oriented_square(landmarks)
    zoom = resolution / (2.0 * half_side)
    picture = Image.fromarray(image)

    picture, quad, zoom = _shrink(picture, quad, zoom)
    border = max(int(np.rint(resolution * BORDER_FRACTION / zoom)), MIN_BORDER)
    picture, quad = _crop(picture, quad, border)
    picture, quad, zoom = _upscale(picture, quad, zoom)
    picture, quad = _pad_and_blend(picture, quad, zoom, border, resolution)

    size = resolution * SUPERSAMPLING
    corners = [float(value) for value in (quad + PIXEL_CENTER).ravel()]
    picture = picture.transform((size, size), Image.Transform.QUAD, corners, Image.Resampling.BILINEAR)
    picture = picture.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.ascontiguousarray(np.asarray(picture, dtype=np.uint8).transpose(2, 0, 1))


def _check_arguments(image: np.ndarray, landmarks: np.ndarray, resolution: int) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        kind = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an RGB photo as uint8 (H, W, 3), got {kind}")
    if not is_power_of_two(resolution) or resolution < MIN_RESOLUTION:
        raise ValueError(f"resolution must be a power of two >= {MIN_RESOLUTION}, got {resolution}")
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (len(LANDMARK_NAMES), 2):
        raise ValueError(f"expected landmarks of shape (5, 2), got {points.shape}")
    if not np.isfinite(points).all():
        raise FaceAlignmentError(f"landmarks must be finite, got {points.tolist()}")
    height, width = image.shape[:2]
    for name, (x, y) in zip(LANDMARK_NAMES, points):
        if not (0 <= x < width and 0 <= y < height):
            raise FaceAlignmentError(f"landmark {name} at ({x:g}, {y:g}) lies outside the"
                                     f" {width}x{height} photo")


def _shrink(picture: Image.Image, quad: np.ndarray, zoom: float) -> tuple[Image.Image, np.ndarray, float]:
    """Reduce the photo by an integer factor when the crop would be reduced by 2x or more anyway."""
    factor = int(np.floor(0.5 / zoom))
    if factor <= 1:
        return picture, quad, zoom
    size = (int(np.rint(picture.width / factor)), int(np.rint(picture.height / factor)))
    return picture.resize(size, Image.Resampling.LANCZOS), quad / factor, zoom * factor


def _crop(picture: Image.Image, quad: np.ndarray, border: int) -> tuple[Image.Image, np.ndarray]:
    """Cut the photo down to the square's bounding box plus `border` (within the photo)."""
    low = np.floor(quad.min(axis=0)).astype(int) - border
    high = np.ceil(quad.max(axis=0)).astype(int) + border
    box = (max(low[0], 0), max(low[1], 0), min(high[0], picture.width), min(high[1], picture.height))
    if box[2] - box[0] < picture.width or box[3] - box[1] < picture.height:
        picture = picture.crop(box)
        quad = quad - np.array(box[:2], dtype=np.float64)
    return picture, quad


def _upscale(picture: Image.Image, quad: np.ndarray, zoom: float) -> tuple[Image.Image, np.ndarray, float]:
    """Enlarge by the power of two that brings the crop to at least the output resolution.

    A Lanczos filter replaces the JPEG-artifact removal and super-resolution networks that made
    the released CelebA-HQ images.
    """
    factor = int(np.exp2(np.ceil(np.log2(zoom))))
    if factor <= 1:
        return picture, quad, zoom
    # NOTE: scaling the quad's pixel-index coordinates, as the official tool does, moves the face by
    # half an upscaled pixel along the photo's +x and +y (about 0.4 px of a 256x256 output in tests).
    size = (picture.width * factor, picture.height * factor)
    return picture.resize(size, Image.Resampling.LANCZOS), quad * factor, zoom / factor


def _pad_and_blend(picture: Image.Image, quad: np.ndarray, zoom: float, border: int,
                   resolution: int) -> tuple[Image.Image, np.ndarray]:
    """Mirror-pad where the square plus border leaves the photo, then blur the padding and fade it
    toward the photo's per-channel median, increasingly toward the outer edge."""
    low = np.floor(quad.min(axis=0)).astype(int)
    high = np.ceil(quad.max(axis=0)).astype(int)
    # (left, top, right, bottom)
    pad = np.array([max(border - low[0], 0), max(border - low[1], 0),
                    max(high[0] - picture.width + border, 0), max(high[1] - picture.height + border, 0)])
    if pad.max() <= border - PAD_TOLERANCE:
        return picture, quad
    pad = [int(value) for value in np.maximum(pad, int(np.rint(resolution * MIN_PAD_FRACTION / zoom)))]
    if min(pad) < 1:
        raise FaceAlignmentError(f"resolution {resolution} is too small to pad the crop")

    image = np.pad(np.asarray(picture, dtype=np.float32), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)),
                   mode="reflect")
    height, width = image.shape[:2]
    columns = np.arange(width, dtype=np.float32)
    rows = np.arange(height, dtype=np.float32)
    horizontal = np.minimum(columns / pad[0], (width - 1 - columns) / pad[2])
    vertical = np.minimum(rows / pad[1], (height - 1 - rows) / pad[3])
    # 1 at the outer edge of the padding, 0 where the photo starts, negative inside the photo.
    mask = 1.0 - np.minimum(vertical[:, None], horizontal[None, :])

    blurred = gaussian_blur(image, resolution * BLUR_FRACTION / zoom)
    image += (blurred - image) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)[:, :, None]
    image += (np.median(image, axis=(0, 1)) - image) * np.clip(mask, 0.0, 1.0)[:, :, None]

    padded = Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8), "RGB")
    return padded, quad + np.array(pad[:2], dtype=np.float64)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Return the Gaussian blur of a float32 (H, W, C) image along H and W.

    The result matches scipy.ndimage.gaussian_filter(image, [sigma, sigma, 0]) (mirror boundary
    that repeats the edge pixel, kernel cut at BLUR_TRUNCATE sigma) up to float32 rounding. It
    comes from FFT convolution, whose cost does not grow with sigma, because sigma reaches about
    80 px at 1024x1024 output.
    """
    radius = int(BLUR_TRUNCATE * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    for axis in (0, 1):
        widths = [(0, 0)] * image.ndim
        widths[axis] = (radius, radius)
        # NumPy's "symmetric" padding is scipy.ndimage's "reflect" boundary.
        padded = np.pad(image, widths, mode="symmetric")
        shape = [1] * image.ndim
        shape[axis] = kernel.size
        image = scipy.signal.fftconvolve(padded, kernel.reshape(shape), mode="valid", axes=axis)
    return image.astype(np.float32, copy=False)
