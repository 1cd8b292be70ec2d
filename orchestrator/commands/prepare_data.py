"""`progan prepare-data`: turn images into the multi-resolution dataset that training reads."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gan.errors import UserError
from orchestrator.output import add_output_option, print_json, print_mapping, print_table

DESCRIPTION = """\
Turn images into a dataset folder: one uint8 array per resolution 4x4 .. RxR,
each box-averaged from the full-resolution image, plus a dataset.json manifest.

SRC is a folder of images (searched recursively, hidden files ignored), a .zip
file of images, or builtin:lfw-faces (the first 100 LFW face crops shipped with
scikit-image, resized to 32x32 grayscale). Each image is center-cropped to a
square and resized to RxR with a Lanczos filter; images are never upsampled.
Files that are unreadable, truncated, not images, smaller than R, in an
unsupported mode (anything but 1, L, LA, P, PA, RGB, RGBA), with transparent
pixels, or with the other channel count are skipped and listed by name.
Nothing is left at DEST if the run fails.

SRC celeba:IMG_DIR builds a CelebA-HQ-style dataset (default 1024x1024) from
CelebA's in-the-wild photos and --landmarks: each face is cropped to a square
oriented by its eyes and mouth, mirror-padded with blurred borders where the
square leaves the photo, and resampled, on Ray tasks. A rerun after an
interruption continues where it stopped.
"""

EPILOG = """\
example:
  progan prepare-data ~/photos/faces data/faces --resolution 128 --channels 3
  progan prepare-data celeba:celeba/img_celeba s3://progan/datasets/celebahq \
      --landmarks celeba/Anno/list_landmarks_celeba.txt --images image_list.txt
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare-data",
        help="turn a folder, zip or built-in image set into a multi-resolution dataset",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="SRC",
                        help="folder of images, .zip of images, builtin:lfw-faces, or celeba:IMG_DIR")
    parser.add_argument("dest", metavar="DEST", help="dataset to create: a local folder or s3://bucket/prefix")
    parser.add_argument("--resolution", type=int, default=None, metavar="R",
                        help="final resolution in pixels, a power of two >= 4 (default: the largest"
                             " power of two not above the median shorter side of the usable images;"
                             " 32 for builtin:lfw-faces; 1024 for celeba:)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None,
                        help="1 (grayscale) or 3 (RGB); images of the other kind are skipped, not"
                             " converted (default: the channel count of most usable images)")
    parser.add_argument("--landmarks", metavar="FILE", default=None,
                        help="celeba: sources only: landmark file in the format of CelebA's"
                             " list_landmarks_celeba.txt (required for celeba:)")
    parser.add_argument("--images", metavar="LIST", default=None,
                        help="celeba: sources only: photos to use, in this order: the CelebA-HQ"
                             " image_list.txt (orig_file column) or one file name per line"
                             " (default: every landmark row)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset at DEST (default: fail if DEST is not empty)")
    add_output_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from gan.prepare import prepare_dataset

    if args.source.startswith("celeba:"):
        from orchestrator import celeba_prepare

        _print_summary(celeba_prepare.run(args), args.output)
        return
    if args.landmarks or args.images:
        raise UserError("--landmarks and --images apply only to celeba:IMG_DIR sources")
    if not args.dest.startswith("s3://"):
        report = prepare_dataset(args.source, args.dest, resolution=args.resolution, channels=args.channels,
                                 overwrite=args.overwrite, progress=True)
        _print_summary(report, args.output)
        return
    report = _prepare_to_s3(args, prepare_dataset)
    _print_summary(report, args.output)


def _prepare_to_s3(args: argparse.Namespace, prepare_dataset) -> Any:
    """Write the dataset to a local temporary folder, then upload it with dataset.json last.

    Readers look for dataset.json first, so an upload cut short leaves no dataset that can be opened.
    """
    import tempfile

    from gan.dataset import MANIFEST_NAME
    from orchestrator import environment, storage

    environment.load_environment()
    manifest_uri = storage.parse_s3_uri(args.dest).join(MANIFEST_NAME).uri
    if storage.exists(manifest_uri) and not args.overwrite:
        raise UserError(f"{args.dest} already contains a dataset; use --overwrite to replace it")
    with tempfile.TemporaryDirectory(prefix="progan-prepare-") as folder:
        local = Path(folder) / "dataset"
        report = prepare_dataset(args.source, local, resolution=args.resolution, channels=args.channels,
                                 progress=True)
        storage.upload_folder(local, args.dest, last=[MANIFEST_NAME])
    report.dest = args.dest
    return report


def _print_summary(report: Any, output: str) -> None:
    manifest = report.manifest
    summary = {
        "dest": report.dest,
        "count": report.count,
        "skipped": [{"name": name, "reason": reason} for name, reason in report.skipped],
        "resolutions": manifest["resolutions"],
        "channels": manifest["channels"],
        "content_sha256": manifest["content_sha256"],
    }
    if output == "json":
        print_json(summary)
        return
    if report.skipped:
        print_table(summary["skipped"], title=f"Skipped files ({len(report.skipped)})")
    print_mapping({
        "dest": summary["dest"],
        "images written": summary["count"],
        "files skipped": len(report.skipped),
        "resolutions": ", ".join(str(r) for r in summary["resolutions"]),
        "channels": summary["channels"],
        "content_sha256": summary["content_sha256"],
    }, title="Dataset written")
