"""Ray Train worker loop: one ProGAN training sharded over the worker group (DDP-style all-reduce).

Every rank trains on its shard of the global minibatch. At each evaluation or checkpoint boundary all
ranks report together, and all ranks share the FID computation. Rank 0 also evaluates SWD, writes the
image grid, saves the checkpoint and writes the metric log that MLflow mirrors.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from gan.checkpoint import check_compatible, load_checkpoint
from gan.config import config_from_dict
from gan.dataset import check_dataset, open_dataset
from gan.train import StepStats, Trainer
from orchestrator import ray_adapter
from orchestrator.data_cache import local_dataset_path
from orchestrator.evaluation import Evaluator
from orchestrator.fid_evaluation import FidEvaluator, log_params as log_fid_params


class StepWindow:
    """Loss averages and throughput since the last report."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss_G = 0.0
        self.loss_D = 0.0
        self.steps = 0
        self.start_nimg: int | None = None
        self.start_time = time.perf_counter()

    def add(self, trainer: Trainer, stats: StepStats) -> None:
        self.loss_G += stats.loss_G
        self.loss_D += stats.loss_D
        self.steps += 1

    def summary(self, trainer: Trainer, start_nimg: int) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start_time, 1e-9)
        steps = max(self.steps, 1)
        optimizer_lr = trainer.opt_G.param_groups[0]["lr"]
        return {
            "kimg": trainer.kimg,
            "lod": trainer.state.lod,
            "resolution": float(trainer.state.resolution),
            "alpha": trainer.state.alpha,
            "loss/G": self.loss_G / steps,
            "loss/D": self.loss_D / steps,
            "images_per_sec": (trainer.nimg - start_nimg) / elapsed,
            "lr": optimizer_lr,
            "nonfinite/G": float(trainer.nonfinite["G"]),
            "nonfinite/D": float(trainer.nonfinite["D"]),
        }


def next_boundary(kimg: float, every_kimg: float) -> float:
    """Return the first multiple of `every_kimg` strictly after `kimg`."""
    return (math.floor(kimg / every_kimg + 1e-9) + 1) * every_kimg


def restore_state(trainer: Trainer, loop_config: dict) -> str:
    """Resume from Ray's latest checkpoint, else from a hand-over checkpoint file; return the source."""
    state = ray_adapter.latest_checkpoint_state()
    source = "ray checkpoint"
    handover = loop_config.get("init_checkpoint")
    if state is None and handover is not None:
        # A local file path, or a ray.train.Checkpoint of another run (the PBT donor's segment).
        state = load_checkpoint(handover) if isinstance(handover, str) else \
            ray_adapter.checkpoint_state(handover)
        source = str(getattr(handover, "path", handover))
    if state is None:
        return "fresh start"
    check_compatible(state, trainer.config, source)
    trainer.load_state_dict(state)
    return source


def train_loop_per_worker(loop_config: dict) -> None:
    """Entry point of every Train worker; `loop_config` comes from the driver (plain data only)."""
    import ray.train.torch

    context = ray_adapter.worker_context()
    config = config_from_dict(loop_config["config"])
    device = ray.train.torch.get_device() if config.run.gpu else torch.device("cpu")
    dataset = open_dataset(local_dataset_path(config.data.path, loop_config.get("cache_dir")))
    check_dataset(dataset, config.model, config.data.path)

    trainer = Trainer(config, dataset, device, context.rank, context.world_size)
    restore_state(trainer, loop_config)
    until_kimg = float(loop_config.get("until_kimg") or config.schedule.total_kimg)

    fid_evaluator = FidEvaluator.create(config, dataset, config.data.path, device, context.rank,
                                        context.world_size, loop_config.get("cache_dir"))
    is_chief = context.rank == 0
    run_dir = Path(loop_config["run_dir"])
    tracker = None
    evaluator = None
    if is_chief:
        from orchestrator.tracking_session import TrackingSession

        tracker = TrackingSession.for_worker(loop_config, run_dir)
        evaluator = Evaluator(config, dataset, run_dir)
        if fid_evaluator is not None:
            log_fid_params(fid_evaluator, loop_config.get("run_id"), loop_config.get("tracking_uri"))

    try:
        run_loop(trainer, config, until_kimg, evaluator, tracker, fid_evaluator)
    finally:
        if tracker is not None:
            tracker.close()


def report_initial(trainer: Trainer, evaluator, tracker, fid_evaluator=None) -> None:
    """Evaluate the untrained G_ema at kimg 0, so every curve starts from the initialization."""
    state = trainer.state
    metrics = {"kimg": 0.0, "lod": state.lod, "resolution": float(state.resolution), "alpha": state.alpha}
    if evaluator is not None:
        metrics.update(evaluator.evaluate(trainer, tracker))
    if fid_evaluator is not None:
        metrics.update(fid_evaluator.evaluate(trainer))  # collective: every rank takes part
    if tracker is not None:
        tracker.log_metrics(metrics, 0.0)
    ray_adapter.report(metrics, None, None)


def run_loop(trainer: Trainer, config, until_kimg: float, evaluator, tracker, fid_evaluator=None) -> None:
    """Train to `until_kimg`, reporting at every evaluation and checkpoint boundary."""
    if trainer.nimg == 0 and until_kimg > 0:
        report_initial(trainer, evaluator, tracker, fid_evaluator)
    next_eval = next_boundary(trainer.kimg, config.metrics.every_kimg)
    next_checkpoint = next_boundary(trainer.kimg, config.checkpoint.every_kimg)
    window = StepWindow()
    while trainer.kimg < until_kimg - 1e-9:
        start_nimg = trainer.nimg
        window.reset()
        trainer.train_until(min(next_eval, next_checkpoint, until_kimg), on_step=window.add)
        finished = trainer.kimg >= until_kimg - 1e-9
        evaluate = finished or trainer.kimg >= next_eval - 1e-9
        checkpoint = finished or trainer.kimg >= next_checkpoint - 1e-9
        metrics = window.summary(trainer, start_nimg)

        if evaluate and evaluator is not None:
            metrics.update(evaluator.evaluate(trainer, tracker))
        if evaluate and fid_evaluator is not None:
            metrics.update(fid_evaluator.evaluate(trainer))  # collective: every rank takes part
        state = None
        if checkpoint:
            rng_states = trainer.gather_rng_states()  # collective: every rank takes part
            if evaluator is not None:
                state = trainer.state_dict(rng_states)
        if tracker is not None:
            tracker.log_metrics(metrics, trainer.kimg)
        name = f"kimg-{trainer.nimg:010d}" if checkpoint else None
        ray_adapter.report(metrics, state, name)

        next_eval = next_boundary(trainer.kimg, config.metrics.every_kimg)
        next_checkpoint = next_boundary(trainer.kimg, config.checkpoint.every_kimg)

    if evaluator is not None:
        evaluator.save_final(trainer, tracker)

