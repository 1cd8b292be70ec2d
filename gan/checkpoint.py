"""Checkpoint files: one torch file holding the whole training state, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from gan.config import TrainConfig, config_to_dict
from gan.errors import CheckpointMismatchError, DataError
from gan.train import STATE_FORMAT


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` to `path` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(state, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _read_state(path: str | Path, map_location, formats: tuple[str, ...]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for a damaged or foreign file
        raise DataError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from error
    if not isinstance(state, dict) or state.get("format") not in formats:
        raise DataError(f"{path} is not a progan file of format {' or '.join(formats)}")
    return state


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a training-state checkpoint with `weights_only=True`."""
    return _read_state(path, map_location, (STATE_FORMAT,))


def check_compatible(state: dict, config: TrainConfig, source: str = "checkpoint") -> None:
    """Raise CheckpointMismatchError when the checkpoint's networks differ from `config.model`."""
    saved = state["config"]["model"]
    expected = config_to_dict(config)["model"]
    differences = [f"model.{key}: checkpoint {saved.get(key)!r}, config {value!r}"
                   for key, value in expected.items() if saved.get(key) != value]
    if differences:
        raise CheckpointMismatchError(
            f"{source} was written for another model config ({'; '.join(differences)})")


GENERATOR_FORMAT = "progan-generator"


def generator_snapshot(trainer, metrics: dict | None = None) -> dict:
    """Return G_ema alone with its config and progress: what `progan generate` and metrics read."""
    return {
        "format": GENERATOR_FORMAT,
        "version": 1,
        "config": config_to_dict(trainer.config),
        "G_ema": trainer.G_ema.state_dict(),
        "kimg": trainer.kimg,
        "lod": trainer.state.lod,
        "metrics": dict(metrics or {}),
    }


def load_generator(path: str | Path, map_location: str | torch.device = "cpu"):
    """Load G_ema from a generator snapshot or a full checkpoint; return (generator, lod, config)."""
    from gan.config import config_from_dict
    from gan.networks import Generator

    state = _read_state(path, map_location, (GENERATOR_FORMAT, STATE_FORMAT))
    config = config_from_dict(state["config"])
    generator = Generator(config.model)
    generator.load_state_dict(state["G_ema"])
    generator.eval().requires_grad_(False)
    if "lod" in state:
        lod = float(state["lod"])
    else:
        from gan.schedule import GrowthSchedule

        lod = GrowthSchedule(config).at(state["schedule_nimg"] / 1000.0).lod
    return generator, lod, config
