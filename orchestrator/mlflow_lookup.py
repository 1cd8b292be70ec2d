"""Driver-side MLflow look-ups: runs by tag, sweep children, one-off metrics and the config artifact."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from gan.config import TrainConfig, config_to_dict

PARENT_RUN_TAG = "mlflow.parentRunId"


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def find_run_by_tag(experiment_id: str, tag: str, value: str) -> str | None:
    """Return the newest run of the experiment whose `tag` equals `value`, or None."""
    runs = _client().search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run = runs[0]
    if run.info.status != "RUNNING":
        _client().update_run(run.info.run_id, status="RUNNING")
    return run.info.run_id


def latest_tag_value(experiment: str, tag: str, prefix: str) -> str | None:
    """Return the `tag` value of the newest run in `experiment` whose value starts with `prefix`."""
    client = _client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{tag}` LIKE '{prefix}%'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].data.tags[tag] if runs else None


def close_children(parent_run_id: str, total_kimg: float) -> int:
    """End the children still RUNNING and return their count.

    Tune ends a trial's actor as soon as the trial reports its last result (or the scheduler stops
    it), so the trial cannot end its own run. A child that reached `total_kimg` is FINISHED; the others
    were stopped early by the scheduler and are KILLED with the tag progan.stopped_early.
    """
    client = _client()
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}' "
                                                "and attributes.status = 'RUNNING'")
    for child in children:
        reached = child.data.metrics.get("kimg", 0.0)
        target = float(child.data.params.get("schedule.total_kimg", total_kimg))
        if reached >= target - 1e-6:
            client.set_terminated(child.info.run_id, "FINISHED")
        else:
            client.set_tag(child.info.run_id, "progan.stopped_early", "true")
            client.set_terminated(child.info.run_id, "KILLED")
    return len(children)


def log_metrics(run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    timestamp = round(time.time() * 1000)
    _client().log_batch(run_id, metrics=[Metric(k, float(v), timestamp, step) for k, v in metrics.items()])


def log_config_artifact(run_id: str, config: TrainConfig, config_path: str) -> None:
    """Store the resolved config (JSON) and the config file as given among the run's artifacts."""
    client = _client()
    with tempfile.TemporaryDirectory() as folder:
        resolved = Path(folder) / "resolved_config.json"
        resolved.write_text(json.dumps(config_to_dict(config), indent=2, default=str))
        client.log_artifact(run_id, str(resolved), "config")
    if config_path and Path(config_path).is_file():
        client.log_artifact(run_id, config_path, "config")
