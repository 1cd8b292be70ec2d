"""`progan sweep`: a Ray Tune experiment whose trials each run one Ray Train run.

Ray Train v2 cannot be passed to a Tuner, so every trial is a Tune function trainable (`trial_main`)
that starts a TorchTrainer. With ASHA, Train's reports reach Tune through TuneReportCallback.

PBT hand-over: Tune never receives a Train checkpoint. So a PBT trial runs its training in segments
that end at resolution-phase boundaries (each fade-in start and each stabilization start). After each
segment the trial reports to Tune with a small Tune checkpoint holding a pointer to the segment's
Train checkpoint. When PBT exploits, the lagging trial restarts with the donor's pointer and its own
mutated config: the next segment's Train run loads the donor's state, and the trainer re-derives the
schedule and the learning rate from the mutated config, so both are in force from its first step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from gan.config import apply_overrides, config_from_dict, flatten_config
from gan.schedule import GrowthSchedule
from orchestrator import environment
from orchestrator.sweep_config import SweepSpec, load_sweep

log = logging.getLogger(__name__)

SWEEP_TAG = "progan.sweep"
POINTER_FILE = "train_checkpoint.json"


# ---------------------------------------------------------------------------------------------
# Inside a trial (runs in the Tune trial actor)


def trial_main(tune_config: dict, sweep: dict) -> None:
    """Tune function trainable: one trial's MLflow child run and its Train run(s)."""
    from ray import tune

    from orchestrator import tracking
    from orchestrator.train_run import device_kind, fit_train_run

    values = {key: tune_config[key] for key in sweep["searched_keys"]}
    config = config_from_dict(apply_overrides(sweep["base_data"], values))
    config.run.workers = sweep["workers"]
    config.run.gpu = sweep["gpu"]
    environment.absolutize_paths(config)

    context = tune.get_context()
    trial_id = context.get_trial_id()
    mutable = sweep["mutable_keys"]
    run_id = tracking.find_or_create_child_run(
        sweep["experiment_id"], sweep["parent_run_id"], trial_id, context.get_trial_name(),
        tracking.run_tags(config, sweep["dataset_hash"], config.run.workers, device_kind(config)))
    # Params are immutable in MLflow; logging the same values again on a retried trial is allowed.
    tracking.log_params(run_id, flatten_config(config), mutable_keys=mutable)

    if sweep["scheduler"] == "pbt":
        run_segments(config, values, sweep, run_id, trial_id)
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        fit_train_run(config, f"{sweep['name']}-{trial_id}", run_id, callbacks=[TuneReportCallback()])
    tracking.end_run(run_id, "FINISHED")


def run_segments(config, values: dict, sweep: dict, run_id: str, trial_id: str) -> None:
    """Train phase by phase, reporting a pointer checkpoint to Tune after each phase."""
    import ray.train
    from ray import tune

    from orchestrator import mlflow_lookup
    from orchestrator.storage import ray_storage
    from orchestrator.train_run import fit_train_run, storage_for

    pointer = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            pointer = json.loads((Path(folder) / POINTER_FILE).read_text())
    filesystem, _ = ray_storage(storage_for(config))
    init = ray.train.Checkpoint(pointer["path"], filesystem=filesystem) if pointer else None
    kimg = pointer["kimg"] if pointer else 0.0
    segment = pointer["segment"] + 1 if pointer else 0
    total = config.schedule.total_kimg
    boundaries = [b for b in GrowthSchedule(config).phase_boundaries_kimg() if b < total] + [total]

    while kimg < total - 1e-9:
        until = next(b for b in boundaries if b > kimg + 1e-9)
        mlflow_lookup.log_metrics(run_id, {f"hp/{key}": float(value) for key, value in values.items()},
                             step=round(kimg))
        lineage = pointer["path"].rsplit("/", 2)[-2] if pointer else "start"
        name = f"{sweep['name']}-{trial_id}-seg{segment:03d}-{lineage[-24:]}"
        result = fit_train_run(config, name, run_id, until_kimg=until, init_checkpoint=init)
        kimg = float(result.metrics["kimg"])
        pointer = {"path": result.checkpoint.path, "kimg": kimg, "segment": segment, "values": values}
        metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
        # tune.report persists the checkpoint folder before it returns, so the folder can go after it.
        with tempfile.TemporaryDirectory(prefix="progan-pointer-") as folder:
            (Path(folder) / POINTER_FILE).write_text(json.dumps(pointer))
            tune.report({**metrics, "segment": segment}, checkpoint=tune.Checkpoint.from_directory(folder))
        init = result.checkpoint
        segment += 1


# ---------------------------------------------------------------------------------------------
# Driver


def _domain(dimension):
    from ray import tune

    if dimension.kind == "grid":
        return tune.grid_search(dimension.values)
    if dimension.kind == "choice":
        return tune.choice(dimension.values)
    if dimension.kind == "uniform":
        return tune.uniform(*dimension.values)
    return tune.loguniform(*dimension.values)


def build_scheduler(spec: SweepSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    kind = spec.scheduler["type"]
    if kind == "asha":
        return ASHAScheduler(time_attr="kimg", max_t=spec.base.schedule.total_kimg,
                             grace_period=spec.scheduler["grace_kimg"],
                             reduction_factor=spec.scheduler["reduction_factor"])
    if kind == "pbt":
        mutations = {key: (d.values if d.kind == "choice" else _domain(d))
                     for key, d in spec.scheduler["mutations"].items()}
        # One Tune result per phase segment, so every perturbation falls on a phase boundary.
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=1,
                                       hyperparam_mutations=mutations,
                                       quantile_fraction=spec.scheduler["quantile_fraction"],
                                       resample_probability=spec.scheduler["resample_probability"])
    return FIFOScheduler()


def max_concurrent(spec: SweepSpec) -> int | None:
    """Return how many trials fit the cluster at once (GPUs, else CPUs, over each trial's need).

    An autoscaling cluster may have no GPU node yet. Then the limit is left to Tune (None), because
    the waiting trial drivers reserve only their small driver resource.
    """
    import ray

    if spec.max_concurrent_trials:
        return spec.max_concurrent_trials
    resources = ray.cluster_resources()
    if spec.gpu:
        fitting = int(resources.get("GPU", 0) // spec.workers)
        if fitting == 0:
            log.warning("the cluster has no GPU node yet; set max_concurrent_trials in the sweep file "
                        "to bound the trials that wait for GPUs")
            return None
        return fitting
    return max(1, int(resources.get("CPU", 1) // (spec.workers * spec.cpus_per_worker)))


def start_parent_run(spec: SweepSpec, name: str) -> tuple[str, str]:
    from orchestrator import mlflow_lookup, tracking

    experiment_id = tracking.ensure_experiment(spec.experiment)
    existing = mlflow_lookup.find_run_by_tag(experiment_id, SWEEP_TAG, name)
    if existing is not None:
        return experiment_id, existing
    tags = {SWEEP_TAG: name, "progan.searched_keys": json.dumps(spec.searched_keys),
            "progan.metric": spec.metric, "progan.mode": spec.mode,
            "progan.scheduler": spec.scheduler["type"]}
    run_id = tracking.start_run(experiment_id, name, tags)
    tracking.log_params(run_id, {f"sweep.{k}": v for k, v in flatten_config(spec.base_data).items()})
    return experiment_id, run_id


def sweep_storage(spec: SweepSpec) -> str:
    from orchestrator.train_run import storage_for

    return storage_for(spec.base).rstrip("/") + "/sweeps"


def resolve_name(spec: SweepSpec, resume: bool) -> str:
    """Return a new timestamped sweep name, or with --resume the newest existing one of this file."""
    if not resume:
        return f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    from orchestrator import mlflow_lookup

    name = mlflow_lookup.latest_tag_value(spec.experiment, SWEEP_TAG, prefix=f"{spec.name}-")
    if name is None:
        from gan.errors import UserError

        raise UserError(f"no earlier sweep named {spec.name}-* in MLflow experiment {spec.experiment} "
                        "to resume; run without --resume to start one")
    return name


def run_sweep(args: argparse.Namespace) -> int:
    from ray import tune

    from orchestrator import mlflow_lookup, tracking
    from orchestrator.storage import ray_storage

    spec = load_sweep(args.sweep)
    environment.load_environment()
    environment.require_tracking()
    environment.absolutize_paths(spec.base)
    spec.base_data = apply_overrides(spec.base_data, {"data.path": spec.base.data.path})
    environment.init_ray(args.address)

    name = resolve_name(spec, args.resume)
    experiment_id, parent_run_id = start_parent_run(spec, name)
    sys.stderr.write(f"sweep {name}: MLflow parent run {parent_run_id}\n")
    sweep = {
        "name": name, "base_data": spec.base_data, "searched_keys": spec.searched_keys,
        "workers": spec.workers, "gpu": spec.gpu, "scheduler": spec.scheduler["type"],
        "mutable_keys": list(spec.scheduler.get("mutations", {})),
        "experiment_id": experiment_id, "parent_run_id": parent_run_id,
        "dataset_hash": environment.dataset_hash(spec.base),
    }
    trainable = tune.with_resources(tune.with_parameters(trial_main, sweep=sweep),
                                    environment.trial_driver_resources())
    filesystem, storage_path = ray_storage(sweep_storage(spec))
    experiment_path = f"{storage_path}/{name}"
    # Tune's status tables go to stdout; keep stdout for the JSON result when that is asked for.
    tune_run_config = tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem,
                                     failure_config=tune.FailureConfig(max_failures=1),
                                     verbose=0 if args.output == "json" else 1)
    if args.resume and tune.Tuner.can_restore(experiment_path, storage_filesystem=filesystem):
        tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=filesystem)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={d.key: _domain(d) for d in spec.dimensions},
            tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, scheduler=build_scheduler(spec),
                                        num_samples=spec.num_samples,
                                        max_concurrent_trials=max_concurrent(spec)),
            run_config=tune_run_config,
        )
    if args.output == "json":
        # Tune prints its experiment table to stdout even when silent, and Ray forwards what trial
        # processes print there too. Stdout must carry only the JSON result.
        with contextlib.redirect_stdout(sys.stderr):
            results = tuner.fit()
    else:
        results = tuner.fit()
    failed = results.num_errors
    mlflow_lookup.close_children(parent_run_id, spec.base.schedule.total_kimg)
    tracking.end_run(parent_run_id, "FAILED" if failed else "FINISHED")

    from orchestrator.compare import compare_sweep, print_comparison

    rows = compare_sweep(spec.experiment, parent_run_id, spec.metric)
    print_comparison(rows, spec.metric, args.output)
    if failed:
        sys.stderr.write(f"sweep {name}: {failed} trial(s) failed; see the Ray logs\n")
        return 1
    return 0
