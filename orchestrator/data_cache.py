"""Datasets in S3: each node downloads a prepared dataset once into a cache keyed by its content hash."""

from __future__ import annotations

import json
from pathlib import Path

from gan.dataset import MANIFEST_NAME
from gan.errors import DataError
from orchestrator import storage


def read_manifest(location: str) -> dict:
    """Return the dataset.json of a local dataset folder or an s3:// dataset prefix."""
    if not location:
        raise DataError("data.path is empty: set it to a prepared dataset (see progan prepare-data)")
    if storage.is_s3_uri(location):
        uri = storage.parse_s3_uri(location).join(MANIFEST_NAME)
        client = storage.s3_client()
        try:
            body = client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read()
        except client.exceptions.NoSuchKey:
            raise DataError(f"data.path: no {MANIFEST_NAME} at {location}; "
                            "prepare the dataset there first (progan prepare-data)") from None
        return json.loads(body)
    path = Path(location) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"data.path: no {MANIFEST_NAME} in {location}; prepare the dataset first "
                        "(progan prepare-data)")
    return json.loads(path.read_text())


def local_dataset_path(location: str, cache_root: str | Path | None) -> Path:
    """Return a local folder holding the dataset: the path itself, or the node's cached S3 copy."""
    if not storage.is_s3_uri(location):
        return Path(location)
    manifest = read_manifest(location)
    if cache_root is None:
        from orchestrator.environment import cache_dir

        cache_root = cache_dir()
    target = Path(cache_root) / "datasets" / manifest["content_sha256"]
    if (target / MANIFEST_NAME).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    return storage.download_folder(location, target, exist_ok=True)
