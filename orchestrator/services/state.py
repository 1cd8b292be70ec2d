"""The state folder of the embedded services: its layout, the services.json record, the env file
that other commands read, and a lock that keeps two `services up` runs apart.

Layout under STATE (default `./.progan`, or $PROGAN_STATE_DIR):
    services.json    pids, command lines and ports of the processes `services up` started
    env              KEY=value lines for clients (mode 0600, contains the S3 secret key)
    logs/            one log file per service
    seaweedfs/       SeaweedFS data and its S3 identities file (mode 0600)
    mlflow/          the MLflow SQLite backend store
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_DIR_VARIABLE = "PROGAN_STATE_DIR"
DEFAULT_STATE_DIR = ".progan"
SERVICES_FILE_VERSION = 1

# The variables written to STATE/env, in the order written. AWS_EC2_METADATA_DISABLED keeps boto3
# and the AWS C++ SDK inside pyarrow from probing the EC2 metadata address for credentials.
SERVICE_ENV_KEYS = (
    "MLFLOW_TRACKING_URI",
    "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_EC2_METADATA_DISABLED",
)
# Standard variables that, when set in the environment, override the values in STATE/env.
OVERRIDE_ENV_KEYS = SERVICE_ENV_KEYS + ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN")
SECRET_ENV_KEYS = frozenset({"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"})


def default_state_dir() -> Path:
    """Return $PROGAN_STATE_DIR, or `.progan` in the working directory."""
    return Path(os.environ.get(STATE_DIR_VARIABLE) or DEFAULT_STATE_DIR)


@dataclass(frozen=True)
class StatePaths:
    """Absolute paths of the files in one state folder."""

    root: Path

    @classmethod
    def resolve(cls, state_dir: str | os.PathLike | None = None) -> StatePaths:
        root = Path(state_dir) if state_dir is not None else default_state_dir()
        return cls(root.expanduser().absolute())

    @property
    def services_file(self) -> Path:
        return self.root / "services.json"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def seaweedfs_dir(self) -> Path:
        return self.root / "seaweedfs"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    def log_file(self, service: str) -> Path:
        return self.logs_dir / f"{service}.log"

    def create(self) -> None:
        """Create the folder tree; a new state folder is private to the user (mode 0700)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for folder in (self.logs_dir, self.seaweedfs_dir, self.mlflow_dir):
            folder.mkdir(mode=0o700, exist_ok=True)


def write_file_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to a temporary file with `mode` in the same folder, then rename it to `path`."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_services(paths: StatePaths) -> dict[str, Any]:
    """Return the services.json record, or an empty one when the file does not exist."""
    try:
        data = json.loads(paths.services_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"version": SERVICES_FILE_VERSION, "services": {}}
    except json.JSONDecodeError as error:
        raise RuntimeError(f"invalid JSON in {paths.services_file}: {error}; "
                           "stop the services by hand and delete the file") from error
    data.setdefault("services", {})
    return data


def write_services(paths: StatePaths, data: Mapping[str, Any]) -> None:
    write_file_atomic(paths.services_file, json.dumps(data, indent=2) + "\n")


def write_env_file(paths: StatePaths, env: Mapping[str, str]) -> None:
    lines = ["# Client settings for the services that `progan services up` started.",
             f"# Load into a shell with: set -a; . {shlex.quote(str(paths.env_file))}; set +a"]
    lines += [f"{key}={shlex.quote(str(env[key]))}" for key in SERVICE_ENV_KEYS if key in env]
    write_file_atomic(paths.env_file, "\n".join(lines) + "\n", mode=0o600)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse `KEY=value` lines (optionally prefixed with `export`); skip blanks and comments."""
    values = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, separator, raw_value = line.removeprefix("export ").partition("=")
        if not separator or not key.strip().isidentifier():
            raise ValueError(f"{path}:{number}: expected KEY=value")
        parsed = shlex.split(raw_value)
        values[key.strip()] = parsed[0] if parsed else ""
    return values


def load_service_env(state_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Return the client settings for the embedded services, for commands to use or pass on.

    Values come from STATE/env (state_dir defaults to $PROGAN_STATE_DIR or ./.progan). A standard
    variable that is already set and non-empty in os.environ wins over the file, so a user who
    points AWS_ENDPOINT_URL or MLFLOW_TRACKING_URI elsewhere keeps that choice. Without an env
    file (services not up) the result holds only the variables set in os.environ.
    """
    paths = StatePaths.resolve(state_dir)
    try:
        values = read_env_file(paths.env_file)
    except FileNotFoundError:
        values = {}
    for key in OVERRIDE_ENV_KEYS:
        if os.environ.get(key):
            values[key] = os.environ[key]
    return values


@contextmanager
def state_lock(paths: StatePaths) -> Iterator[None]:
    """Hold an exclusive lock on the state folder, so concurrent `up`/`down` runs take turns."""
    with open(paths.lock_file, "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
