"""Tracking against a real MLflow server that this module starts, stops and restarts on one port."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from orchestrator.metric_log import METRICS_FILE, MetricLog, MetricRecord
from orchestrator.tracking import (
    REDACTED,
    MlflowMirror,
    assert_no_secrets,
    end_run,
    ensure_experiment,
    find_or_create_child_run,
    log_params,
    queue_artifact,
    run_tags,
    start_run,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT_S = 90
FAST_MIRROR = {"poll_interval_s": 0.1, "max_backoff_s": 1.0, "request_timeout_s": 5}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout_s: float, description: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {description}")
        time.sleep(interval_s)


class MlflowServer:
    """An MLflow server with a SQLite backend and local proxied artifacts, restartable on the same port."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1",
        ]
        # The job runner starts seven extra consumer processes that these tests do not use.
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        wait_until(self._healthy, SERVER_START_TIMEOUT_S, f"MLflow server on port {self.port}", 0.2)

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"MLflow server exited with {self.process.returncode}:\n{log}")
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server and the worker process it started (same process group, led by its pid)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(mlflow_server):
    from mlflow import MlflowClient

    return MlflowClient(mlflow_server.uri)


@pytest.fixture
def experiment_id(mlflow_server):
    return ensure_experiment(f"test-{uuid.uuid4().hex[:8]}", mlflow_server.uri)


def new_run(mlflow_server, experiment_id, name="run") -> str:
    return start_run(experiment_id, name, {"purpose": "test"}, tracking_uri=mlflow_server.uri)


def history(client, run_id: str, key: str) -> list:
    return sorted(client.get_metric_history(run_id, key), key=lambda metric: (metric.step, metric.timestamp))


def step_of(kimg: float) -> int:
    """Round half up, written independently of the code under test."""
    return int(math.floor(kimg + 0.5))


# ---- the local metric log ---------------------------------------------------------------------

def test_metric_log_nonfinite_round_trip(tmp_path):
    log = MetricLog(tmp_path)
    log.append(2.5, {"loss/G": math.nan, "loss/D": math.inf, "fid": -math.inf, "swd/avg": 0.125})

    line = (tmp_path / METRICS_FILE).read_text().splitlines()[0]

    def reject_constant(name):
        raise AssertionError(f"non-standard JSON constant {name} in {line}")

    raw = json.loads(line, parse_constant=reject_constant)
    assert raw["step"] == 3
    assert raw["kimg"] == 2.5
    assert raw["metrics"] == {"loss/G": "NaN", "loss/D": "Infinity", "fid": "-Infinity", "swd/avg": 0.125}
    record = MetricRecord.from_json(line)
    assert math.isnan(record.metrics["loss/G"])
    assert record.metrics["loss/D"] == math.inf
    assert record.metrics["fid"] == -math.inf
    assert record.metrics["swd/avg"] == 0.125


@pytest.mark.parametrize("kimg, metrics, message", [
    (1.0, {"loss G!": 1.0}, "invalid metric key"),
    (1.0, {"a//b": 1.0}, "path normalization"),
    (1.0, {"loss/G": "1.0"}, "not a number"),
    (1.0, {"loss/G": True}, "not a number"),
    (math.nan, {"loss/G": 1.0}, "invalid kimg"),
    (1.0, {"kimg": 2.0}, "record is at kimg"),
])
def test_metric_log_rejects_bad_input(tmp_path, kimg, metrics, message):
    with pytest.raises((ValueError, TypeError), match=message):
        MetricLog(tmp_path).append(kimg, metrics)
    assert not (tmp_path / METRICS_FILE).exists() or (tmp_path / METRICS_FILE).read_text() == ""


def test_metric_log_drops_unfinished_line(tmp_path):
    MetricLog(tmp_path).append(1.0, {"loss/G": 0.5})
    with open(tmp_path / METRICS_FILE, "a") as file:
        file.write('{"step": 2, "kimg": 2.0, "ti')
    MetricLog(tmp_path).append(3.0, {"loss/G": 0.25})
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [MetricRecord.from_json(line).kimg for line in lines] == [1.0, 3.0]


# ---- the mirror -------------------------------------------------------------------------------

def test_sender_environment_is_separate(monkeypatch):
    from orchestrator.mlflow_mirror import _sender_environment

    monkeypatch.setenv("MLFLOW_RUN_ID", "stale-run")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    env = _sender_environment(request_timeout_s=2.5)

    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
    assert "MLFLOW_RUN_ID" not in env
    # This process keeps MLflow's own retry settings.
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
    assert os.environ["MLFLOW_RUN_ID"] == "stale-run"


def test_mirror_sends_metrics_with_kimg_steps(mlflow_server, experiment_id, client, tmp_path):
    run_id = new_run(mlflow_server, experiment_id)
    log = MetricLog(tmp_path)
    points = [(0.5, 4.0), (1.4, math.nan), (2.6, -1.5), (3.0, 0.0)]
    # Explicit, increasing timestamps keep the order of two points at the same step defined.
    start = time.time()
    records = [log.append(kimg, {"loss/G": value, "resolution": 8.0}, timestamp=start + index)
               for index, (kimg, value) in enumerate(points)]
    # One line with more metrics than MLflow takes in one request (1000).
    wide = {f"wide/{index}": float(index) for index in range(1500)}
    log.append(4.0, wide)

    mirror = MlflowMirror(tmp_path, mlflow_server.uri, run_id, **FAST_MIRROR)
    backlog = mirror.close(timeout_s=60)

    assert backlog.empty, backlog
    logged = history(client, run_id, "loss/G")
    assert [metric.step for metric in logged] == [1, 1, 3, 3]
    assert [metric.step for metric in logged] == [step_of(kimg) for kimg, _ in points]
    assert [metric.timestamp for metric in logged] == [round(record.time * 1000) for record in records]
    assert logged[0].value == 4.0
    assert math.isnan(logged[1].value)
    assert logged[2].value == -1.5
    assert logged[3].value == 0.0
    assert [metric.value for metric in history(client, run_id, "kimg")] == [0.5, 1.4, 2.6, 3.0, 4.0]
    run_metrics = client.get_run(run_id).data.metrics
    assert sum(key.startswith("wide/") for key in run_metrics) == 1500
    assert run_metrics["wide/1499"] == 1499.0


def test_mirror_restart_sends_nothing_twice(mlflow_server, experiment_id, client, tmp_path):
    run_id = new_run(mlflow_server, experiment_id)
    log = MetricLog(tmp_path)
    for kimg in (1.0, 2.0, 3.0):
        log.append(kimg, {"loss/D": kimg * 10})
    assert MlflowMirror(tmp_path, mlflow_server.uri, run_id, **FAST_MIRROR).close(60).empty

    for kimg in (4.0, 5.0):
        log.append(kimg, {"loss/D": kimg * 10})
    assert MlflowMirror(tmp_path, mlflow_server.uri, run_id, **FAST_MIRROR).close(60).empty

    logged = history(client, run_id, "loss/D")
    assert [metric.step for metric in logged] == [1, 2, 3, 4, 5]
    assert [metric.value for metric in logged] == [10.0, 20.0, 30.0, 40.0, 50.0]


def test_mirror_skips_steps_already_logged(mlflow_server, experiment_id, client, tmp_path):
    run_id = new_run(mlflow_server, experiment_id)
    first = MetricLog(tmp_path / "first-attempt")
    for kimg in (1.0, 2.0, 3.0, 4.0):
        first.append(kimg, {"loss/G": kimg})
    assert MlflowMirror(first.run_dir, mlflow_server.uri, run_id, **FAST_MIRROR).close(60).empty

    # A restarted worker group on another node: a fresh folder, resumed from the checkpoint at kimg 2.
    second = MetricLog(tmp_path / "second-attempt")
    for kimg in (3.0, 4.0, 5.0, 6.0):
        second.append(kimg, {"loss/G": -kimg})
    assert MlflowMirror(second.run_dir, mlflow_server.uri, run_id, **FAST_MIRROR).close(60).empty

    logged = history(client, run_id, "loss/G")
    assert [metric.step for metric in logged] == [1, 2, 3, 4, 5, 6]
    assert [metric.value for metric in logged] == [1.0, 2.0, 3.0, 4.0, -5.0, -6.0]


def test_mirror_survives_server_outage(mlflow_server, experiment_id, client, tmp_path):
    running_dir, closed_dir = tmp_path / "running", tmp_path / "closed"
    running_run, closed_run = new_run(mlflow_server, experiment_id), new_run(mlflow_server, experiment_id)
    running_log, closed_log = MetricLog(running_dir), MetricLog(closed_dir)
    running = MlflowMirror(running_dir, mlflow_server.uri, running_run, log_path=tmp_path / "running.log",
                           **FAST_MIRROR)
    closed = MlflowMirror(closed_dir, mlflow_server.uri, closed_run, **FAST_MIRROR)
    for kimg in (1.0, 2.0, 3.0):
        running_log.append(kimg, {"loss/G": kimg})
        closed_log.append(kimg, {"loss/G": kimg})
    wait_until(lambda: running.backlog().empty and closed.backlog().empty, 30, "first points sent")

    grid = tmp_path / "fakes-kimg0006.png"
    grid.write_bytes(b"\x89PNG fake grid bytes")
    mlflow_server.stop()
    try:
        append_seconds = []
        for kimg in (4.0, 5.0, 6.0, 7.0, 8.0):
            started = time.perf_counter()
            running_log.append(kimg, {"loss/G": kimg})
            closed_log.append(kimg, {"loss/G": kimg})
            append_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        running.queue_artifact(grid, "grids")
        closed.queue_artifact(grid, "grids")
        append_seconds.append(time.perf_counter() - started)
        assert max(append_seconds) < 0.5, append_seconds

        # A send fails while the server is down, and nothing is marked as sent.
        wait_until(lambda: running.backlog().last_error is not None, 30, "a failed send recorded")
        assert running.backlog().metric_lines == 5
        assert running.backlog().artifacts == 1
        started = time.perf_counter()
        backlog = closed.close(timeout_s=1.0)
        assert time.perf_counter() - started < 5.0
        assert (backlog.metric_lines, backlog.artifacts) == (5, 1)
        assert backlog.last_error is not None
    finally:
        mlflow_server.start()

    wait_until(lambda: running.backlog().empty, 30, "backlog sent after the restart")
    assert running.close(30).empty
    assert MlflowMirror(closed_dir, mlflow_server.uri, closed_run, **FAST_MIRROR).close(60).empty

    for run_id in (running_run, closed_run):
        logged = history(client, run_id, "loss/G")
        assert [metric.step for metric in logged] == [1, 2, 3, 4, 5, 6, 7, 8]
        assert [metric.value for metric in logged] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
        assert [artifact.path for artifact in client.list_artifacts(run_id, "grids")] == [
            "grids/fakes-kimg0006.png"]
        downloaded = client.download_artifacts(run_id, "grids/fakes-kimg0006.png", str(tmp_path / run_id))
        assert Path(downloaded).read_bytes() == grid.read_bytes()

    mirror_log = (tmp_path / "running.log").read_text()
    assert mirror_log.count("unreachable (") == 1, mirror_log
    assert mirror_log.count("reachable again after") == 1, mirror_log


def test_mirror_reports_missing_artifact(mlflow_server, experiment_id, tmp_path):
    run_id = new_run(mlflow_server, experiment_id)
    image = tmp_path / "grid.png"
    image.write_bytes(b"grid")
    queue_artifact(tmp_path / "run", image, "grids")
    image.unlink()

    backlog = MlflowMirror(tmp_path / "run", mlflow_server.uri, run_id, **FAST_MIRROR).close(60)

    assert backlog.artifacts == 0
    assert backlog.missing_artifacts == (str(image.resolve()),)


# ---- runs, params and tags --------------------------------------------------------------------

def test_ensure_experiment_idempotent(mlflow_server, client):
    name = f"test-{uuid.uuid4().hex[:8]}"
    first = ensure_experiment(name, mlflow_server.uri)
    assert ensure_experiment(name, mlflow_server.uri) == first
    # The server chooses the artifact location: proxied artifacts.
    assert client.get_experiment(first).artifact_location.startswith("mlflow-artifacts:")


def test_child_run_reused_by_trial_id(mlflow_server, experiment_id, client):
    uri = mlflow_server.uri
    parent = start_run(experiment_id, "sweep", {"progan.sweep": "lr"}, tracking_uri=uri)
    child = find_or_create_child_run(experiment_id, parent, "abc12_00001", "trial-1", {"lr": "0.001"},
                                     tracking_uri=uri)
    end_run(child, "FAILED", tracking_uri=uri)
    retried = find_or_create_child_run(experiment_id, parent, "abc12_00001", "trial-1", {"attempt": "2"},
                                       tracking_uri=uri)
    other = find_or_create_child_run(experiment_id, parent, "abc12_00002", "trial-2", tracking_uri=uri)

    assert retried == child
    assert other != child
    run = client.get_run(child)
    assert run.info.status == "RUNNING"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["progan.trial_id"] == "abc12_00001"
    assert run.data.tags["attempt"] == "2"
    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(run.info.run_id for run in children) == sorted([child, other])
    with pytest.raises(ValueError, match="invalid trial id"):
        find_or_create_child_run(experiment_id, parent, "x' or '1'='1", "bad", tracking_uri=uri)


def test_log_params_batches_and_limits(mlflow_server, experiment_id, client):
    run_id = new_run(mlflow_server, experiment_id)
    params = {f"group.key{index:03d}": index for index in range(250)}
    params["model.notes"] = "x" * 7000
    params["schedule.resolutions"] = [4, 8, 16]
    params["optim.lr"] = 0.001
    params["schedule.lr.64"] = 0.002
    logged = log_params(run_id, params, mutable_keys=["optim.lr", "schedule.lr"], kimg=12.6,
                        tracking_uri=mlflow_server.uri)

    stored = client.get_run(run_id).data.params
    assert len(stored) == 252
    assert stored == logged
    assert stored["group.key249"] == "249"
    assert stored["model.notes"] == "x" * 6000
    assert json.loads(stored["schedule.resolutions"]) == [4, 8, 16]
    assert "optim.lr" not in stored
    assert "schedule.lr.64" not in stored
    lr = client.get_metric_history(run_id, "hp/optim.lr")
    assert [(metric.step, metric.value) for metric in lr] == [(13, 0.001)]
    assert [metric.value for metric in client.get_metric_history(run_id, "hp/schedule.lr.64")] == [0.002]


def test_secrets_never_in_params_or_tags(mlflow_server, experiment_id, client, monkeypatch):
    secret_key, key_id, password = "fakeSecretKey0123456789", "FAKEACCESSKEYID0001", "fake-password-42"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    params = {
        "run.storage": f"s3://{key_id}:{secret_key}@127.0.0.1:8333/runs",
        "s3.secret_access_key": "written-in-the-config",
        "auth.password": password,
        "service.token": "abc",
        "data.mirror": "false",
        "schedule.fade_kimg": 600,
    }
    tags = {"progan.note": f"logged in with {password}", "progan.workers": "2"}
    with pytest.raises(ValueError, match="secret values"):
        assert_no_secrets(params)

    run_id = start_run(experiment_id, "secrets", tags, tracking_uri=mlflow_server.uri)
    log_params(run_id, params, tracking_uri=mlflow_server.uri)

    run = client.get_run(run_id)
    stored = {**run.data.params, **run.data.tags}
    for value in stored.values():
        for secret in (secret_key, key_id, password, "written-in-the-config"):
            assert secret not in value
    for key in ("run.storage", "s3.secret_access_key", "auth.password", "service.token", "progan.note"):
        assert stored[key] == REDACTED
    assert stored["data.mirror"] == "false"
    assert stored["schedule.fade_kimg"] == "600"
    assert stored["progan.workers"] == "2"
    assert_no_secrets(run.data.params)


def test_run_tags_name_commit_data_workers():
    from gan.config import TrainConfig

    expected_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                     text=True, check=True).stdout.strip()
    tags = run_tags(TrainConfig(), "ab" * 32, workers=2, device_kind="cpu")
    assert tags["mlflow.source.git.commit"] == expected_commit
    assert tags["progan.dataset_sha256"] == "ab" * 32
    assert tags["progan.workers"] == "2"
    assert tags["progan.device"] == "cpu"
    assert tags["progan.resolution"] == "1024"
