"""Driver side of one training run: Ray setup, the TorchTrainer, and its MLflow run.

`progan train` calls `run_training`. Each sweep trial calls `fit_train_run` from inside its Tune
function trainable, because Ray Train v2 no longer accepts a Trainer passed to a Tuner.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

from gan.config import TrainConfig, config_to_dict, flatten_config
from orchestrator import environment

log = logging.getLogger(__name__)

RUN_NAME_TAG = "progan.run_name"


def config_digest(config: TrainConfig) -> str:
    text = json.dumps(config_to_dict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def default_run_name(config: TrainConfig, config_path: str) -> str:
    """Name a run after its config file and content, so rerunning the same command resumes it."""
    return config.run.name or f"{Path(config_path).stem}-{config_digest(config)}"


def storage_for(config: TrainConfig) -> str:
    """Return the Ray Train storage root: config.run.storage, else a folder in the state dir."""
    if config.run.storage:
        return environment.absolute_storage(config.run.storage)
    return str(environment.state_dir() / "ray-storage")


def fit_train_run(config: TrainConfig, name: str, run_id: str | None, *, until_kimg: float | None = None,
                  init_checkpoint: str | None = None, callbacks: list | None = None):
    """Run one TorchTrainer to completion (resuming `name` if it exists) and return its Result."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.storage import ray_storage
    from orchestrator.worker import train_loop_per_worker

    filesystem, storage_path = ray_storage(storage_for(config))
    loop_config = {
        "config": config_to_dict(config),
        "run_id": run_id,
        "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI"),
        "run_dir": str(environment.state_dir() / "runs" / name),
        "cache_dir": str(environment.cache_dir()),
        "until_kimg": until_kimg,
        "init_checkpoint": init_checkpoint,
    }
    resources = {"CPU": 1} if not config.run.gpu else {"CPU": 1, "GPU": 1}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=config.run.workers, use_gpu=config.run.gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=config.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoint.keep_last),
            callbacks=callbacks or [],
        ),
    )
    return trainer.fit()


def device_kind(config: TrainConfig) -> str:
    return "gpu" if config.run.gpu else "cpu"


def start_or_resume_mlflow_run(config: TrainConfig, name: str, config_path: str) -> str:
    """Return the MLflow run of `name`: the unfinished one from an earlier attempt, else a new one."""
    from orchestrator import mlflow_lookup, tracking

    experiment_id = tracking.ensure_experiment(config.run.experiment)
    existing = mlflow_lookup.find_run_by_tag(experiment_id, RUN_NAME_TAG, name)
    if existing is not None:
        log.info("resuming MLflow run %s of %s", existing, name)
        return existing
    tags = {RUN_NAME_TAG: name, **tracking.run_tags(config, environment.dataset_hash(config),
                                                       config.run.workers, device_kind(config))}
    run_id = tracking.start_run(experiment_id, name, tags)
    tracking.log_params(run_id, flatten_config(config))
    mlflow_lookup.log_config_artifact(run_id, config, config_path)
    return run_id


def run_training(config: TrainConfig, args: argparse.Namespace) -> int:
    """`progan train` without --dry-run: one Ray Train run tracked in MLflow; returns the exit code."""
    from orchestrator import tracking

    environment.load_environment()
    environment.require_tracking()
    environment.absolutize_paths(config)
    environment.check_minibatch(config)
    environment.init_ray(args.address)

    name = default_run_name(config, args.config)
    run_id = start_or_resume_mlflow_run(config, name, args.config)
    sys.stderr.write(f"run {name}: {config.run.workers} worker(s), MLflow run {run_id}\n")
    try:
        result = fit_train_run(config, name, run_id)
    except BaseException:
        tracking.end_run(run_id, "FAILED")
        raise
    try:
        tracking.end_run(run_id, "FINISHED" if result.error is None else "FAILED")
    except Exception as error:  # noqa: BLE001 - training is done; only the run's status is missing
        sys.stderr.write(f"run {name}: training ended, but MLflow could not mark run {run_id} as ended "
                         f"({type(error).__name__}); rerun the same command once MLflow answers\n")
    if result.error is not None:
        raise RuntimeError(f"run {name} failed: {result.error}")

    summary = {"run": name, "mlflow_run_id": run_id,
               "checkpoint": result.checkpoint.path if result.checkpoint else None,
               **{k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}}
    from orchestrator.output import print_json, print_mapping

    if args.output == "json":
        print_json(summary)
    else:
        print_mapping(summary, title=f"run {name}")
    return 0
