"""S3 helpers: parse `s3://bucket/prefix` URIs, build boto3 and pyarrow clients from the standard
variables, and move files and folders between local disk and S3 without leaving partial results.

The endpoint and credentials come from a mapping of environment variables, by default os.environ.
Commands pass `orchestrator.services.load_service_env()`. The same code works against AWS S3,
MinIO and SeaweedFS. boto3 and pyarrow are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from gan.errors import UserError

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"
DEFAULT_REGION = "us-east-1"

# Endpoint variables in the order they win: the S3-specific AWS variable, the generic AWS one
# (both read by boto3 >= 1.28 and the AWS SDKs), then MLflow's own.
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")

# Bucket names as S3 allows them: 3-63 lowercase letters, digits, dots and hyphens.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

CLIENT_CONNECT_TIMEOUT_S = 5
CLIENT_READ_TIMEOUT_S = 60

# Error codes that S3 servers use for a missing bucket or key (HEAD requests carry no body, so
# they report the bare HTTP status).
_NOT_FOUND_CODES = ("404", "NoSuchKey", "NoSuchBucket", "NotFound")


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key (or key prefix, without a leading slash) in S3."""

    bucket: str
    key: str = ""

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}" if self.key else f"{S3_SCHEME}{self.bucket}"

    @property
    def folder_prefix(self) -> str:
        """The key prefix of the objects "inside" this location when it is used as a folder."""
        return self.key if not self.key or self.key.endswith("/") else self.key + "/"

    def join(self, *parts: str) -> S3Location:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Location(self.bucket, key)


def is_s3_uri(value: str | os.PathLike) -> bool:
    return isinstance(value, str) and value.startswith(S3_SCHEME)


def parse_s3_uri(uri: str) -> S3Location:
    """Split `s3://bucket/prefix` into bucket and key; raise UserError for anything else."""
    if not is_s3_uri(uri):
        raise UserError(f"invalid S3 URI {uri!r}: expected s3://bucket/prefix")
    bucket, _, key = uri[len(S3_SCHEME):].partition("/")
    if not _BUCKET_NAME.match(bucket):
        raise UserError(f"invalid S3 URI {uri!r}: bucket name {bucket!r} must be 3-63 lowercase "
                        "letters, digits, dots or hyphens")
    if "?" in key or "#" in key:
        raise UserError(f"invalid S3 URI {uri!r}: query strings and fragments are not supported; "
                        "set the endpoint with AWS_ENDPOINT_URL instead")
    segments = key.rstrip("/").split("/") if key.rstrip("/") else []
    if any(segment in ("", ".", "..") for segment in segments):
        raise UserError(f"invalid S3 URI {uri!r}: the key has an empty, '.' or '..' segment")
    return S3Location(bucket, key)


@dataclass(frozen=True)
class S3Settings:
    """Endpoint, region and credentials for one S3-compatible store; secrets stay out of repr."""

    endpoint_url: str | None
    region: str
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if env is None else env
        endpoint = next((env[name] for name in ENDPOINT_VARIABLES if env.get(name)), None)
        return cls(
            endpoint_url=endpoint,
            region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or DEFAULT_REGION,
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
        )


def s3_client(env: Mapping[str, str] | None = None):
    """Return a boto3 S3 client for the endpoint and credentials in `env` (default os.environ).

    A custom endpoint (MinIO, SeaweedFS) gets path-style addressing, because such servers do not
    serve `bucket.host` names.
    """
    import boto3
    from botocore.config import Config

    settings = S3Settings.from_env(env)
    config = Config(
        connect_timeout=CLIENT_CONNECT_TIMEOUT_S,
        read_timeout=CLIENT_READ_TIMEOUT_S,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path"} if settings.endpoint_url else None,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        config=config,
    )


def arrow_filesystem(env: Mapping[str, str] | None = None, *, embed_credentials: bool = False):
    """Return a pyarrow S3FileSystem with the endpoint, scheme and region set explicitly.

    A bare `S3FileSystem()` ignores AWS_ENDPOINT_URL (pyarrow 25 reads it only in
    `FileSystem.from_uri`) and defaults to https, so both are passed here.

    Credentials come from the AWS default chain, that is AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY in the environment of each process that uses the filesystem. With
    `embed_credentials` they are stored in the object instead. Keep that off where the object is
    pickled: Ray writes the storage filesystem into its experiment state files, keys included.
    """
    from pyarrow import fs

    settings = S3Settings.from_env(env)
    options: dict = {"region": settings.region}
    if settings.endpoint_url:
        parsed = urlparse(settings.endpoint_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UserError(f"invalid S3 endpoint URL {settings.endpoint_url!r}: expected "
                            "http://host:port or https://host:port")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme,
                       force_virtual_addressing=False)
    if embed_credentials:
        options.update(access_key=settings.access_key_id, secret_key=settings.secret_access_key,
                       session_token=settings.session_token)
    return fs.S3FileSystem(**options)


def ray_storage(path: str | os.PathLike, env: Mapping[str, str] | None = None,
                *, embed_credentials: bool = False):
    """Return `(storage_filesystem, storage_path)` for a Ray `RunConfig`.

    For `s3://bucket/prefix` this is an explicit S3FileSystem and the prefix-stripped
    `bucket/prefix`, as Ray requires with a custom filesystem. A local path returns
    `(None, absolute path)`.
    """
    if not is_s3_uri(path):
        return None, str(Path(path).expanduser().resolve())
    location = parse_s3_uri(str(path))
    storage_path = f"{location.bucket}/{location.key.strip('/')}".rstrip("/")
    return arrow_filesystem(env, embed_credentials=embed_credentials), storage_path


def upload_file(local_path: str | os.PathLike, uri: str, *, client=None) -> None:
    """Upload one file to `uri`. S3 makes an object visible only once it is complete."""
    location = parse_s3_uri(uri)
    if not location.key or location.key.endswith("/"):
        raise UserError(f"invalid S3 object URI {uri!r}: it names a folder, not an object")
    client = s3_client() if client is None else client
    client.upload_file(str(local_path), location.bucket, location.key)


def download_file(uri: str, local_path: str | os.PathLike, *, client=None) -> Path:
    """Download the object at `uri` to `local_path` through a temporary name in the same folder."""
    location = parse_s3_uri(uri)
    target = Path(local_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    client = s3_client() if client is None else client
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial",
                                         dir=target.parent)
    os.close(handle)
    try:
        client.download_file(location.bucket, location.key, temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def list_keys(uri: str, *, client=None) -> list[str]:
    """Return the keys under the folder `uri`, relative to it and sorted."""
    location = parse_s3_uri(uri)
    prefix = location.folder_prefix
    client = s3_client() if client is None else client
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket,
                                                                 Prefix=prefix):
        keys.extend(item["Key"][len(prefix):] for item in page.get("Contents", []))
    return sorted(keys)


def exists(uri: str, *, client=None) -> bool:
    """Return True when `uri` is an existing bucket, an object, or a folder holding objects."""
    from botocore.exceptions import ClientError

    location = parse_s3_uri(uri)
    client = s3_client() if client is None else client
    try:
        if not location.key:
            client.head_bucket(Bucket=location.bucket)
            return True
        if not location.key.endswith("/") and _object_exists(client, location):
            return True
        page = client.list_objects_v2(Bucket=location.bucket, Prefix=location.folder_prefix,
                                      MaxKeys=1)
        return bool(page.get("Contents"))
    except ClientError as error:
        if _is_not_found(error):
            return False
        raise


def _object_exists(client, location: S3Location) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=location.bucket, Key=location.key)
        return True
    except ClientError as error:
        if _is_not_found(error):
            return False
        raise


def _is_not_found(error) -> bool:
    return error.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES


def upload_folder(local_dir: str | os.PathLike, uri: str, *, last: Iterable[str] = (),
                  client=None) -> list[str]:
    """Upload every file under `local_dir` to the folder `uri`; return the keys in upload order.

    Files named in `last` (paths relative to `local_dir`, such as a manifest) go up after all the
    others, so a reader that waits for them never finds a folder with files missing.
    """
    source = Path(local_dir)
    if not source.is_dir():
        raise UserError(f"folder not found: {source}")
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    commit_files = list(dict.fromkeys(Path(name).as_posix() for name in last))
    missing = [name for name in commit_files if name not in files]
    if missing:
        raise UserError(f"files to upload last not found in {source}: {', '.join(missing)}")
    ordered = [name for name in files if name not in commit_files] + commit_files
    destination = parse_s3_uri(uri)
    client = s3_client() if client is None else client
    keys = []
    for name in ordered:
        key = destination.join(name).key
        client.upload_file(str(source / name), destination.bucket, key)
        keys.append(key)
    return keys


def download_folder(uri: str, local_dir: str | os.PathLike, *, exist_ok: bool = False,
                    client=None) -> Path:
    """Download the folder `uri` to `local_dir`, which appears whole or not at all.

    The files land in a temporary sibling folder that is renamed to `local_dir` at the end. When
    another process (a second Ray worker on the node) renamed its copy first, that copy is kept
    and this one is discarded, so the call works as a once-per-node cache fill. An existing
    `local_dir` raises UserError, unless `exist_ok` is set: then it is returned as it is.
    """
    location = parse_s3_uri(uri)
    target = Path(local_dir)
    if target.exists():
        if exist_ok:
            return target
        raise UserError(f"destination folder already exists: {target}")
    client = s3_client() if client is None else client
    keys = list_keys(uri, client=client)
    if not keys:
        raise UserError(f"no objects found under {location.uri}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        for name in keys:
            file_path = staging / name
            file_path.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(location.bucket, location.folder_prefix + name, str(file_path))
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            log.info("%s was filled by another process first; discarding this copy", target)
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
