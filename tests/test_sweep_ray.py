"""Sweeps on a real local Ray with MLflow and SeaweedFS: nesting, compare, resume, PBT hand-over."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.compare import compare_sweep

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

TINY_BASE = """seed: 5
model: {resolution: 16, channels: 1, latent_size: 16, fmap_base: 64, fmap_max: 16}
data: {path: DATA}
schedule: {stable_kimg: 1, fade_kimg: 1, total_kimg: TOTAL, minibatch: {4: 16, 8: 16, 16: 16}}
metrics: {every_kimg: 1, swd_images: 64, fid_images: 64, grid_size: 2}
checkpoint: {every_kimg: 1, keep_last: 2}
run: {experiment: EXPERIMENT, workers: 1, storage: s3://progan/test-sweeps}
"""


def write_files(tmp_path, data, experiment, total, sweep_text):
    base = tmp_path / "base.yaml"
    base.write_text(TINY_BASE.replace("DATA", data).replace("EXPERIMENT", experiment)
                    .replace("TOTAL", str(total)))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {base}\n" + sweep_text)
    return sweep


def sweep_args(path, resume=False):
    return argparse.Namespace(sweep=str(path), resume=resume, address=None, output="json")


def client_and_children(experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    parents = client.search_runs([found.experiment_id], filter_string="tags.`progan.sweep` != ''")
    assert len(parents) == 1
    parent = parents[0]
    children = client.search_runs([found.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return client, parent, children


def test_sweep_nests_runs_and_ranks(ray_2_cpus, faces_in_s3, tmp_path, capsys):
    from orchestrator.sweep import run_sweep

    path = write_files(tmp_path, faces_in_s3, "test-sweep", 3,
                       "overrides: {schedule.stable_kimg: 0.5, schedule.fade_kimg: 0.5}\n"
                       "search_space: {optim.lr: {grid: [0.0005, 0.004]}}\nscheduler: {type: fifo}\n")
    assert run_sweep(sweep_args(path)) == 0
    rows = json.loads(capsys.readouterr().out)

    client, parent, children = client_and_children("test-sweep")
    assert len(children) == 2
    best_by_run = {}
    for child in children:
        history = client.get_metric_history(child.info.run_id, "swd/avg")
        assert sorted(m.step for m in history) == [0, 1, 2, 3]
        full_res = {m.step for m in client.get_metric_history(child.info.run_id, "lod") if m.value == 0}
        assert full_res == {3}  # phases of 0.5 kimg: 16x16 is stable from kimg 2
        best_by_run[child.info.run_id] = min(m.value for m in history if m.step in full_res)
        assert child.info.status == "FINISHED"
    expected_order = sorted(best_by_run, key=best_by_run.get)
    assert [row["run_id"] for row in rows] == expected_order
    assert {row["optim.lr"] for row in rows} == {"0.0005", "0.004"}
    again = compare_sweep("test-sweep", None, "swd/avg")
    assert [row["run_id"] for row in again] == expected_order


def test_resume_after_killed_driver_skips_finished_trial(ray_2_cpus, faces_in_s3, tmp_path):
    import ray

    path = write_files(tmp_path, faces_in_s3, "test-resume", 2,
                       "search_space: {optim.lr: {grid: [0.001, 0.002]}}\nscheduler: {type: fifo}\n"
                       "max_concurrent_trials: 1\n")
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "orchestrator", "sweep", str(path), "--address", address]
    env = {**os.environ}
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "driver.log", "wb"), start_new_session=True)
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    deadline = time.monotonic() + 400
    finished_run = None
    while time.monotonic() < deadline and driver.poll() is None and finished_run is None:
        time.sleep(1)
        experiment = client.get_experiment_by_name("test-resume")
        if experiment is None:
            continue
        done = client.search_runs([experiment.experiment_id],
                                  filter_string="tags.`mlflow.parentRunId` != '' and attributes.status = 'FINISHED'")
        if done:
            finished_run = done[0]
    assert finished_run is not None, (tmp_path / "driver.log").read_text()[-3000:]
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    steps_before = [m.step for m in client.get_metric_history(finished_run.info.run_id, "kimg")]

    resumed = subprocess.run(command + ["--resume", "--output", "json"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, parent, children = client_and_children("test-resume")
    assert len(children) == 2
    statuses = sorted(child.info.status for child in children)
    assert statuses == ["FINISHED", "FINISHED"]
    steps_after = [m.step for m in client.get_metric_history(finished_run.info.run_id, "kimg")]
    assert steps_after == steps_before  # the finished trial did not train again
    for child in children:
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "kimg"))
        assert steps == [0, 1, 2]


def test_pbt_exploit_puts_mutated_lr_in_force(ray_2_cpus, faces_in_s3, tmp_path):
    from orchestrator.sweep import run_sweep

    sweep_text = """search_space:
  optim.lr: {grid: [0.0001, 0.004]}
scheduler:
  type: pbt
  quantile_fraction: 0.5
  resample_probability: 0.0
  mutations:
    optim.lr: [0.0001, 0.0002, 0.001, 0.004, 0.008]
"""
    path = write_files(tmp_path, faces_in_s3, "test-pbt", 5, sweep_text)
    assert run_sweep(sweep_args(path)) == 0
    client, parent, children = client_and_children("test-pbt")
    assert len(children) == 2
    changed = 0
    for child in children:
        hp = sorted(client.get_metric_history(child.info.run_id, "hp/optim.lr"), key=lambda m: m.timestamp)
        in_force = sorted(client.get_metric_history(child.info.run_id, "lr"), key=lambda m: m.timestamp)
        assert hp and in_force
        changed += len({m.value for m in hp}) > 1
        for point in in_force:
            latest = [m for m in hp if m.timestamp <= point.timestamp][-1]
            assert point.value == pytest.approx(latest.value, rel=1e-9), (point, latest)
    assert changed >= 1, "no trial was exploited"
