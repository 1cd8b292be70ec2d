"""Process environment shared by every command: state folder, service variables, Ray start-up."""

from __future__ import annotations

import os
from pathlib import Path

from gan.config import TrainConfig

DEFAULT_STATE_DIR = ".progan"

# Custom resource that Tune trial drivers take instead of CPU, so that a trial's Train workers can use
# every CPU. A local Ray gets plenty of it; on a cluster, declare it on nodes that may host drivers
# (ray_cluster.yaml does so on the head node).
TRIAL_DRIVER_RESOURCE = "progan_trial_driver"
LOCAL_TRIAL_DRIVER_SLOTS = 1000

# Variables that Ray workers on other nodes need to reach MLflow and S3, sent through the job's
# runtime_env when joining a cluster. Secrets are left out on purpose: Ray writes the runtime_env to
# its logs and shows it in the dashboard. A local Ray started here inherits this process's whole
# environment, keys included; cluster nodes get keys from an instance profile or their own environment.
FORWARDED_VARIABLES = (
    "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EC2_METADATA_DISABLED",
    "PROGAN_STATE_DIR", "PROGAN_CACHE_DIR", "PROGAN_INCEPTION_WEIGHTS", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
)


def state_dir() -> Path:
    """Return the state folder: $PROGAN_STATE_DIR, else .progan in the working directory (absolute)."""
    return Path(os.environ.get("PROGAN_STATE_DIR") or DEFAULT_STATE_DIR).resolve()


def cache_dir() -> Path:
    """Return the per-node dataset cache: $PROGAN_CACHE_DIR, else ~/.cache/progan."""
    return Path(os.environ.get("PROGAN_CACHE_DIR") or Path.home() / ".cache" / "progan").resolve()


def load_environment() -> dict[str, str]:
    """Put the embedded services' variables into os.environ; variables already set win."""
    from orchestrator.services import load_service_env

    # Results go to stdout (JSON included), so MLflow must not print run URLs there.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    values = load_service_env(state_dir())
    for key, value in values.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PROGAN_STATE_DIR", str(state_dir()))
    return values


def absolute_storage(location: str) -> str:
    """Return `location` unchanged when it is a URI, else as an absolute local path."""
    if "://" in location:
        return location
    return str(Path(location).expanduser().resolve())


def absolutize_paths(config: TrainConfig) -> None:
    """Make local data and storage paths absolute, since Ray workers run in other folders."""
    if config.data.path:
        config.data.path = absolute_storage(config.data.path)
    if config.run.storage:
        config.run.storage = absolute_storage(config.run.storage)


def check_minibatch(config: TrainConfig) -> None:
    from gan.train import check_minibatch_split

    check_minibatch_split(config, config.run.workers)


def dataset_hash(config: TrainConfig) -> str:
    """Return the content hash of the config's dataset (reads only its manifest)."""
    from orchestrator.data_cache import read_manifest

    return read_manifest(config.data.path)["content_sha256"]


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to the cluster at `address` or $RAY_ADDRESS, else start a local Ray, once."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        # Local workers inherit this process's environment, so nothing goes through runtime_env.
        ray.init(num_cpus=num_cpus, resources={TRIAL_DRIVER_RESOURCE: LOCAL_TRIAL_DRIVER_SLOTS},
                 log_to_driver=True)
        return
    env_vars = {key: os.environ[key] for key in FORWARDED_VARIABLES if key in os.environ}
    ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=True)


def require_tracking() -> str:
    """Return the MLflow tracking URI, or raise UserError when neither the services nor a variable set one."""
    from gan.errors import UserError

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise UserError(f"no MLflow tracking server: no env file in {state_dir()} and MLFLOW_TRACKING_URI is "
                        "not set; run `progan services up` or set MLFLOW_TRACKING_URI")
    return uri


def trial_driver_resources() -> dict[str, float]:
    """Return what one Tune trial driver reserves: the custom resource if the cluster has it."""
    import ray

    if ray.cluster_resources().get(TRIAL_DRIVER_RESOURCE, 0) >= 1:
        return {"CPU": 0, TRIAL_DRIVER_RESOURCE: 1}
    return {"CPU": 0.01}
