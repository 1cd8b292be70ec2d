"""Start, stop and report the embedded services (SeaweedFS S3 store and MLflow tracking server)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from orchestrator.services import mlflow_server, processes, seaweedfs
from orchestrator.services.processes import ProcessRecord
from orchestrator.services.state import (StatePaths, read_services, state_lock, write_env_file,
                                         write_services)

log = logging.getLogger(__name__)

# Data, checkpoints and Ray run storage go to DATA_BUCKET; MLflow artifacts to ARTIFACT_BUCKET.
DATA_BUCKET = "progan"
ARTIFACT_BUCKET = mlflow_server.ARTIFACT_BUCKET
BUCKETS = (DATA_BUCKET, ARTIFACT_BUCKET)

SERVICES = (seaweedfs.SERVICE, mlflow_server.SERVICE)  # start order; `down` stops in reverse
LABELS = {seaweedfs.SERVICE: "SeaweedFS", mlflow_server.SERVICE: "MLflow server"}

UP_TIMEOUT_S = 90.0
# SeaweedFS 4.48 waits a fixed 15 s on SIGTERM for its filer's gRPC streams before it closes its
# stores, so a graceful stop needs more than that.
STOP_TIMEOUT_S = 30.0
# Stopping servers that failed to come up: nothing of value is in flight.
FAILED_START_STOP_TIMEOUT_S = 5.0
HEALTH_POLL_INTERVAL_S = 0.2
# How long `up` waits for the previous ports to become free before it picks new ones.
PORT_REUSE_WAIT_S = 3.0
LOG_TAIL_BYTES = 4096


class ServiceError(RuntimeError):
    """A service that exited during startup or did not become healthy in time."""


def up(state_dir: str | os.PathLike | None = None, *, timeout_s: float = UP_TIMEOUT_S) -> dict:
    """Start whichever services are not running and wait until both pass their health checks.

    Then create the buckets and write STATE/env. Returns the status report plus `started`, the
    list of services that this call started.

    NOTE: after a restart on existing data, SeaweedFS can answer reads of old objects with
    InternalError for a few seconds, until its volume server has re-registered; boto3 retries cover
    most of that window but not all of it on a loaded machine.
    """
    paths = StatePaths.resolve(state_dir)
    paths.create()
    deadline = time.monotonic() + timeout_s
    with state_lock(paths):
        record = read_services(paths)
        credentials = seaweedfs.load_or_create_credentials(paths)
        started: list[str] = []
        try:
            s3_endpoint = _ensure_seaweedfs(paths, record, started)
            s3_env = seaweedfs.client_env(s3_endpoint, credentials)
            mlflow_uri = _ensure_mlflow(paths, record, s3_env, started)
            client = seaweedfs.probe_client(s3_endpoint, credentials)
            _wait_until_healthy(paths, record, client, credentials, deadline, timeout_s)
            seaweedfs.ensure_buckets(client, BUCKETS)
        except BaseException:
            paths.env_file.unlink(missing_ok=True)
            _stop_started(paths, record, started)
            raise
        write_env_file(paths, {"MLFLOW_TRACKING_URI": mlflow_uri,
                               "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, **s3_env})
    report = status(paths.root)
    report["started"] = started
    return report


def down(state_dir: str | os.PathLike | None = None, *,
         timeout_s: float = STOP_TIMEOUT_S) -> dict:
    """Stop the processes recorded in STATE/services.json (only those) and remove STATE/env.

    Each gets SIGTERM, then SIGKILL after `timeout_s`; a recorded pid that no longer runs the
    recorded command is not signalled. Data, logs and credentials stay for the next `up`.
    """
    paths = StatePaths.resolve(state_dir)
    results: dict[str, dict[str, Any]] = {}
    if not paths.services_file.exists():
        return {"state_dir": str(paths.root), "services": results}
    with state_lock(paths):
        record = read_services(paths)
        for name in reversed(SERVICES):
            entry = record["services"].get(name)
            if not entry:
                continue
            process = ProcessRecord.from_dict(entry)
            outcome = processes.stop(process, timeout_s) if process else "not running"
            if name == seaweedfs.SERVICE and entry.get("ports"):
                seaweedfs.remove_local_sockets(entry["ports"])
            results[name] = {"pid": process.pid if process else None, "result": outcome}
            _forget_process(entry)
            write_services(paths, record)
        paths.env_file.unlink(missing_ok=True)
    return {"state_dir": str(paths.root), "services": results}


def status(state_dir: str | os.PathLike | None = None) -> dict:
    """Report what runs and where, without secrets: URIs, pids, ports, health and log files."""
    paths = StatePaths.resolve(state_dir)
    record = read_services(paths) if paths.services_file.exists() else {"services": {}}
    s3_entry = record["services"].get(seaweedfs.SERVICE, {})
    mlflow_entry = record["services"].get(mlflow_server.SERVICE, {})

    s3_running = processes.is_running(ProcessRecord.from_dict(s3_entry))
    s3_endpoint = seaweedfs.endpoint_url(s3_entry["ports"]) if s3_running else None
    s3_healthy = s3_running and seaweedfs.is_healthy(
        seaweedfs.probe_client(s3_endpoint, seaweedfs.read_credentials(paths)))

    mlflow_running = processes.is_running(ProcessRecord.from_dict(mlflow_entry))
    mlflow_uri = mlflow_server.tracking_uri(mlflow_entry["port"]) if mlflow_running else None
    mlflow_healthy = mlflow_running and mlflow_server.is_healthy(mlflow_uri)

    return {
        "state_dir": str(paths.root),
        "env_file": str(paths.env_file) if paths.env_file.exists() else None,
        "mlflow_tracking_uri": mlflow_uri,
        "s3_endpoint": s3_endpoint,
        "buckets": list(BUCKETS),
        "artifacts_destination": mlflow_server.ARTIFACTS_DESTINATION,
        "services": {
            seaweedfs.SERVICE: _service_report(paths, seaweedfs.SERVICE, s3_entry, s3_running,
                                               s3_healthy, port=s3_entry.get("ports", {}).get("s3"),
                                               url=s3_endpoint, ports=s3_entry.get("ports")),
            mlflow_server.SERVICE: _service_report(paths, mlflow_server.SERVICE, mlflow_entry,
                                                   mlflow_running, mlflow_healthy,
                                                   port=mlflow_entry.get("port"), url=mlflow_uri),
        },
    }


def _service_report(paths: StatePaths, name: str, entry: dict, running: bool, healthy: bool,
                    **details: Any) -> dict[str, Any]:
    return {"running": running, "healthy": healthy, "pid": entry.get("pid") if running else None,
            **details, "log": str(paths.log_file(name))}


def _ensure_seaweedfs(paths: StatePaths, record: dict, started: list[str]) -> str:
    """Start SeaweedFS unless the recorded process runs; return its S3 endpoint URL."""
    entry = record["services"].get(seaweedfs.SERVICE, {})
    if processes.is_running(ProcessRecord.from_dict(entry)):
        return seaweedfs.endpoint_url(entry["ports"])
    # Reuse the previous ports when they are free, so URLs that the user saved keep working.
    ports = entry.get("ports")
    if (not ports or set(ports) != set(seaweedfs.PORT_NAMES)
            or not processes.wait_ports_available(list(ports.values()), PORT_REUSE_WAIT_S)):
        ports = dict(zip(seaweedfs.PORT_NAMES, processes.free_ports(len(seaweedfs.PORT_NAMES))))
    seaweedfs.prepare_data_dirs(paths)
    argv = seaweedfs.server_argv(seaweedfs.find_weed_binary(), paths, ports)
    process = processes.start_detached(argv, log_path=paths.log_file(seaweedfs.SERVICE),
                                       env=seaweedfs.server_env(), cwd=paths.seaweedfs_dir)
    record["services"][seaweedfs.SERVICE] = {**process.to_dict(), "ports": ports}
    write_services(paths, record)
    started.append(seaweedfs.SERVICE)
    return seaweedfs.endpoint_url(ports)


def _ensure_mlflow(paths: StatePaths, record: dict, s3_env: dict[str, str],
                   started: list[str]) -> str:
    """Start the MLflow server unless the recorded one runs against the same S3 endpoint; return
    its tracking URI."""
    entry = record["services"].get(mlflow_server.SERVICE, {})
    process = ProcessRecord.from_dict(entry)
    if processes.is_running(process):
        if entry.get("s3_endpoint") == s3_env["AWS_ENDPOINT_URL"]:
            return mlflow_server.tracking_uri(entry["port"])
        # Its artifact proxy points at an S3 endpoint that no longer exists.
        log.info("restarting the MLflow server (pid %d) for the new S3 endpoint", process.pid)
        processes.stop(process, STOP_TIMEOUT_S)
    port = entry.get("port")
    if not port or not processes.wait_ports_available([port], PORT_REUSE_WAIT_S):
        port = processes.free_ports(1)[0]
    argv = mlflow_server.server_argv(paths, port)
    process = processes.start_detached(argv, log_path=paths.log_file(mlflow_server.SERVICE),
                                       env=mlflow_server.server_env(s3_env), cwd=paths.mlflow_dir)
    record["services"][mlflow_server.SERVICE] = {**process.to_dict(), "port": port,
                                                 "s3_endpoint": s3_env["AWS_ENDPOINT_URL"]}
    write_services(paths, record)
    started.append(mlflow_server.SERVICE)
    return mlflow_server.tracking_uri(port)


def _wait_until_healthy(paths: StatePaths, record: dict, client,
                        credentials: seaweedfs.S3Credentials, deadline: float,
                        timeout_s: float) -> None:
    """Poll both health checks until they pass; raise ServiceError when a service exits or the
    deadline passes."""
    pending = list(SERVICES)
    while pending:
        for name in list(pending):
            entry = record["services"][name]
            if _is_healthy(name, entry, client):
                pending.remove(name)
            elif not processes.is_running(ProcessRecord.from_dict(entry)):
                raise ServiceError(f"{LABELS[name]} exited during startup; see "
                                   f"{paths.log_file(name)}{_log_tail(paths, name, credentials)}")
        if pending and time.monotonic() > deadline:
            name = pending[0]
            raise ServiceError(f"{LABELS[name]} did not become healthy within {timeout_s:.0f} s; "
                               f"see {paths.log_file(name)}{_log_tail(paths, name, credentials)}")
        if pending:
            time.sleep(HEALTH_POLL_INTERVAL_S)


def _is_healthy(name: str, entry: dict, client) -> bool:
    if name == seaweedfs.SERVICE:
        return seaweedfs.is_healthy(client)
    return mlflow_server.is_healthy(mlflow_server.tracking_uri(entry["port"]))


def _log_tail(paths: StatePaths, name: str, credentials: seaweedfs.S3Credentials) -> str:
    """Return ' (last log line: ...)' with the secret key masked, or '' for an empty log."""
    path = paths.log_file(name)
    try:
        with open(path, "rb") as stream:
            stream.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            lines = stream.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    last = last.replace(credentials.secret_access_key, "***")[:300]
    return f" (last log line: {last})" if last else ""


def _stop_started(paths: StatePaths, record: dict, started: list[str]) -> None:
    """Stop the services that this `up` started before it failed, and forget their pids."""
    for name in reversed(started):
        entry = record["services"][name]
        process = ProcessRecord.from_dict(entry)
        if process is not None:
            processes.stop(process, FAILED_START_STOP_TIMEOUT_S)
        if name == seaweedfs.SERVICE:
            seaweedfs.remove_local_sockets(entry.get("ports", {}))
        _forget_process(entry)
    write_services(paths, record)


def _forget_process(entry: dict) -> None:
    """Drop the pid, command line and start time; keep the ports for the next `up`."""
    for key in ("pid", "argv", "start_time"):
        entry[key] = None
