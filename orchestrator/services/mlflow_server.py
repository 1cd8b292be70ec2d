"""The embedded MLflow tracking server: SQLite backend store, artifacts proxied to the S3 bucket.

Only the server process has the S3 credentials, and clients upload artifacts through its
`mlflow-artifacts:` proxy and need nothing but MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

from orchestrator.services.processes import LOCALHOST
from orchestrator.services.state import StatePaths

SERVICE = "mlflow"
ARTIFACT_BUCKET = "mlflow"
ARTIFACTS_DESTINATION = f"s3://{ARTIFACT_BUCKET}/artifacts"
# One uvicorn worker: the embedded server has one user and each worker costs about 250 MB.
WORKERS = 1
HEALTH_TIMEOUT_S = 2.0

# Client variables the server must not inherit from the caller, because they would point its S3
# client at another store or add a session token that the embedded store rejects.
_INHERITED_VARIABLES_TO_DROP = ("AWS_", "MLFLOW_TRACKING_", "MLFLOW_S3_", "MLFLOW_RUN_ID",
                                "MLFLOW_EXPERIMENT_")


def server_argv(paths: StatePaths, port: int) -> list[str]:
    database = paths.mlflow_dir / "mlflow.db"
    return [
        sys.executable, "-m", "mlflow", "server",
        "--host", LOCALHOST,
        "--port", str(port),
        "--backend-store-uri", f"sqlite:///{database}",
        "--serve-artifacts",
        "--artifacts-destination", ARTIFACTS_DESTINATION,
        "--workers", str(WORKERS),
    ]


def server_env(s3_env: Mapping[str, str]) -> dict[str, str]:
    """Return the server's environment: the caller's without client settings, plus the S3
    endpoint and credentials for the artifact proxy."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(_INHERITED_VARIABLES_TO_DROP)}
    env.update(s3_env)
    env["MLFLOW_S3_ENDPOINT_URL"] = s3_env["AWS_ENDPOINT_URL"]
    # SeaweedFS serves buckets as paths, not as `bucket.host` names.
    env["MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE"] = "path"
    # The job runner (extra huey consumer processes for GenAI jobs) is not needed here.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return env


def tracking_uri(port: int) -> str:
    return f"http://{LOCALHOST}:{port}"


def is_healthy(uri: str) -> bool:
    """Return True when GET /health returns 200 OK."""
    # An empty ProxyHandler keeps http_proxy settings from routing a local request elsewhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{uri}/health", timeout=HEALTH_TIMEOUT_S) as response:
            return response.status == 200 and response.read().strip() == b"OK"
    except (urllib.error.URLError, OSError):
        return False
