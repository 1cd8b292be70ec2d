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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with `weights_only=True` and check that it is a progan training state."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for a damaged or foreign file
        raise DataError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from error
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise DataError(f"{path} is not a progan checkpoint (no '{STATE_FORMAT}' format marker)")
    return state


def check_compatible(state: dict, config: TrainConfig, source: str = "checkpoint") -> None:
    """Raise CheckpointMismatchError when the checkpoint's networks differ from `config.model`."""
    saved = state["config"]["model"]
    wanted = config_to_dict(config)["model"]
    differences = [f"model.{key}: checkpoint {saved.get(key)!r}, config {value!r}"
                   for key, value in wanted.items() if saved.get(key) != value]
    if differences:
        raise CheckpointMismatchError(
            f"{source} was written for another model config ({'; '.join(differences)})")
