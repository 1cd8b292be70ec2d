"""Sweep files: bad ones exit 2 naming the key; good ones give valid trial configs."""

import subprocess
import sys
from pathlib import Path

import pytest

from gan.errors import ConfigError
from orchestrator.sweep_config import load_sweep

REPO = Path(__file__).resolve().parents[1]
BASE = (REPO / "configs" / "demo.yaml").as_posix()


def write_sweep(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: {BASE}\n" + text)
    return path


GOOD = """search_space:
  schedule.fade_kimg: {grid: [2, 4]}
  optim.lr: {loguniform: [0.001, 0.003]}
  schedule.lr.16: {choice: [0.001, 0.002]}
scheduler: {type: asha, grace_kimg: 8}
"""


def test_good_sweep_loads(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, GOOD))
    assert spec.searched_keys == ["schedule.fade_kimg", "optim.lr", "schedule.lr.16"]
    config = spec.trial_config({"schedule.fade_kimg": 4, "optim.lr": 0.002, "schedule.lr.16": 0.001})
    assert config.schedule.fade_kimg == 4
    assert config.optim.lr == 0.002
    assert config.schedule.lr[16] == 0.001
    assert spec.metric == "swd/avg"


def test_shipped_sweeps_load():
    assert load_sweep(REPO / "sweeps/demo.yaml").scheduler["type"] == "asha"
    pbt = load_sweep(REPO / "sweeps/pbt-schedule.yaml")
    assert set(pbt.scheduler["mutations"]) == {"schedule.fade_kimg", "optim.lr"}


@pytest.mark.parametrize("text, key", [
    ("search_space: {}\n", "search_space"),
    ("", "search_space"),
    ("search_spaec: {optim.lr: {grid: [1]}}\n", "search_spaec"),
    ("search_space: {optim.lrr: {grid: [0.001]}}\n", "search_space.optim.lrr"),
    ("search_space: {optim.lr: {normal: [0, 1]}}\n", "search_space.optim.lr"),
    ("search_space: {optim.lr: {uniform: [0.01, 0.001]}}\n", "search_space.optim.lr.uniform"),
    ("search_space: {schedule.fade_kimg: {grid: [-2]}}\n", "search_space.schedule.fade_kimg"),
    ("search_space: {optim.lr: {grid: [0.001]}}\nmetric: fid\n", "metric"),
    ("search_space: {optim.lr: {grid: [0.001]}}\nmetric: swd/64\n", "metric"),
    ("search_space: {optim.lr: {grid: [0.001]}}\nscheduler: {type: hyperband}\n", "scheduler.type"),
    ("search_space: {optim.lr: {grid: [0.001]}}\nscheduler: {type: asha, grace: 1}\n", "scheduler.grace"),
    ("search_space: {optim.lr: {grid: [0.001]}}\nscheduler: {type: pbt, mutations: {model.channels: [1]}}\n",
     "scheduler.mutations.model.channels"),
    ("search_space: {optim.lr: {grid: [0.001]}}\noverrides: {optim.betas: 1}\n", "overrides.optim.betas"),
    ("search_space: {optim.lr: {grid: [0.001]}}\nresources: {workers: 3}\n", "resources.workers"),
])
def test_bad_sweep_names_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as raised:
        load_sweep(write_sweep(tmp_path, text))
    message = str(raised.value)
    assert f"{key}:" in message, message


def test_cli_bad_sweep_exits_2(tmp_path):
    path = write_sweep(tmp_path, "search_space: {}\n")
    result = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "search_space" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
