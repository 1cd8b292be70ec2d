"""The one place that calls Ray Train's worker-side API (report, checkpoints, context).

Keeping these calls here means a Ray API change touches one file. Every rank must call `report`
equally often: Ray Train uses it as a barrier.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import ray.train

CHECKPOINT_FILE = "state.pt"


@dataclasses.dataclass(frozen=True)
class WorkerContext:
    rank: int
    world_size: int
    local_rank: int
    experiment: str


def worker_context() -> WorkerContext:
    context = ray.train.get_context()
    return WorkerContext(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        local_rank=context.get_local_rank(),
        experiment=context.get_experiment_name(),
    )


def latest_checkpoint_state(map_location="cpu") -> dict | None:
    """Load the state of the run's latest committed checkpoint, or return None when there is none.

    A checkpoint exists after a worker-group restart or when the same run name and storage were used
    before (Ray Train v2 resumes by name).
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    return checkpoint_state(checkpoint, map_location)


def checkpoint_state(checkpoint: ray.train.Checkpoint, map_location="cpu") -> dict:
    """Load the training state stored in a Ray checkpoint (local or in S3)."""
    from gan.checkpoint import load_checkpoint

    with checkpoint.as_directory() as folder:
        return load_checkpoint(Path(folder) / CHECKPOINT_FILE, map_location=map_location)


def report(metrics: dict, state: dict | None, checkpoint_name: str | None) -> None:
    """Report metrics from this rank; rank 0 passes the training state to store as a checkpoint."""
    from gan.checkpoint import save_checkpoint

    if state is None:
        ray.train.report(metrics, checkpoint_dir_name=checkpoint_name)
        return
    folder = Path(tempfile.mkdtemp(prefix="progan-checkpoint-"))
    try:
        save_checkpoint(state, folder / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                         checkpoint_dir_name=checkpoint_name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
