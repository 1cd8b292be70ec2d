"""Everything the product sends to MLflow: experiments, sweep and trial runs, params, tags, metrics, artifacts.

Runs are created and ended here with explicit run ids (never through MLFLOW_RUN_ID or an active fluent
run). Metrics and artifacts go through `MetricLog` and `MlflowMirror`, which keep everything in the run
folder first, so a tracking server outage loses nothing. Params and tags pass through `redact_secrets`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gan.config import flatten_config
from gan.errors import UserError
from orchestrator.metric_log import MetricLog, MirrorBacklog, check_metric_key, kimg_to_step, queue_artifact
from orchestrator.mlflow_mirror import MlflowMirror

__all__ = [
    "MetricLog", "MirrorBacklog", "MlflowMirror", "queue_artifact", "kimg_to_step",
    "ensure_experiment", "start_run", "find_or_create_child_run", "log_params", "end_run", "run_tags",
    "git_commit", "find_secrets", "assert_no_secrets", "redact_secrets",
]

TRIAL_ID_TAG = "progan.trial_id"
PARENT_RUN_TAG = "mlflow.parentRunId"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
HYPERPARAMETER_METRIC_PREFIX = "hp/"
# MLflow 3.17 limits (mlflow/utils/validation.py).
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
GIT_TIMEOUT_S = 5

REDACTED = "[redacted]"
# Environment variables whose values are secrets, besides any variable named like one.
SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN",
                   "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# A key (param, tag or environment variable name) that names a secret: the word must stand between
# separators, so that `TOKENIZERS_PARALLELISM` or `schedule.fade_kimg` do not match.
SECRET_NAME_PATTERN = re.compile(
    r"(^|[._\-/])(secret|password|passwd|token|credentials?|access[_-]?key|secret[_-]?key|api[_-]?key)"
    r"([._\-/]|$)", re.IGNORECASE)
# Secret values at least this long are also found inside longer values, such as a URI with credentials.
# Shorter ones match only a whole value, because short strings such as "true" occur everywhere.
MIN_EMBEDDED_SECRET_LENGTH = 6
TRIAL_ID_PATTERN = re.compile(r"^[\w.\-:]+$")

_logger = logging.getLogger(__name__)


def _client(tracking_uri: str | None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


# ---- secrets -------------------------------------------------------------------------------------

def _secret_values(environ: Mapping[str, str]) -> set[str]:
    names = {name for name in environ if name in SECRET_ENV_VARS or SECRET_NAME_PATTERN.search(name)}
    return {environ[name] for name in names if environ[name]}


def find_secrets(mapping: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> list[str]:
    """Return the keys of `mapping` whose name looks like a secret or whose value contains one
    of the secret values in the environment."""
    secrets = _secret_values(os.environ if environ is None else environ)
    found = []
    for key, value in mapping.items():
        text = str(value)
        if text == REDACTED:
            continue
        named_secret = bool(SECRET_NAME_PATTERN.search(str(key))) and text not in ("", "None")
        holds_secret = any(text == secret or (len(secret) >= MIN_EMBEDDED_SECRET_LENGTH and secret in text)
                           for secret in secrets)
        if named_secret or holds_secret:
            found.append(key)
    return found


def assert_no_secrets(mapping: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """Raise ValueError naming the keys (never the values) that contain secrets."""
    keys = find_secrets(mapping, environ)
    if keys:
        raise ValueError(f"secret values under keys {sorted(keys)}: they must not reach MLflow params or tags")


def redact_secrets(mapping: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return a copy of `mapping` with every value that contains a secret replaced by '[redacted]'."""
    keys = set(find_secrets(mapping, environ))
    if keys:
        _logger.warning("redacted secret values under keys %s before sending them to MLflow", sorted(keys))
    return {key: REDACTED if key in keys else value for key, value in mapping.items()}


# ---- experiments and runs ----------------------------------------------------------------------

def ensure_experiment(name: str, tracking_uri: str | None = None) -> str:
    """Return the id of experiment `name`, creating it (artifact location chosen by the server) if missing."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name)
        except MlflowException as error:
            # Another process created it between the lookup and the create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise error
    if experiment.lifecycle_stage == "deleted":
        raise UserError(f"MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted: restore it "
                        f"with `mlflow experiments restore --experiment-id {experiment.experiment_id}` "
                        "or choose another run.experiment")
    return experiment.experiment_id


def _tag_values(tags: Mapping[str, Any] | None) -> dict[str, str]:
    values = {}
    for key, value in (tags or {}).items():
        text = str(value)
        if len(text) > MAX_TAG_VALUE_LENGTH:
            _logger.warning("tag %s is %d characters long; truncated to MLflow's limit of %d",
                            key, len(text), MAX_TAG_VALUE_LENGTH)
            text = text[:MAX_TAG_VALUE_LENGTH]
        values[key] = text
    return redact_secrets(values)


def start_run(experiment_id: str, run_name: str, tags: Mapping[str, Any] | None = None,
              parent_run_id: str | None = None, tracking_uri: str | None = None) -> str:
    """Create a run (nested under `parent_run_id` when given) and return its id."""
    all_tags = dict(tags or {})
    if parent_run_id is not None:
        all_tags[PARENT_RUN_TAG] = parent_run_id
    run = _client(tracking_uri).create_run(experiment_id, run_name=run_name, tags=_tag_values(all_tags))
    return run.info.run_id


def find_or_create_child_run(experiment_id: str, parent_run_id: str, trial_id: str, run_name: str,
                             tags: Mapping[str, Any] | None = None, tracking_uri: str | None = None) -> str:
    """Return the run of trial `trial_id` under `parent_run_id`, creating it on the first call.

    A retried trial gets the same run back, set to RUNNING again, with `tags` updated.
    """
    from mlflow.entities import RunTag, ViewType

    if not TRIAL_ID_PATTERN.match(trial_id):
        raise ValueError(f"invalid trial id {trial_id!r}: use letters, digits and _ . - :")
    client = _client(tracking_uri)
    query = f"tags.`{TRIAL_ID_TAG}` = '{trial_id}' and tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'"
    runs = client.search_runs([experiment_id], filter_string=query, run_view_type=ViewType.ACTIVE_ONLY,
                              max_results=10, order_by=["attributes.start_time ASC"])
    all_tags = {**(tags or {}), TRIAL_ID_TAG: trial_id}
    if not runs:
        return start_run(experiment_id, run_name, all_tags, parent_run_id, tracking_uri)

    run_id = runs[0].info.run_id
    if len(runs) > 1:
        _logger.warning("trial %s has %d runs under parent %s; using the oldest, %s",
                        trial_id, len(runs), parent_run_id, run_id)
    if runs[0].info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    tag_entities = [RunTag(key, value) for key, value in _tag_values(all_tags).items()]
    for start in range(0, len(tag_entities), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, tags=tag_entities[start:start + MAX_PARAMS_PER_BATCH])
    return run_id


def end_run(run_id: str, status: str = "FINISHED", tracking_uri: str | None = None) -> None:
    """Mark the run terminated with `status`: FINISHED, FAILED or KILLED."""
    if status not in RUN_STATUSES:
        raise ValueError(f"invalid run status {status!r}: expected one of {RUN_STATUSES}")
    _client(tracking_uri).set_terminated(run_id, status)


# ---- params and tags ------------------------------------------------------------------------------

def _is_mutable(key: str, mutable_keys: Iterable[str]) -> bool:
    return any(key == mutable or key.startswith(mutable + ".") for mutable in mutable_keys)


def _param_value(key: str, value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    if len(text) > MAX_PARAM_VALUE_LENGTH:
        _logger.warning("param %s is %d characters long; truncated to MLflow's limit of %d",
                        key, len(text), MAX_PARAM_VALUE_LENGTH)
        text = text[:MAX_PARAM_VALUE_LENGTH]
    return text


def log_params(run_id: str, params: Mapping[str, Any], *, mutable_keys: Iterable[str] = (),
               kimg: float = 0.0, tracking_uri: str | None = None) -> dict[str, str]:
    """Log flat params in batches of 100, values as strings cut to 6000 characters, secrets redacted.

    Keys in `mutable_keys` (or under them, `key.sub`) are hyperparameters that a scheduler such as PBT
    changes during the run. MLflow params cannot change, so they are logged as metrics `hp/<key>` at
    step round(kimg) instead. Returns the params as logged.
    """
    from mlflow.entities import Param

    mutable_keys = tuple(mutable_keys)
    fixed = {key: _param_value(key, value) for key, value in params.items()
             if not _is_mutable(key, mutable_keys)}
    fixed = redact_secrets(fixed)
    hyperparameters = {key: value for key, value in params.items() if _is_mutable(key, mutable_keys)}

    client = _client(tracking_uri)
    entries = [Param(key, value) for key, value in fixed.items()]
    for start in range(0, len(entries), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=entries[start:start + MAX_PARAMS_PER_BATCH])
    _log_hyperparameters(run_id, hyperparameters, kimg, client)
    return fixed


def _log_hyperparameters(run_id: str, values: Mapping[str, Any], kimg: float, client) -> None:
    """Log hyperparameter values as metrics `hp/<key>` at step round(kimg)."""
    from mlflow.entities import Metric

    timestamp_ms = round(time.time() * 1000)
    metrics = []
    for key, value in values.items():
        if isinstance(value, (str, bytes, bool)) or not isinstance(value, (int, float)):
            raise ValueError(f"mutable hyperparameter {key!r} = {value!r} is not a number, "
                             "so it cannot be logged as a metric")
        name = HYPERPARAMETER_METRIC_PREFIX + key
        check_metric_key(name)
        metrics.append(Metric(name, float(value), timestamp_ms, kimg_to_step(kimg)))
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])


def git_commit(path: str | os.PathLike | None = None) -> str:
    """Return the commit checked out at `path` (default: this package's folder), or "unknown"."""
    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else "unknown"


def run_tags(config, dataset_hash: str, workers: int, device_kind: str) -> dict[str, str]:
    """Return the tags that identify how a run was made: code commit, data, workers and device."""
    flat = flatten_config(config)
    tags = {
        GIT_COMMIT_TAG: git_commit(),
        "progan.dataset_sha256": dataset_hash,
        "progan.workers": str(workers),
        "progan.device": device_kind,
        "progan.resolution": str(flat.get("model.resolution")),
        "progan.schedule_preset": str(flat.get("schedule.preset")),
    }
    return _tag_values(tags)
