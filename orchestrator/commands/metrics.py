"""`progan metrics`: metrics between two image sets, such as `progan metrics swd REALS FAKES`.

An image set is a prepared dataset folder (one with a dataset.json, read at one resolution level) or a
folder of PNG and JPEG images of one square size.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gan.errors import DataError, UserError
from orchestrator.output import add_output_option, print_json, print_mapping, stderr_console

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
# Pillow modes read as 1 channel and as 3 channels; other modes (alpha, CMYK, 16-bit) are rejected.
GRAYSCALE_MODES = {"1", "L"}
COLOR_MODES = {"P", "RGB"}

SWD_DESCRIPTION = """\
Sliced Wasserstein distance x 1e3 between image sets A and B at every Laplacian pyramid level from
the full resolution down to 16x16, and their mean, by the protocol of the ProGAN paper and code:
128 random 7x7 patches per image and level, normalized per set and channel, compared along
4 x 128 random directions. The paper evaluates 16384 images per set.

A and B are prepared dataset folders (read at --resolution, default their full resolution) or
folders of PNG/JPEG images (all of one square size, taken in file-name order). Both sets need the
same channel count and size; their image counts may differ.
"""

SWD_EPILOG = """\
example:
  progan metrics swd data/faces runs/trial-3/fakes --images 16384 --resolution 128 --seed 0
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "metrics",
        help="compute metrics between image sets (swd)",
        description="Compute a metric between two image sets; see `progan metrics METRIC --help`.",
    )
    metric_parsers = parser.add_subparsers(dest="metric", metavar="METRIC", parser_class=type(parser))
    metric_parsers.required = True
    # One sub-command per metric. FID is not implemented in this module yet; it belongs next to SWD.
    _register_swd(metric_parsers)


def _register_swd(metric_parsers: argparse._SubParsersAction) -> None:
    parser = metric_parsers.add_parser(
        "swd",
        help="sliced Wasserstein distance (SWD) per pyramid level",
        description=SWD_DESCRIPTION,
        epilog=SWD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("a", metavar="A", help="first image set: dataset folder or image folder")
    parser.add_argument("b", metavar="B", help="second image set: dataset folder or image folder")
    parser.add_argument("--images", type=_positive_int, default=None, metavar="N",
                        help="use the first N images of each set; fails if a set has fewer (default: all)")
    parser.add_argument("--seed", type=_non_negative_int, default=None, metavar="S",
                        help="seed for the patch centres and directions (default: a fresh seed, so the"
                             " result varies slightly from run to run, as with the official code)")
    parser.add_argument("--resolution", type=_positive_int, default=None, metavar="R",
                        help="dataset level to read, and the size that folder images must have"
                             " (default: a dataset's full resolution, a folder's image size)")
    parser.add_argument("--device", default=None,
                        help="torch device to compute on, e.g. cpu or cuda:0"
                             " (default: cuda if available, else cpu)")
    parser.add_argument("--memory-gib", type=float, default=1.0, metavar="GIB",
                        help="working memory for descriptors and projections in GiB, besides the images;"
                             " a smaller budget recomputes descriptors more often (default: 1)")
    add_output_option(parser)
    parser.set_defaults(func=run_swd)


def run_swd(args: argparse.Namespace) -> None:
    import torch

    from gan.metrics.swd import pyramid_resolutions, sliced_wasserstein

    if args.memory_gib <= 0:
        raise UserError(f"--memory-gib must be positive, got {args.memory_gib}")
    set_a = load_image_set(args.a, args.resolution, args.images)
    set_b = load_image_set(args.b, args.resolution, args.images)
    if set_a.shape[1:] != set_b.shape[1:]:
        raise DataError(f"{args.a} contains {_describe(set_a)} images but {args.b} contains"
                        f" {_describe(set_b)}; SWD needs the same channel count and size"
                        " (pick a dataset level with --resolution)")
    pyramid_resolutions(set_a.shape[-1])  # rejects sizes the pyramid cannot use before any work starts
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    stderr_console().print(f"SWD: {len(set_a)} vs {len(set_b)} images, {_describe(set_a)}, on {device}")
    result = sliced_wasserstein(set_a, set_b, seed=args.seed, device=device,
                                memory_budget=int(args.memory_gib * 2**30))
    if args.output == "json":
        print_json(result)
    else:
        print_mapping(result, title=f"SWD x 1e3: {args.a} vs {args.b}")


def load_image_set(path: str, resolution: int | None, count: int | None) -> Any:
    """Return the uint8 images (N, C, R, R) of a dataset folder (memory-mapped) or an image folder.

    `resolution` picks the dataset level, or the size that folder images must have. With `count`, only
    the first `count` images are returned, and a set with fewer raises DataError.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{path}: folder not found; expected a dataset folder or a folder of PNG/JPEG images")
    if _is_dataset(folder):
        from gan.dataset import open_dataset

        dataset = open_dataset(folder)
        images = dataset.level(resolution or dataset.max_resolution)
    else:
        images = _read_image_folder(folder, resolution, count)
    if count is not None:
        if count > len(images):
            raise DataError(f"{path}: contains {len(images)} images, fewer than --images {count}")
        images = images[:count]
    return images


def _is_dataset(folder: Path) -> bool:
    from gan.dataset import MANIFEST_NAME

    return (folder / MANIFEST_NAME).is_file()


def _read_image_folder(folder: Path, resolution: int | None, count: int | None) -> Any:
    import numpy as np

    files = sorted(path for path in folder.iterdir()
                   if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."))
    if not files:
        raise DataError(f"{folder}: no dataset.json and no .png, .jpg or .jpeg files")
    if count is not None and count > len(files):
        raise DataError(f"{folder}: contains {len(files)} images, fewer than --images {count}")
    files = files[:count]

    images = []
    first_file, first_shape = None, None
    for file in files:
        pixels = _read_image(file)
        if first_shape is None:
            first_file, first_shape = file, pixels.shape
            size = pixels.shape[1]
            if pixels.shape[1] != pixels.shape[2]:
                raise DataError(f"{file}: image is {pixels.shape[2]}x{pixels.shape[1]};"
                                " SWD needs square images")
            if resolution is not None and size != resolution:
                raise DataError(f"{file}: image is {size}x{size}, not --resolution {resolution};"
                                " resize the images or prepare a dataset with `progan prepare-data`")
        elif pixels.shape != first_shape:
            raise DataError(f"{file}: image is {_shape_text(pixels.shape)}, unlike {first_file}"
                            f" ({_shape_text(first_shape)}); all images in a folder need the same size"
                            " and channel count")
        images.append(pixels)
    return np.stack(images)


def _read_image(file: Path) -> Any:
    """Decode one image to uint8 (C, H, W); raise DataError naming the file if it is unusable."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(file) as picture:
            picture.load()
            if picture.mode in GRAYSCALE_MODES:
                return np.asarray(picture.convert("L"))[None]
            if picture.mode in COLOR_MODES:
                return np.asarray(picture.convert("RGB")).transpose(2, 0, 1)
            mode = picture.mode
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{file}: unreadable image: {error}") from error
    raise DataError(f"{file}: unsupported image mode {mode}; use grayscale (L) or RGB without alpha")


def _describe(images: Any) -> str:
    return _shape_text(images.shape[1:])


def _shape_text(shape: tuple[int, ...]) -> str:
    channels, height, width = shape
    kind = {1: "grayscale", 3: "RGB"}.get(channels, f"{channels}-channel")
    return f"{kind} {width}x{height}"


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _parse_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _parse_int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value
