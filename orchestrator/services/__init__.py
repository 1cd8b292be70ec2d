"""The embedded services of one machine: a SeaweedFS S3 store and an MLflow tracking server, both
on 127.0.0.1, started by `progan services up` and found by other commands via load_service_env()."""

from orchestrator.services.manager import (ARTIFACT_BUCKET, BUCKETS, DATA_BUCKET, ServiceError,
                                           down, status, up)
from orchestrator.services.mlflow_server import ARTIFACTS_DESTINATION
from orchestrator.services.state import (SERVICE_ENV_KEYS, STATE_DIR_VARIABLE, default_state_dir,
                                         load_service_env)

__all__ = [
    "ARTIFACT_BUCKET",
    "ARTIFACTS_DESTINATION",
    "BUCKETS",
    "DATA_BUCKET",
    "SERVICE_ENV_KEYS",
    "STATE_DIR_VARIABLE",
    "ServiceError",
    "default_state_dir",
    "down",
    "load_service_env",
    "status",
    "up",
]
