"""Offline checks of the `ray up` cluster definitions and the node scripts in cluster/.

Nothing here reaches AWS, SSH or the network: the YAMLs go through Ray's own config validation,
the start commands run against stub `ray` and `python` programs, and the MLflow start script
binds to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

# Private Ray API: prepare_config merges the provider defaults, validate_config checks the result
# against ray/autoscaler/ray-schema.json. Both are pinned by ray==2.60.0 in pyproject.toml and may
# move in another Ray release.
from ray.autoscaler._private.util import prepare_config, validate_config

from orchestrator.environment import TRIAL_DRIVER_RESOURCE

ROOT = Path(__file__).resolve().parents[1]
AWS_YAML = ROOT / "ray_cluster.yaml"
LOCAL_YAML = ROOT / "cluster" / "local.yaml"
SETUP_NODE = ROOT / "cluster" / "setup_node.sh"
START_MLFLOW = ROOT / "cluster" / "start_mlflow.sh"
CLUSTER_YAMLS = {"aws": AWS_YAML, "local": LOCAL_YAML}

# GPUs per instance, from the AWS EC2 instance type pages (accelerated computing).
AWS_GPUS_PER_INSTANCE = {
    "g5.xlarge": 1, "g5.12xlarge": 4, "g5.48xlarge": 8,
    "g6.12xlarge": 4, "g6.48xlarge": 8,
    "p3.8xlarge": 4, "p3.16xlarge": 8, "p4d.24xlarge": 8, "p5.48xlarge": 8,
}
STUB_HEAD_IP = "10.0.0.7"
MLFLOW_PORT = 5000
METRICS_FLAG = "--metrics-export-port=8080"
OPEN_FILES = 65536


def load_yaml(path: Path) -> dict:
    with open(path) as stream:
        return yaml.safe_load(stream)


def prepared(path: Path) -> dict:
    return prepare_config(load_yaml(path))


def default_route_interface() -> str:
    """Return the interface of the IPv4 default route from /proc/net/route, or '' without one."""
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 1 and fields[1] == "00000000":
            return fields[0]
    return ""


@pytest.mark.parametrize("name", sorted(CLUSTER_YAMLS))
def test_cluster_yaml_passes_ray_validation(name):
    config = prepared(CLUSTER_YAMLS[name])
    validate_config(config)

    assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize("name", sorted(CLUSTER_YAMLS))
def test_unknown_top_level_key_fails_validation(name):
    config = load_yaml(CLUSTER_YAMLS[name])
    config["head_node_typo"] = "head"

    with pytest.raises(jsonschema.ValidationError, match="head_node_typo"):
        validate_config(prepare_config(config))


def test_aws_head_reserves_trial_drivers_not_training():
    config = prepared(AWS_YAML)
    head = config["available_node_types"][config["head_node_type"]]

    assert head["resources"].get(TRIAL_DRIVER_RESOURCE, 0) >= 1
    assert head["resources"].get("CPU") == 0
    assert head["max_workers"] == 0


def test_aws_gpu_worker_types():
    config = prepared(AWS_YAML)
    workers = {name: node for name, node in config["available_node_types"].items()
               if name != config["head_node_type"]}
    gpu_workers = {name: node for name, node in workers.items()
                   if AWS_GPUS_PER_INSTANCE.get(node["node_config"]["InstanceType"], 0) >= 1}

    assert gpu_workers, f"no GPU instance type among {sorted(workers)}"
    for name, node in gpu_workers.items():
        assert node["min_workers"] == 0, name
        assert node["max_workers"] >= 1, name
        assert "GPU" not in node["resources"] or node["resources"]["GPU"] >= 1, name
        profile = node["node_config"].get("IamInstanceProfile", {})
        assert profile.get("Arn", "").startswith("arn:aws:iam::"), name


def test_aws_node_types_pin_image_and_volume():
    config = prepared(AWS_YAML)

    for name, node in config["available_node_types"].items():
        node_config = node["node_config"]
        assert node_config.get("ImageId", "").startswith("ami-"), name
        volumes = [mapping["Ebs"] for mapping in node_config.get("BlockDeviceMappings", [])]
        assert any(ebs.get("VolumeType") == "gp3" and ebs.get("VolumeSize", 0) >= 200 for ebs in volumes), name


def test_docker_image_matches_pinned_ray_and_python():
    docker = prepared(AWS_YAML)["docker"]
    python_tag = f"py{sys.version_info.major}{sys.version_info.minor}"

    assert docker["image"].startswith(f"rayproject/ray:{ray.__version__}-{python_tag}-")
    assert "ray-ml" not in docker["image"]
    assert docker["disable_automatic_runtime_detection"] is True
    assert "--gpus all" in docker["worker_run_options"]
    # The head is a CPU instance, where `docker run --gpus all` fails.
    assert "--gpus all" not in docker.get("run_options", [])
    assert "--gpus all" not in docker.get("head_run_options", [])


@pytest.mark.parametrize("name", sorted(CLUSTER_YAMLS))
def test_setup_commands_install_project(name):
    config = prepared(CLUSTER_YAMLS[name])
    mounts = config["file_mounts"]

    assert mounts["~/progan/cluster"] == "./cluster"
    assert mounts["~/progan/dist"] == "./dist"
    for key in ("head_setup_commands", "worker_setup_commands"):
        installs = [command for command in config[key] if "~/progan/cluster/setup_node.sh" in command]
        assert len(installs) == 1, (key, config[key])
        assert installs[0].split()[-1] == "~/progan/dist"
    assert re.search(r"-m pip install .*\"\$package\"", SETUP_NODE.read_text())


@pytest.fixture
def stub_node(tmp_path):
    """Return (environment, record folder) for running start commands against stub programs."""
    record = tmp_path / "record"
    record.mkdir()
    home = tmp_path / "home"
    bin_dir = home / "progan-venv" / "bin"
    bin_dir.mkdir(parents=True)
    ray_stub = ("#!/usr/bin/env bash\n"
                'out="$RECORD/ray-$1.txt"\n'
                'printf "%s\\n" "$@" > "$out"\n'
                'echo "ulimit=$(ulimit -n)" >> "$out"\n'
                'env | grep -E "^(NCCL_SOCKET_IFNAME|GLOO_SOCKET_IFNAME|MLFLOW_TRACKING_URI)=" >> "$out"\n'
                "exit 0\n")
    python_stub = f"#!/usr/bin/env bash\necho {STUB_HEAD_IP}\n"
    for name, text in (("ray", ray_stub), ("python", python_stub), ("python3", python_stub)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "RECORD": str(record),
           "RAY_HEAD_IP": STUB_HEAD_IP}
    return env, record


def run_start_commands(commands: list[str], env: dict, record: Path) -> tuple[list[str], dict]:
    """Run `ray up` start commands with stubs; return the `ray start` arguments and its environment."""
    for command in commands:
        subprocess.run(["bash", "-c", command], env=env, check=True, timeout=30)
    lines = (record / "ray-start.txt").read_text().splitlines()
    arguments = [line for line in lines if line.startswith("-") or line == "start"]
    variables = dict(line.split("=", 1) for line in lines if not line.startswith("-") and "=" in line)
    return arguments, variables


def hard_limit_allows_open_files() -> bool:
    """Return whether `ulimit -n 65536` can succeed here without raising the hard limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard == resource.RLIM_INFINITY or hard >= OPEN_FILES


@pytest.mark.parametrize("name", sorted(CLUSTER_YAMLS))
def test_head_start_command(name, stub_node):
    env, record = stub_node
    config = prepared(CLUSTER_YAMLS[name])

    commands = config["head_start_ray_commands"]
    arguments, variables = run_start_commands(commands, env, record)

    assert "--head" in arguments
    assert "--dashboard-host=0.0.0.0" in arguments
    assert METRICS_FLAG in arguments
    assert variables["NCCL_SOCKET_IFNAME"] == default_route_interface()
    assert variables["GLOO_SOCKET_IFNAME"] == default_route_interface()
    assert variables["MLFLOW_TRACKING_URI"] == f"http://{STUB_HEAD_IP}:{MLFLOW_PORT}"
    assert f"ulimit -n {OPEN_FILES};" in commands[-1]
    if hard_limit_allows_open_files():
        assert variables["ulimit"] == str(OPEN_FILES)
    assert (record / "ray-stop.txt").exists()


def test_local_head_declares_trial_driver_resource(stub_node):
    env, record = stub_node
    config = prepared(LOCAL_YAML)

    arguments, _ = run_start_commands(config["head_start_ray_commands"], env, record)
    resources = [json.loads(argument.split("=", 1)[1]) for argument in arguments
                 if argument.startswith("--resources=")]

    assert len(resources) == 1, arguments
    assert resources[0].get(TRIAL_DRIVER_RESOURCE, 0) >= 1
    assert "--num-cpus=0" in arguments


@pytest.mark.parametrize("name", sorted(CLUSTER_YAMLS))
def test_worker_start_command(name, stub_node):
    env, record = stub_node
    config = prepared(CLUSTER_YAMLS[name])

    commands = config["worker_start_ray_commands"]
    arguments, variables = run_start_commands(commands, env, record)

    assert f"--address={STUB_HEAD_IP}:6379" in arguments
    assert "--head" not in arguments
    assert METRICS_FLAG in arguments
    assert variables["NCCL_SOCKET_IFNAME"] == default_route_interface()
    assert variables["GLOO_SOCKET_IFNAME"] == default_route_interface()
    assert variables["MLFLOW_TRACKING_URI"] == f"http://{STUB_HEAD_IP}:{MLFLOW_PORT}"
    assert f"ulimit -n {OPEN_FILES};" in commands[-1]
    if hard_limit_allows_open_files():
        assert variables["ulimit"] == str(OPEN_FILES)


@pytest.mark.parametrize("script", [SETUP_NODE, START_MLFLOW], ids=lambda path: path.name)
def test_shell_script_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr


def cluster_files() -> list[Path]:
    return [AWS_YAML, LOCAL_YAML, SETUP_NODE, START_MLFLOW]


@pytest.mark.parametrize("path", cluster_files(), ids=lambda path: path.name)
def test_cluster_file_contains_no_secret(path):
    text = path.read_text()

    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    assert not re.search(r"(SECRET_ACCESS_KEY|SESSION_TOKEN|PASSWORD)\s*[=:]\s*\S", text)
    assert not re.search(r"://\w+:\w+@", text)


def python_env() -> dict:
    """Return an environment whose python3 is this test's interpreter, without cloud settings."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AWS_", "MLFLOW_", "PROGAN_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def run_setup_node(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SETUP_NODE), "--dry-run", *arguments], env=python_env(),
                          capture_output=True, text=True, timeout=60)


def test_setup_node_installs_single_wheel(tmp_path):
    wheel = tmp_path / "progan-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")

    result = run_setup_node(str(tmp_path))
    commands = result.stdout.splitlines()

    assert result.returncode == 0, result.stderr
    assert len(commands) == 2
    assert commands[0].split()[1:] == ["-m", "pip", "install", "--quiet", str(wheel)]
    assert commands[1].split()[1:] == ["-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall",
                                       str(wheel)]


def test_setup_node_creates_venv(tmp_path):
    wheel = tmp_path / "progan-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    venv = tmp_path / "venv"

    result = run_setup_node("--venv", str(venv), "--python", sys.executable, str(wheel))
    commands = result.stdout.splitlines()

    assert result.returncode == 0, result.stderr
    assert commands[0] == f"{sys.executable} -m venv {venv}"
    assert commands[1].startswith(f"{venv}/bin/python -m pip install")


@pytest.mark.parametrize("wheels, source, message", [
    ([], None, "no progan-\\*.whl"),
    (["progan-0.1.0-py3-none-any.whl", "progan-0.2.0-py3-none-any.whl"], None, "found 2 progan wheels"),
    ([], "git+https://github.com/example/progan.git", "not pinned"),
    ([], "git+ssh://git@github.com/example/progan.git", "not pinned"),
], ids=["empty-folder", "two-wheels", "unpinned-https", "unpinned-ssh"])
def test_setup_node_rejects_source(tmp_path, wheels, source, message):
    for name in wheels:
        (tmp_path / name).write_bytes(b"")

    result = run_setup_node(source or str(tmp_path))

    assert result.returncode == 2
    assert re.search(message, result.stderr), result.stderr
    assert result.stdout == ""


def test_setup_node_accepts_pinned_git_ref():
    source = "git+ssh://git@github.com/example/progan.git@v0.1.0"

    result = run_setup_node(source)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith(f"pip install --quiet {source}")


@pytest.mark.parametrize("artifacts, message", [
    (None, "PROGAN_MLFLOW_ARTIFACTS is not set"),
    ("/tmp/artifacts", "must be an s3:// URI"),
])
def test_start_mlflow_rejects_artifacts(tmp_path, artifacts, message):
    env = python_env() | {"PROGAN_MLFLOW_DIR": str(tmp_path), "PROGAN_MLFLOW_HOST": "127.0.0.1"}
    if artifacts:
        env["PROGAN_MLFLOW_ARTIFACTS"] = artifacts

    result = subprocess.run(["bash", str(START_MLFLOW)], env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "server.pid").exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mlflow_state(tmp_path):
    """Yield the server folder; afterwards stop the server's process group by its recorded pid."""
    yield tmp_path
    pid_file = tmp_path / "server.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_start_mlflow_serves_proxied_artifacts(mlflow_state):
    from mlflow.tracking import MlflowClient

    assert shutil.which("setsid"), "start_mlflow.sh needs setsid (util-linux)"
    port = free_port()
    env = python_env() | {
        "PROGAN_MLFLOW_DIR": str(mlflow_state), "PROGAN_MLFLOW_HOST": "127.0.0.1",
        "PROGAN_MLFLOW_PORT": str(port), "PROGAN_MLFLOW_WORKERS": "1",
        "PROGAN_MLFLOW_ARTIFACTS": "s3://progan-test/mlflow",
    }
    expected = f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}"

    first = subprocess.run(["bash", str(START_MLFLOW)], env=env, capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [expected]
    pid = (mlflow_state / "server.pid").read_text().strip()

    second = subprocess.run(["bash", str(START_MLFLOW)], env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [expected]
    assert f"already running (pid {pid})" in second.stderr

    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
    experiment_id = client.create_experiment("cluster-check")
    artifact_location = client.get_experiment(experiment_id).artifact_location
    # Proxied mode: clients upload through the server, never straight to the bucket.
    assert artifact_location.startswith("mlflow-artifacts:")
    assert (mlflow_state / "mlflow.db").exists()
