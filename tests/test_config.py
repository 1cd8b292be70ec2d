"""Config loading: bad values exit 2 naming the key; the dry run prints the resolved config."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gan.config import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    flatten_config,
    load_config,
)
from gan.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("data, key", [
    ({"model": {"resolutoin": 32}}, "model.resolutoin"),
    ({"modle": {}}, "modle"),
    ({"model": {"resolution": 48}}, "model.resolution"),
    ({"model": {"channels": 2}}, "model.channels"),
    ({"schedule": {"fade_kimg": -5}}, "schedule.fade_kimg"),
    ({"schedule": {"stable_kimg": 0}}, "schedule.stable_kimg"),
    ({"schedule": {"total_kimg": -1}}, "schedule.total_kimg"),
    ({"schedule": {"minibatch": {12: 8}}}, "schedule.minibatch.12"),
    ({"schedule": {"preset": "v3"}}, "schedule.preset"),
    ({"optim": {"lr": "fast"}}, "optim.lr"),
    ({"optim": {"lr": float("nan")}}, "optim.lr"),
    ({"loss": {"gp_norm": "half"}}, "loss.gp_norm"),
    ({"ema": {"mode": "other"}}, "ema.mode"),
    ({"data": {"mirror": "yes"}}, "data.mirror"),
])
def test_invalid_config_names_key(data, key):
    with pytest.raises(ConfigError) as raised:
        config_from_dict(data)
    assert str(raised.value).startswith(key + ":")


def test_round_trip_through_dict():
    config = load_config(REPO / "configs/demo.yaml")
    assert config_from_dict(config_to_dict(config)) == config


def test_shipped_configs_load():
    celeba = load_config(REPO / "configs/celebahq-1024.yaml")
    assert celeba.model.resolution == 1024
    assert celeba.model.channels == 3
    assert celeba.model.latent_size == 512  # nf(0) = min(8192, 512)
    assert celeba.schedule.minibatch[1024] == 32  # v2-8gpus
    demo = load_config(REPO / "configs/demo.yaml")
    assert demo.model.channels == 1
    assert demo.model.resolution == 32


def test_overrides_check_keys():
    data = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    original_fade = data["schedule"]["fade_kimg"]
    changed = apply_overrides(data, {"schedule.fade_kimg": 30, "schedule.lr.16": 0.003})
    config = config_from_dict(changed)
    assert config.schedule.fade_kimg == 30
    assert config.schedule.lr[16] == 0.003
    assert data["schedule"]["fade_kimg"] == original_fade  # the input is left unchanged
    with pytest.raises(ConfigError, match="schedule.fade_kimgs"):
        apply_overrides(data, {"schedule.fade_kimgs": 1})


def test_flatten_uses_dotted_keys():
    flat = flatten_config(load_config(REPO / "configs/demo.yaml"))
    assert flat["schedule.minibatch.16"] == 32
    assert flat["model.channels"] == 1


@pytest.mark.parametrize("text, key", [
    ("model:\n  resolutoin: 32\n", "model.resolutoin"),
    ("model:\n  resolution: 100\n", "model.resolution"),
    ("schedule:\n  fade_kimg: -1\n", "schedule.fade_kimg"),
])
def test_cli_bad_config_exits_2_naming_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run_cli("train", str(path), "--dry-run")
    assert result.returncode == 2
    assert key in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_cli_dry_run_json_has_parameter_counts():
    result = run_cli("train", "configs/celebahq-1024.yaml", "--dry-run", "--output", "json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["G_params"] == pytest.approx(23.08e6, rel=0.005)
    assert summary["D_params"] == pytest.approx(23.09e6, rel=0.005)
    assert summary["config"]["schedule"]["minibatch"]["1024"] == 32


@pytest.mark.parametrize("data, key", [
    ({"run": {"name": "../escape"}}, "run.name"),
    ({"run": {"name": "a/b"}}, "run.name"),
    ({"seed": 2**40}, "seed"),
    ({"model": {"resolution": 2**30}}, "model.resolution"),
])
def test_unsafe_values_rejected(data, key):
    with pytest.raises(ConfigError) as raised:
        config_from_dict(data)
    assert str(raised.value).startswith(key + ":")


def test_cli_yaml_error_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  resolution: [32\n")
    result = run_cli("train", str(path), "--dry-run")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "invalid YAML" in result.stderr
