"""Mirror of a run folder's metric log and artifact outbox into one MLflow run, surviving server outages.

`MlflowMirror` starts a sender process (`python -m orchestrator.mlflow_mirror`) that follows
metrics.jsonl and the outbox, sends new entries in order, and records its progress in the run folder.
A separate process is used because MLflow 3.17 reads MLFLOW_HTTP_REQUEST_MAX_RETRIES and
MLFLOW_HTTP_REQUEST_TIMEOUT from os.environ on every request (mlflow/utils/rest_utils.py), so they
cannot be set for one client inside a process without changing every other MLflow call there. In the
sender they are set to fail fast, and the sender retries with its own backoff instead.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from orchestrator.metric_log import (
    METRICS_FILE,
    OUTBOX_FILE,
    MetricRecord,
    MirrorBacklog,
    QueuedArtifact,
    load_state,
    queue_artifact,
    read_backlog,
    read_lines,
    save_state,
)

# MLflow's own batch limit (mlflow/utils/validation.py, MAX_METRICS_PER_BATCH).
MAX_METRICS_PER_BATCH = 1000
DEFAULT_REQUEST_TIMEOUT_S = 10
DEFAULT_POLL_INTERVAL_S = 0.5
DEFAULT_MAX_BACKOFF_S = 30.0
FIRST_BACKOFF_S = 0.5
# How long a sender whose parent died keeps trying to deliver the rest before it exits.
ORPHAN_FLUSH_S = 30.0
# Extra time `close` gives the sender beyond its own deadline, for a request still in flight.
CLOSE_GRACE_S = 2.0
LOCK_FILE = "mlflow-mirror.lock"
STDERR_FD = 2

_logger = logging.getLogger(__name__)
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class ExitCode:
    """Exit statuses of the sender process."""

    DONE = 0
    PENDING = 3  # stopped at the close deadline with data still to send


class MlflowMirror:
    """Sends a run folder's metrics.jsonl and queued artifacts to the MLflow run `run_id`.

    Construction starts the sender process. Appending to the `MetricLog` of the same folder and
    `queue_artifact` only write local files, so they stay fast while MLflow is down. `close` waits a
    bounded time for the backlog to drain and returns what is still pending. That part stays in the run
    folder, and a later `MlflowMirror` on the same folder and run sends it.
    """

    def __init__(self, run_dir: str | os.PathLike, tracking_uri: str, run_id: str, *,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                 poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
                 max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
                 log_path: str | os.PathLike | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.exit_code: int | None = None
        command = [
            sys.executable, "-m", "orchestrator.mlflow_mirror",
            "--run-dir", str(self.run_dir), "--tracking-uri", tracking_uri, "--run-id", run_id,
            "--poll-interval-s", str(poll_interval_s), "--max-backoff-s", str(max_backoff_s),
        ]
        log_file = open(log_path, "ab") if log_path is not None else None
        try:
            # The sender writes only log lines; they go to stderr (or log_path), never to stdout,
            # which carries the command line's results.
            output = log_file if log_file is not None else STDERR_FD
            self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=output, stderr=output,
                                             env=_sender_environment(request_timeout_s), text=True)
        finally:
            if log_file is not None:
                log_file.close()

    @property
    def pid(self) -> int:
        return self._process.pid

    def queue_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Queue a local file or folder for upload into the run's artifacts under `artifact_path`."""
        queue_artifact(self.run_dir, path, artifact_path)

    def backlog(self) -> MirrorBacklog:
        return read_backlog(self.run_dir, self.run_id)

    def close(self, timeout_s: float = 60.0) -> MirrorBacklog:
        """Send what is pending for up to `timeout_s` seconds (plus a short grace), then stop the sender."""
        if self._process.poll() is None:
            try:
                self._process.stdin.write(f"close {timeout_s}\n")
                self._process.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self._process.wait(timeout_s + CLOSE_GRACE_S)
            except subprocess.TimeoutExpired:
                _logger.warning("MLflow mirror sender %d still running %.0f s after close; killing it",
                                self._process.pid, timeout_s + CLOSE_GRACE_S)
                self._process.kill()
                self._process.wait()
        self.exit_code = self._process.returncode
        if self.exit_code not in (ExitCode.DONE, ExitCode.PENDING):
            _logger.warning("MLflow mirror sender %d exited with status %s", self._process.pid, self.exit_code)

        backlog = self.backlog()
        if not backlog.empty:
            _logger.warning("MLflow run %s is still missing %d metric lines and %d queued artifacts "
                            "(last error: %s); they stay in %s for the next MlflowMirror on that folder",
                            self.run_id, backlog.metric_lines, backlog.artifacts, backlog.last_error,
                            self.run_dir)
        return backlog

    def __enter__(self) -> MlflowMirror:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _sender_environment(request_timeout_s: float) -> dict[str, str]:
    env = dict(os.environ)
    # A stale MLFLOW_RUN_ID would not change where this sender logs (it passes run ids explicitly),
    # but MLflow code run on its behalf must not pick it up either.
    env.pop("MLFLOW_RUN_ID", None)
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    env["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(request_timeout_s)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
    return env


class CloseRequest:
    """The parent's close request, read from stdin; end of input without one means the parent died."""

    def __init__(self, orphan_flush_s: float):
        self.orphan_flush_s = orphan_flush_s
        self.requested = threading.Event()
        self.deadline = math.inf
        self._parent_pid = os.getppid()

    def listen(self, stream) -> None:
        thread = threading.Thread(target=self._read, args=(stream,), name="close-listener", daemon=True)
        thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            words = line.split()
            if len(words) == 2 and words[0] == "close":
                self._request(float(words[1]))
                return
        self._request(self.orphan_flush_s)

    def _request(self, timeout_s: float) -> None:
        if not self.requested.is_set():
            self.deadline = time.monotonic() + timeout_s
            self.requested.set()

    def check_parent(self) -> None:
        if os.getppid() != self._parent_pid:
            self._request(self.orphan_flush_s)

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()


class Sender:
    """The loop of the sender process: send what is new, remember how far it got, back off on failure."""

    def __init__(self, run_dir: Path, tracking_uri: str, run_id: str, poll_interval_s: float,
                 max_backoff_s: float, close: CloseRequest):
        from mlflow import MlflowClient

        self.run_dir = run_dir
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.poll_interval_s = poll_interval_s
        self.max_backoff_s = max_backoff_s
        self.close = close
        self.client = MlflowClient(tracking_uri)
        self.state = None
        self.kimg_floor: float | None = None
        self.failing_since: float | None = None
        self.backoff_s = FIRST_BACKOFF_S

    def run(self) -> int:
        if not self._lock_run_dir():
            return ExitCode.PENDING
        self.state = load_state(self.run_dir, self.run_id)
        while True:
            self.close.check_parent()
            # Read before the pass: a close that arrives during it may follow appends the pass missed.
            closing = self.close.requested.is_set()
            drained = self._send_pending()
            if closing and (drained or self.close.remaining_s() <= 0):
                return ExitCode.DONE if drained else ExitCode.PENDING
            if not self.close.requested.is_set():
                self.close.requested.wait(self.poll_interval_s if drained else self.backoff_s)
            elif not drained:
                # Closing with a backlog: keep retrying, but not past the deadline.
                time.sleep(max(0.0, min(self.backoff_s, self.close.remaining_s())))

    def _lock_run_dir(self) -> bool:
        """Hold an exclusive lock on the run folder, so two senders never interleave their sends."""
        self._lock_file = open(self.run_dir / LOCK_FILE, "w")
        announced = False
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if not announced:
                    _logger.info("waiting for another MLflow mirror of %s to exit", self.run_dir)
                    announced = True
            if not self.close.requested.is_set():
                self.close.requested.wait(self.poll_interval_s)
                self.close.check_parent()
            elif self.close.remaining_s() > 0:
                time.sleep(min(self.poll_interval_s, self.close.remaining_s()))
            else:
                return False

    def _send_pending(self) -> bool:
        """Send everything queued; return True when nothing is left."""
        from mlflow.exceptions import MlflowException
        from requests import RequestException

        try:
            if self.kimg_floor is None:
                self.kimg_floor = self._logged_kimg_max()
            self._send_metrics()
            self._send_artifacts()
        except (MlflowException, RequestException, OSError) as error:
            self._note_failure(error)
            return False
        self._note_success()
        return True

    def _logged_kimg_max(self) -> float:
        """Return the largest kimg the run already has in MLflow (-inf when none), e.g. from a run
        that a restarted worker group now continues from an older checkpoint."""
        history = self.client.get_metric_history(self.run_id, "kimg")
        logged = [metric.value for metric in history if not math.isnan(metric.value)]
        floor = max(logged, default=-math.inf)
        if logged:
            _logger.info("MLflow run %s already has kimg up to %g; metric lines at or below it are skipped",
                         self.run_id, floor)
        return floor

    def _send_metrics(self) -> None:
        batch, batch_end, skipped = [], self.state.metrics_offset, 0
        for line, end in read_lines(self.run_dir / METRICS_FILE, self.state.metrics_offset):
            metrics = self._line_to_metrics(line, end)
            if metrics is None:
                skipped += 1
            elif batch and len(batch) + len(metrics) > MAX_METRICS_PER_BATCH:
                self._log_metric_batch(batch, batch_end)
                batch = []
            batch += metrics or []
            batch_end = end
        if skipped:
            _logger.info("skipped %d metric lines at kimg <= %g, which MLflow run %s already has",
                         skipped, self.kimg_floor, self.run_id)
        if batch_end != self.state.metrics_offset:
            self._log_metric_batch(batch, batch_end)

    def _line_to_metrics(self, line: str, end: int) -> list | None:
        """Return the MLflow metrics of one line, or None when the line is to be skipped."""
        from mlflow.entities import Metric

        try:
            record = MetricRecord.from_json(line)
        except (ValueError, KeyError, TypeError) as error:
            _logger.error("%s: unreadable line ending at byte %d, not sent: %s",
                          self.run_dir / METRICS_FILE, end, error)
            return None
        if record.kimg <= self.kimg_floor:
            return None
        timestamp_ms = round(record.time * 1000)
        values = {**record.metrics, "kimg": record.kimg}
        return [Metric(key, value, timestamp_ms, record.step) for key, value in values.items()]

    def _log_metric_batch(self, metrics: list, end_offset: int) -> None:
        # A line with more than MAX_METRICS_PER_BATCH metrics spans several requests. If one of them
        # fails, all are sent again later; MLflow's SQL store ignores a metric identical in key, value,
        # step and timestamp to one it has, so the repeat adds nothing.
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])
        self.state.metrics_offset = end_offset
        save_state(self.run_dir, self.state)

    def _send_artifacts(self) -> None:
        for line, end in read_lines(self.run_dir / OUTBOX_FILE, self.state.outbox_offset):
            artifact = QueuedArtifact.from_json(line)
            if os.path.exists(artifact.path):
                self.client.log_artifact(self.run_id, artifact.path, artifact.artifact_path)
            else:
                _logger.error("queued artifact %s no longer exists; it is not uploaded to MLflow run %s",
                              artifact.path, self.run_id)
                self.state.missing_artifacts.append(artifact.path)
            self.state.outbox_offset = end
            save_state(self.run_dir, self.state)

    def _note_failure(self, error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            if _is_transient(error):
                _logger.warning("MLflow server %s unreachable (%s); pending data stays in %s and is sent "
                                "once the server responds", self.tracking_uri, message, self.run_dir)
            else:
                _logger.error("MLflow run %s rejected the pending data (%s); retrying every %.0f s, "
                              "nothing is dropped", self.run_id, message, self.max_backoff_s)
                self.backoff_s = self.max_backoff_s
            self.state.last_error = message
            save_state(self.run_dir, self.state)
        else:
            _logger.debug("MLflow still failing: %s", message)
            self.backoff_s = min(self.backoff_s * 2, self.max_backoff_s)

    def _note_success(self) -> None:
        if self.failing_since is not None:
            _logger.warning("MLflow server %s reachable again after %.1f s of failures; backlog sent",
                            self.tracking_uri, time.monotonic() - self.failing_since)
            self.failing_since = None
            self.state.last_error = None
            save_state(self.run_dir, self.state)
        self.backoff_s = FIRST_BACKOFF_S


def _is_transient(error: Exception) -> bool:
    """Return True for failures worth retrying soon: no connection, timeouts, HTTP 429 and 5xx."""
    from mlflow.exceptions import MlflowException
    from requests import HTTPError

    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
    elif isinstance(error, HTTPError) and error.response is not None:
        status = error.response.status_code
    else:
        return True
    return status == 429 or status >= 500


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send a run folder's metric log and artifacts to MLflow.")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--poll-interval-s", type=float, default=DEFAULT_POLL_INTERVAL_S)
    parser.add_argument("--max-backoff-s", type=float, default=DEFAULT_MAX_BACKOFF_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s mlflow-mirror[%(process)d]: %(message)s")

    close = CloseRequest(ORPHAN_FLUSH_S)
    close.listen(sys.stdin)
    sender = Sender(args.run_dir, args.tracking_uri, args.run_id, args.poll_interval_s,
                    args.max_backoff_s, close)
    return sender.run()


if __name__ == "__main__":
    sys.exit(main())
