"""`progan fetch-weights`: download the Inception weights for FID once, on a machine with internet access."""

from __future__ import annotations

import argparse

from orchestrator.output import add_output_option, print_json, print_mapping


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fetch-weights",
        help="download the InceptionV3 weights that FID uses",
        description="Download torch-fidelity's InceptionV3 weights (the 2015-12-05 TensorFlow graph,"
                    " converted) to DIR/inception and check their SHA-256 prefix. Training and"
                    " `progan metrics fid` read them from $PROGAN_INCEPTION_WEIGHTS, else from"
                    " $PROGAN_CACHE_DIR/inception (default ~/.cache/progan/inception), and never"
                    " download anything themselves. Example: progan fetch-weights --dest /shared/progan-cache",
    )
    parser.add_argument("--dest", default=None, metavar="DIR",
                        help="cache folder to put inception/<file> under"
                             " (default: $PROGAN_CACHE_DIR, else ~/.cache/progan)")
    parser.add_argument("--force", action="store_true", help="download again even if the file is there")
    add_output_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gan.metrics.inception import WEIGHTS_CACHE_FOLDER, WEIGHTS_FILE_NAME, check_weights_hash, file_sha256
    from orchestrator.environment import cache_dir

    root = Path(args.dest).expanduser().resolve() if args.dest else cache_dir()
    target = root / WEIGHTS_CACHE_FOLDER / WEIGHTS_FILE_NAME
    downloaded = False
    if args.force or not target.is_file():
        _download(target)
        downloaded = True
    sha256 = file_sha256(target)
    check_weights_hash(sha256, target)
    summary = {"path": str(target), "sha256": sha256, "downloaded": downloaded}
    if args.output == "json":
        print_json(summary)
    else:
        print_mapping(summary, title="Inception weights")
    return 0


def _download(target) -> None:
    """Download the weights to a temporary name next to `target`; rename only if the hash matches."""
    import os
    import tempfile
    from pathlib import Path

    from torch.hub import download_url_to_file

    from gan.metrics.inception import WEIGHTS_SHA256_PREFIX, WEIGHTS_URL

    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(handle)
    try:
        # torch.hub checks the SHA-256 prefix and raises RuntimeError on a mismatch.
        download_url_to_file(WEIGHTS_URL, temporary, hash_prefix=WEIGHTS_SHA256_PREFIX, progress=True)
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
