"""`progan metrics`: metrics between two image sets, such as `progan metrics swd REALS FAKES`.

An image set is a prepared dataset folder (one with a dataset.json, read at one resolution level) or a
folder of PNG and JPEG images of one square size. FID also takes s3:// datasets and checkpoints.
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

FID_DESCRIPTION = """\
Frechet Inception distance (FID) and kernel Inception distance (KID, mean and standard deviation
over 100 subsets of up to 1000 images) between image sets A and B, from the 2048-d pool3 features
of the 2015-12-05 InceptionV3 weights through torch-fidelity's TF1-compatible extractor (images
resized bilinearly to 299x299; grayscale repeated to RGB). Papers report FID of 50000 generated
images against all training images; fewer images bias FID upward, so compare FIDs of equal counts.

A and B are prepared dataset folders or s3:// dataset prefixes (the first N images at --resolution;
their statistics are cached per dataset and protocol), folders of PNG/JPEG images, or checkpoint
files (.pt: a training state or G_ema snapshot) whose G_ema generates N images (default 50000).
The weights file comes from --weights, $PROGAN_INCEPTION_WEIGHTS or the cache folder
($PROGAN_CACHE_DIR/inception, filled by `progan fetch-weights`); it is never downloaded here.
"""

FID_EPILOG = """\
example:
  progan metrics fid data/faces runs/trial-3/models/G_ema-best.pt --images 50000 --output json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "metrics",
        help="compute metrics between image sets (swd, fid)",
        description="Compute a metric between two image sets; see `progan metrics METRIC --help`.",
    )
    metric_parsers = parser.add_subparsers(dest="metric", metavar="METRIC", parser_class=type(parser))
    metric_parsers.required = True
    _register_swd(metric_parsers)
    _register_fid(metric_parsers)


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


def _register_fid(metric_parsers: argparse._SubParsersAction) -> None:
    parser = metric_parsers.add_parser(
        "fid",
        help="Frechet and kernel Inception distances (FID, KID)",
        description=FID_DESCRIPTION,
        epilog=FID_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("a", metavar="A", help="reference set: dataset folder, s3:// dataset, image folder or checkpoint")
    parser.add_argument("b", metavar="B", help="evaluated set: dataset folder, s3:// dataset, image folder or checkpoint")
    parser.add_argument("--images", type=_positive_int, default=None, metavar="N",
                        help="use the first N images of datasets and folders, and generate N images from"
                             " checkpoints; fails if a set has fewer (default: all, and 50000 generated)")
    parser.add_argument("--resolution", type=_positive_int, default=None, metavar="R",
                        help="dataset level to read, and the size that folder images must have"
                             " (default: a dataset's full resolution, a folder's image size)")
    parser.add_argument("--mirror", action="store_true",
                        help="flip a fixed random half of each dataset's images, as for runs trained with"
                             " data.mirror (default: off)")
    parser.add_argument("--seed", type=_non_negative_int, default=0, metavar="S",
                        help="latent seed for images generated from checkpoints (default: 0)")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="Inception weights file (default: $PROGAN_INCEPTION_WEIGHTS, else"
                             " $PROGAN_CACHE_DIR/inception/weights-inception-2015-12-05-6726825d.pth)")
    parser.add_argument("--batch-size", type=_positive_int, default=50, metavar="B",
                        help="images per Inception batch (default: 50)")
    parser.add_argument("--device", default=None,
                        help="torch device to compute on, e.g. cpu or cuda:0"
                             " (default: cuda if available, else cpu)")
    add_output_option(parser)
    parser.set_defaults(func=run_fid)


def run_fid(args: argparse.Namespace) -> None:
    import torch
    from rich.progress import Progress

    from gan.metrics.fid import frechet_distance, kernel_inception_distance
    from gan.metrics.inception import load_inception, weights_path
    from orchestrator import environment
    from orchestrator.fid_sets import SetOptions, feature_set, kind_of

    if any(location.startswith("s3://") for location in (args.a, args.b)):
        environment.load_environment()  # S3 endpoint and credentials of the embedded services
    for location in (args.a, args.b):
        kind_of(location)  # rejects a bad location before the weights are loaded
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    extractor = load_inception(weights_path(args.weights, environment.cache_dir()), device)

    sets = []
    with Progress(console=stderr_console(), transient=True) as progress:
        for location in (args.a, args.b):
            task = progress.add_task(f"Inception features of {location}", total=None)
            options = SetOptions(images=args.images, resolution=args.resolution, mirror=args.mirror,
                                 seed=args.seed, batch_size=args.batch_size, cache_root=environment.cache_dir(),
                                 on_batch=lambda count, task=task: progress.advance(task, count))
            sets.append(feature_set(location, extractor, options))
    set_a, set_b = sets

    kid_mean, kid_std = kernel_inception_distance(set_a.features, set_b.features)
    result = {
        "fid": frechet_distance(set_a.mu, set_a.sigma, set_b.mu, set_b.sigma),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "fid/images": set_b.count,
        "fid/reference_images": set_a.count,
        "fid/impl": extractor.impl,
    }
    if args.output == "json":
        print_json(result)
    else:
        print_mapping(result, title=f"FID and KID: {args.a} vs {args.b}")


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
