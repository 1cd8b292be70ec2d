"""`progan train` on a real local Ray (2 CPUs) with SeaweedFS and MLflow: metrics, artifacts, S3."""

import argparse
import json
import os
import signal
import threading
import time

import pytest

from gan.config import config_from_dict
from orchestrator import storage
from orchestrator.train_run import run_training

pytestmark = pytest.mark.slow


def tiny_config(data_path, name, total_kimg=3.0, workers=2, max_failures=0):
    return config_from_dict({
        "seed": 3,
        "model": {"resolution": 16, "channels": 1, "latent_size": 16, "fmap_base": 64, "fmap_max": 16},
        "data": {"path": data_path},
        "schedule": {"stable_kimg": 1, "fade_kimg": 1, "total_kimg": total_kimg,
                     "minibatch": {4: 16, 8: 16, 16: 16}},
        "metrics": {"every_kimg": 1, "swd_images": 64, "fid_images": 64, "grid_size": 4},
        "checkpoint": {"every_kimg": 1, "keep_last": 2},
        "run": {"name": name, "experiment": "test-train", "workers": workers,
                "storage": "s3://progan/test-runs", "max_failures": max_failures},
    })


def train_args(output="json"):
    return argparse.Namespace(workers=None, gpu=False, address=None, config="tiny.yaml", output=output)


def mlflow_run(name):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("test-train")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`progan.run_name` = '{name}'")
    assert len(runs) == 1
    return client, runs[0]


def test_two_worker_run_logs_everything(ray_2_cpus, faces_in_s3, capsys):
    config = tiny_config(faces_in_s3, "two-workers")
    assert run_training(config, train_args()) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kimg"] >= 3.0

    keys = storage.list_keys("s3://progan/test-runs/two-workers")
    checkpoints = {k.split("/")[0] for k in keys if k.startswith("kimg-") and k.endswith("state.pt")}
    assert len(checkpoints) == 2  # keep_last

    client, run = mlflow_run("two-workers")
    assert run.info.status == "FINISHED"
    kimg_steps = [m.step for m in client.get_metric_history(run.info.run_id, "kimg")]
    assert sorted(kimg_steps) == [0, 1, 2, 3]
    swd_steps = [m.step for m in client.get_metric_history(run.info.run_id, "swd/avg")]
    assert sorted(swd_steps) == [0, 1, 2, 3]
    for key in ("loss/G", "loss/D", "swd/16", "lod", "resolution", "images_per_sec"):
        assert client.get_metric_history(run.info.run_id, key), key
    grids = [a.path for a in client.list_artifacts(run.info.run_id, "grids")]
    assert len(grids) == 4
    models = {a.path for a in client.list_artifacts(run.info.run_id, "models")}
    assert models == {"models/G_ema-best.pt", "models/G_ema-final.pt"}
    assert run.data.tags["progan.workers"] == "2"
    assert run.data.params["model.fmap_max"] == "16"
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert all(secret not in str(v) for v in {**run.data.params, **run.data.tags}.values())


def _train_worker_pids():
    """Return pids of Ray Train worker processes (Ray sets their title to ray::RayTrainWorker...)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().decode(errors="replace")
        except OSError:
            continue
        if command.startswith("ray::RayTrainWorker"):
            pids.append(int(entry))
    return sorted(pids)


def test_killed_worker_resumes_without_gap(ray_2_cpus, faces_in_s3, capsys):
    config = tiny_config(faces_in_s3, "killed-worker", total_kimg=6.0, max_failures=2)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(code=run_training(config, train_args())))
    thread.start()
    killed = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and thread.is_alive():
        keys = storage.list_keys("s3://progan/test-runs/killed-worker") if storage.exists(
            "s3://progan/test-runs/killed-worker") else []
        if any(k.endswith("state.pt") for k in keys):
            pids = _train_worker_pids()
            if pids:
                killed = pids[-1]
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.5)
    thread.join(timeout=600)
    assert killed is not None, "no worker was killed"
    assert outcome.get("code") == 0

    client, run = mlflow_run("killed-worker")
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "kimg"))
    assert steps == [0, 1, 2, 3, 4, 5, 6]


def test_tracking_outage_loses_no_point(ray_2_cpus, faces_in_s3, services):
    from orchestrator import services as embedded_services
    from orchestrator.services import processes
    from orchestrator.services.processes import ProcessRecord
    from orchestrator.services.state import StatePaths, read_services

    config = tiny_config(faces_in_s3, "tracking-outage", total_kimg=6.0, workers=1)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(code=run_training(config, train_args())))
    thread.start()

    run_dir = services["state_dir"] / "runs" / "tracking-outage"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (run_dir / "metrics.jsonl").exists():
        time.sleep(0.2)
    paths = StatePaths.resolve(services["state_dir"])
    entry = read_services(paths)["services"]["mlflow"]
    processes.stop(ProcessRecord.from_dict(entry), 5.0)
    stopped_at = time.monotonic()
    # Training goes on while MLflow is down: the metric log keeps growing.
    lines_during_outage = 0
    while time.monotonic() - stopped_at < 15 and thread.is_alive():
        lines_during_outage = len((run_dir / "metrics.jsonl").read_text().splitlines())
        time.sleep(0.5)
    embedded_services.up(services["state_dir"])
    thread.join(timeout=600)
    assert outcome.get("code") == 0
    assert lines_during_outage >= 2

    client, run = mlflow_run("tracking-outage")
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "kimg"))
    assert steps == [0, 1, 2, 3, 4, 5, 6]
