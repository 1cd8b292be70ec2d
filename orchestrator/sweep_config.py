"""Sweep files: a base config, fixed overrides, a search space over any config key, and a scheduler.

Example (sweeps/demo.yaml):
    base: ../configs/demo.yaml
    search_space:
      schedule.fade_kimg: {grid: [2, 4]}
      optim.lr: {grid: [0.001, 0.003]}
    metric: swd/avg
    scheduler: {type: asha, grace_kimg: 6}
Every problem raises ConfigError naming the sweep file and key, before any Ray resource is taken.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from gan.config import TrainConfig, apply_overrides, config_from_dict, training_resolutions
from gan.errors import ConfigError, UserError
from gan.train import check_minibatch_split

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform")
SCHEDULERS = ("asha", "pbt", "fifo")
TOP_LEVEL_KEYS = ("base", "name", "experiment", "overrides", "search_space", "num_samples", "metric",
                  "mode", "scheduler", "resources", "max_concurrent_trials")
SCHEDULER_KEYS = {
    "asha": ("type", "grace_kimg", "reduction_factor"),
    "pbt": ("type", "mutations", "quantile_fraction", "resample_probability"),
    "fifo": ("type",),
}
RESOURCE_KEYS = ("workers", "gpu", "cpus_per_worker")


@dataclasses.dataclass
class Dimension:
    """One searched config key and its distribution."""

    key: str
    kind: str  # one of DISTRIBUTIONS
    values: list[Any]  # grid/choice values, or [low, high]


@dataclasses.dataclass
class SweepSpec:
    path: Path
    name: str
    experiment: str
    base_data: dict  # the base config as a nested dict, fixed overrides applied
    base: TrainConfig
    dimensions: list[Dimension]
    num_samples: int
    metric: str
    mode: str
    scheduler: dict
    workers: int
    gpu: bool
    cpus_per_worker: float
    max_concurrent_trials: int | None

    @property
    def searched_keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def trial_config(self, values: dict[str, Any]) -> TrainConfig:
        """Return the resolved config of one trial from its sampled values."""
        config = config_from_dict(apply_overrides(self.base_data, values), source=str(self.path))
        config.run.workers = self.workers
        config.run.gpu = self.gpu
        return config


def produced_metrics(config: TrainConfig) -> list[str]:
    """Return the metric keys a run of `config` reports (what a sweep may optimize)."""
    swd = [f"swd/{r}" for r in training_resolutions(config) if r >= 16]
    return ["swd/avg", *swd, "loss/G", "loss/D"] if swd else ["loss/G", "loss/D"]


def _fail(path: Path, key: str, message: str) -> ConfigError:
    return ConfigError(key, message, str(path))


def _parse_dimension(path: Path, key: str, spec: Any, base_data: dict) -> Dimension:
    where = f"search_space.{key}"
    try:
        apply_overrides(base_data, {key: None})
    except ConfigError:
        raise _fail(path, where, f"{key} is not a config key") from None
    if not isinstance(spec, dict) or len(spec) != 1:
        raise _fail(path, where, f"expected one of {{{', '.join(DISTRIBUTIONS)}: ...}}, got {spec!r}")
    kind, values = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise _fail(path, where, f"unknown distribution {kind!r}; allowed: {', '.join(DISTRIBUTIONS)}")
    if not isinstance(values, list) or not values:
        raise _fail(path, f"{where}.{kind}", "expected a non-empty list")
    if kind in ("uniform", "loguniform"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or values[0] >= values[1]:
            raise _fail(path, f"{where}.{kind}", f"expected [low, high] with low < high, got {values!r}")
        if kind == "loguniform" and values[0] <= 0:
            raise _fail(path, f"{where}.{kind}", f"bounds must be positive, got {values!r}")
    return Dimension(key=key, kind=kind, values=values)


def _check_keys(path: Path, data: dict, allowed: tuple[str, ...], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            name = f"{prefix}{key}"
            raise _fail(path, name, f"unknown key; allowed keys here: {', '.join(allowed)}")


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; each trial's config is checked by sampling its extremes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(data, dict):
        raise _fail(path, "<root>", "expected a mapping")
    _check_keys(path, data, TOP_LEVEL_KEYS, "")

    if "base" not in data:
        raise _fail(path, "base", "missing: name the base training config, e.g. base: ../configs/demo.yaml")
    base_path = (path.parent / str(data["base"])).resolve()
    if not base_path.is_file():
        raise _fail(path, "base", f"config file not found: {base_path}")
    base_raw = yaml.safe_load(base_path.read_text()) or {}
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise _fail(path, "overrides", "expected a mapping of dotted config keys to values")
    try:
        base_data = apply_overrides(base_raw, overrides)
        base = config_from_dict(base_data, source=str(base_path))
    except ConfigError as error:
        raise _fail(path, f"overrides.{error.key}", str(error).split(": ", 2)[-1]) from None

    space = data.get("search_space")
    if not isinstance(space, dict) or not space:
        raise _fail(path, "search_space", "empty: give at least one config key to search, "
                                          "e.g. optim.lr: {loguniform: [0.0005, 0.005]}")
    dimensions = [_parse_dimension(path, key, spec, base_data) for key, spec in space.items()]

    metric = str(data.get("metric", "swd/avg"))
    allowed_metrics = produced_metrics(base)
    if metric not in allowed_metrics:
        raise _fail(path, "metric", f"{metric!r} is not produced by this config; allowed: "
                                    f"{', '.join(allowed_metrics)}")
    mode = str(data.get("mode", "min"))
    if mode not in ("min", "max"):
        raise _fail(path, "mode", f"must be 'min' or 'max', got {mode!r}")

    scheduler = _parse_scheduler(path, data.get("scheduler") or {"type": "asha"}, base, dimensions)
    resources = data.get("resources") or {}
    if not isinstance(resources, dict):
        raise _fail(path, "resources", "expected a mapping")
    _check_keys(path, resources, RESOURCE_KEYS, "resources.")
    num_samples = data.get("num_samples", 1)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise _fail(path, "num_samples", f"must be a positive integer, got {num_samples!r}")
    concurrency = data.get("max_concurrent_trials", "auto")
    if concurrency != "auto" and (not isinstance(concurrency, int) or concurrency < 1):
        raise _fail(path, "max_concurrent_trials", f"must be 'auto' or a positive integer, got {concurrency!r}")

    spec = SweepSpec(
        path=path, name=str(data.get("name") or path.stem), experiment=str(data.get("experiment")
                                                                       or base.run.experiment),
        base_data=base_data, base=base, dimensions=dimensions, num_samples=num_samples, metric=metric,
        mode=mode, scheduler=scheduler, workers=int(resources.get("workers", base.run.workers)),
        gpu=bool(resources.get("gpu", base.run.gpu)),
        cpus_per_worker=float(resources.get("cpus_per_worker", 1)),
        max_concurrent_trials=None if concurrency == "auto" else concurrency,
    )
    _check_trial_configs(spec)
    return spec


def _parse_scheduler(path: Path, scheduler: Any, base: TrainConfig, dimensions: list[Dimension]) -> dict:
    if not isinstance(scheduler, dict):
        raise _fail(path, "scheduler", "expected a mapping with a type")
    kind = scheduler.get("type", "asha")
    if kind not in SCHEDULERS:
        raise _fail(path, "scheduler.type", f"unknown scheduler {kind!r}; allowed: {', '.join(SCHEDULERS)}")
    _check_keys(path, scheduler, SCHEDULER_KEYS[kind], "scheduler.")
    result = {"type": kind}
    if kind == "asha":
        grace = scheduler.get("grace_kimg", base.metrics.every_kimg)
        if not isinstance(grace, (int, float)) or grace <= 0 or grace > base.schedule.total_kimg:
            raise _fail(path, "scheduler.grace_kimg",
                        f"must be in (0, schedule.total_kimg={base.schedule.total_kimg:g}], got {grace!r}")
        factor = scheduler.get("reduction_factor", 2)
        if not isinstance(factor, (int, float)) or factor <= 1:
            raise _fail(path, "scheduler.reduction_factor", f"must be greater than 1, got {factor!r}")
        result.update(grace_kimg=float(grace), reduction_factor=float(factor))
    if kind == "pbt":
        mutations = scheduler.get("mutations")
        if not isinstance(mutations, dict) or not mutations:
            raise _fail(path, "scheduler.mutations", "give the searched keys PBT may mutate, e.g. "
                                                     "{optim.lr: {loguniform: [0.0005, 0.005]}}")
        searched = {d.key for d in dimensions}
        parsed = {}
        for key, spec in mutations.items():
            if key not in searched:
                raise _fail(path, f"scheduler.mutations.{key}", "PBT can only mutate keys of search_space")
            parsed[key] = _parse_mutation(path, key, spec)
        result.update(mutations=parsed,
                      quantile_fraction=float(scheduler.get("quantile_fraction", 0.5)),
                      resample_probability=float(scheduler.get("resample_probability", 0.25)))
    return result


def _parse_mutation(path: Path, key: str, spec: Any) -> Dimension:
    where = f"scheduler.mutations.{key}"
    if isinstance(spec, list) and spec:
        return Dimension(key=key, kind="choice", values=spec)
    if isinstance(spec, dict) and len(spec) == 1:
        kind, values = next(iter(spec.items()))
        if kind in DISTRIBUTIONS and isinstance(values, list) and values:
            return Dimension(key=key, kind="choice" if kind == "grid" else kind, values=values)
    raise _fail(path, where, f"expected a list of values or one of {{{', '.join(DISTRIBUTIONS)}: ...}}")


def _check_trial_configs(spec: SweepSpec) -> None:
    """Validate the configs at each dimension's first and last value, naming the search key on error."""
    for dimension in spec.dimensions:
        candidates = dimension.values if dimension.kind in ("grid", "choice") else dimension.values[:2]
        for value in candidates:
            try:
                config = spec.trial_config({dimension.key: value})
            except ConfigError as error:
                raise _fail(spec.path, f"search_space.{dimension.key}",
                            f"value {value!r} gives an invalid config: {error}") from None
            try:
                check_minibatch_split(config, spec.workers)
            except ConfigError as error:
                raise _fail(spec.path, "resources.workers", f"{spec.workers} workers do not fit: {error}") from None
    if math.isnan(spec.cpus_per_worker) or spec.cpus_per_worker <= 0:
        raise _fail(spec.path, "resources.cpus_per_worker", f"must be positive, got {spec.cpus_per_worker}")
