"""Rank 0's link to MLflow: the run folder's metric log (the source of truth) and its mirror."""

from __future__ import annotations

import logging
from pathlib import Path

from orchestrator.metric_log import MetricLog

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 60.0


class TrackingSession:
    """Writes metrics and queues artifacts locally; a mirror process sends them to MLflow."""

    def __init__(self, run_dir: Path, tracking_uri: str | None, run_id: str | None):
        self.metric_log = MetricLog(run_dir)
        self.mirror = None
        if tracking_uri and run_id:
            from orchestrator.mlflow_mirror import MlflowMirror

            self.mirror = MlflowMirror(run_dir, tracking_uri, run_id, log_path=Path(run_dir) / "mirror.log")
        else:
            log.warning("no MLflow run given: metrics stay in %s only", self.metric_log.path)

    @classmethod
    def for_worker(cls, loop_config: dict, run_dir: Path) -> TrackingSession:
        return cls(run_dir, loop_config.get("tracking_uri"), loop_config.get("run_id"))

    def log_metrics(self, metrics: dict[str, float], kimg: float) -> None:
        self.metric_log.append(kimg, metrics)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.mirror is not None:
            self.mirror.queue_artifact(path, artifact_path)

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.close(CLOSE_TIMEOUT_S)
