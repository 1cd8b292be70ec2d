"""Training config: typed dataclasses loaded from YAML, validated, with presets resolved.

Every key a user can write is a field here; unknown keys, wrong types and out-of-range values raise
ConfigError naming the dotted key. `resolve_config` fills the per-resolution minibatch table from the
preset so that the saved config states everything a run used.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from gan.errors import ConfigError

# Minibatch per resolution and learning-rate overrides of the official TensorFlow presets
# (tkarras/progressive_growing_of_gans config.py, with its per-GPU caps already applied).
PRESETS: dict[str, dict[str, dict[int, float]]] = {
    "v1-1gpu": {
        "minibatch": {4: 16, 8: 16, 16: 16, 32: 16, 64: 16, 128: 16, 256: 14, 512: 6, 1024: 3},
        "lr": {},
    },
    "v2-1gpu": {
        "minibatch": {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4, 1024: 4},
        "lr": {1024: 0.0015},
    },
    "v2-2gpus": {
        "minibatch": {4: 256, 8: 256, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 8, 1024: 8},
        "lr": {512: 0.0015, 1024: 0.002},
    },
    "v2-4gpus": {
        "minibatch": {4: 512, 8: 256, 16: 128, 32: 64, 64: 32, 128: 16, 256: 16, 512: 16, 1024: 16},
        "lr": {256: 0.0015, 512: 0.002, 1024: 0.003},
    },
    "v2-8gpus": {
        "minibatch": {4: 512, 8: 256, 16: 128, 32: 64, 64: 32, 128: 32, 256: 32, 512: 32, 1024: 32},
        "lr": {128: 0.0015, 256: 0.002, 512: 0.003, 1024: 0.003},
    },
}

INITIAL_RESOLUTION = 4
MAX_RESOLUTION = 8192
MAX_FEATURES = 65536
RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclasses.dataclass
class ModelConfig:
    """Generator and discriminator shape. The defaults are the 1024x1024 networks of the official
    ProGAN code (tkarras/progressive_growing_of_gans, networks.py)."""

    resolution: int = 1024
    channels: int = 3
    latent_size: int | None = None  # None: nf(0), as in the official code
    fmap_base: int = 8192
    fmap_decay: float = 1.0
    fmap_max: int = 512
    mbstd_group_size: int = 4
    normalize_latents: bool = True
    pixelnorm_eps: float = 1e-8


@dataclasses.dataclass
class DataConfig:
    """Location of the prepared multi-resolution dataset: a local folder or s3://bucket/prefix."""

    path: str = ""
    mirror: bool = True


@dataclasses.dataclass
class ScheduleConfig:
    """Progressive growing: phase lengths in kimg, minibatch and learning-rate tables."""

    preset: str = "v2-1gpu"
    stable_kimg: float = 600.0
    fade_kimg: float = 600.0
    total_kimg: float = 12000.0
    minibatch: dict[int, int] = dataclasses.field(default_factory=dict)
    lr: dict[int, float] = dataclasses.field(default_factory=dict)
    lr_rampup_kimg: float = 0.0
    minibatch_repeats: int = 4


@dataclasses.dataclass
class OptimConfig:
    """Adam settings shared by G and D; `lr` applies where schedule.lr has no entry."""

    lr: float = 0.001
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-8
    max_consecutive_nonfinite: int = 20


@dataclasses.dataclass
class LossConfig:
    """WGAN-GP with the drift term; see gan.loss for what `gp_norm` selects."""

    gp_lambda: float = 10.0
    gp_gamma: float = 1.0
    drift: float = 0.001
    gp_norm: str = "full"


@dataclasses.dataclass
class EmaConfig:
    """Generator moving average: a fixed beta per step, or a half-life in kimg."""

    mode: str = "beta"
    beta: float = 0.999
    half_life_kimg: float = 10.0


@dataclasses.dataclass
class MetricsConfig:
    """Evaluation during training; SWD on `swd_images` reals and fakes every `every_kimg`."""

    every_kimg: float = 200.0
    swd_images: int = 16384
    fid_images: int = 50000
    grid_size: int = 8


@dataclasses.dataclass
class CheckpointConfig:
    """How often the full training state is saved and how many of the latest are kept."""

    every_kimg: float = 200.0
    keep_last: int = 2


@dataclasses.dataclass
class RunConfig:
    """Execution settings of a run (workers, storage, MLflow experiment), read only by the orchestrator."""

    name: str = ""
    experiment: str = "progan"
    workers: int = 1
    gpu: bool = False
    storage: str = ""
    max_failures: int = 0


@dataclasses.dataclass
class TrainConfig:
    """A whole training run."""

    seed: int = 1000
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    ema: EmaConfig = dataclasses.field(default_factory=EmaConfig)
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)


# ---------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type or raise ConfigError naming `key`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)

    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        key_type, value_type = args
        return {
            _coerce(k, key_type, f"{key}.{k}"): _coerce(v, value_type, f"{key}.{k}")
            for k, v in value.items()
        }

    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                return int(value)
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(key, f"expected a finite number, got {value!r}")
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r} for {key}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(prefix or "<root>", f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(name, f"unknown key; allowed keys here: {', '.join(sorted(fields))}")

    values = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key)
        else:
            values[name] = _coerce(value, hint, key)
    return cls(**values)


def config_from_dict(data: dict, source: str | None = None) -> TrainConfig:
    """Build and validate a TrainConfig from a nested dict (as read from YAML)."""
    try:
        config = _build(TrainConfig, data, "")
        validate_config(config)
    except ConfigError as error:
        if source and not str(error).startswith(source):
            raise ConfigError(error.key, str(error).split(": ", 1)[1], source) from None
        raise
    return resolve_config(config)


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML config file into a validated, resolved TrainConfig."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError("config", f"{path} is a folder; give a YAML config file")
    if not path.is_file():
        raise ConfigError("config", f"file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("config", f"{path} is not a UTF-8 text file") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError("config", f"invalid YAML in {path}{line}: {problem}") from None
    return config_from_dict(data or {}, source=str(path))


def config_to_dict(config: TrainConfig) -> dict:
    """Return the config as a nested dict that `config_from_dict` reads back unchanged."""
    return dataclasses.asdict(config)


def flatten_config(config: TrainConfig | dict, prefix: str = "") -> dict[str, Any]:
    """Flatten to dotted keys (`schedule.minibatch.16`), as logged to MLflow params."""
    data = config_to_dict(config) if dataclasses.is_dataclass(config) else config
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """Return a copy of a nested config dict with dotted-key overrides applied.

    A key must name an existing field (checked against the dataclasses, so a typo raises ConfigError);
    per-resolution tables accept new resolution entries (`schedule.lr.64`).
    """
    result = copy.deepcopy(data)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        cls: Any = TrainConfig
        node = result
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if cls is dict:
                # Inside a per-resolution table: the key is a resolution.
                try:
                    part_key: Any = int(part)
                except ValueError:
                    raise ConfigError(dotted, "expected a resolution (an integer) here") from None
                if not last:
                    raise ConfigError(dotted, "per-resolution tables hold plain values")
                node[part_key] = value
                break
            names = {f.name for f in dataclasses.fields(cls)}
            if part not in names:
                raise ConfigError(dotted, f"unknown key; allowed keys here: {', '.join(sorted(names))}")
            hint = typing.get_type_hints(cls)[part]
            if last:
                node[part] = value
            elif dataclasses.is_dataclass(hint) or typing.get_origin(hint) is dict:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
                cls = hint if dataclasses.is_dataclass(hint) else dict
            else:
                raise ConfigError(dotted, f"{part} is a plain value and has no sub-keys")
    return result


# ---------------------------------------------------------------------------------------------
# Validation and resolution


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(key, message)


def validate_config(config: TrainConfig) -> None:
    """Raise ConfigError for the first invalid value, naming its dotted key and what is allowed."""
    model, schedule = config.model, config.schedule
    _check(0 <= config.seed < 2**32, "seed", f"must be in [0, 2**32), got {config.seed}")
    _check(is_power_of_two(model.resolution) and 8 <= model.resolution <= MAX_RESOLUTION, "model.resolution",
           f"must be a power of two from 8 to {MAX_RESOLUTION}, got {model.resolution}")
    _check(model.latent_size is None or model.latent_size <= MAX_FEATURES, "model.latent_size",
           f"must be at most {MAX_FEATURES}, got {model.latent_size}")
    _check(model.fmap_max <= MAX_FEATURES, "model.fmap_max", f"must be at most {MAX_FEATURES}, got {model.fmap_max}")
    _check(model.channels in (1, 3), "model.channels", f"must be 1 or 3, got {model.channels}")
    _check(model.latent_size is None or model.latent_size > 0, "model.latent_size",
           f"must be positive, got {model.latent_size}")
    _check(model.fmap_base > 0, "model.fmap_base", f"must be positive, got {model.fmap_base}")
    _check(model.fmap_max > 0, "model.fmap_max", f"must be positive, got {model.fmap_max}")
    _check(model.fmap_decay >= 0, "model.fmap_decay", f"must be >= 0, got {model.fmap_decay}")
    _check(model.mbstd_group_size >= 1, "model.mbstd_group_size",
           f"must be at least 1, got {model.mbstd_group_size}")
    _check(model.pixelnorm_eps > 0, "model.pixelnorm_eps", f"must be positive, got {model.pixelnorm_eps}")

    _check(schedule.preset in PRESETS, "schedule.preset",
           f"unknown preset {schedule.preset!r}; allowed: {', '.join(PRESETS)}")
    _check(schedule.stable_kimg > 0, "schedule.stable_kimg", f"must be positive, got {schedule.stable_kimg}")
    _check(schedule.fade_kimg > 0, "schedule.fade_kimg", f"must be positive, got {schedule.fade_kimg}")
    _check(schedule.total_kimg > 0, "schedule.total_kimg", f"must be positive, got {schedule.total_kimg}")
    _check(schedule.lr_rampup_kimg >= 0, "schedule.lr_rampup_kimg",
           f"must be >= 0, got {schedule.lr_rampup_kimg}")
    _check(schedule.minibatch_repeats >= 1, "schedule.minibatch_repeats",
           f"must be at least 1, got {schedule.minibatch_repeats}")
    for table in ("minibatch", "lr"):
        for resolution, value in getattr(schedule, table).items():
            key = f"schedule.{table}.{resolution}"
            _check(is_power_of_two(resolution) and resolution >= INITIAL_RESOLUTION, key,
                   f"resolution must be a power of two of at least {INITIAL_RESOLUTION}")
            _check(value > 0, key, f"must be positive, got {value}")

    optim, loss, ema = config.optim, config.loss, config.ema
    _check(optim.lr > 0, "optim.lr", f"must be positive, got {optim.lr}")
    _check(0 <= optim.beta1 < 1, "optim.beta1", f"must be in [0, 1), got {optim.beta1}")
    _check(0 <= optim.beta2 < 1, "optim.beta2", f"must be in [0, 1), got {optim.beta2}")
    _check(optim.eps > 0, "optim.eps", f"must be positive, got {optim.eps}")
    _check(optim.max_consecutive_nonfinite >= 1, "optim.max_consecutive_nonfinite",
           f"must be at least 1, got {optim.max_consecutive_nonfinite}")
    _check(loss.gp_lambda >= 0, "loss.gp_lambda", f"must be >= 0, got {loss.gp_lambda}")
    _check(loss.gp_gamma > 0, "loss.gp_gamma", f"must be positive, got {loss.gp_gamma}")
    _check(loss.drift >= 0, "loss.drift", f"must be >= 0, got {loss.drift}")
    _check(loss.gp_norm in ("full", "native"), "loss.gp_norm",
           f"must be 'full' or 'native', got {loss.gp_norm!r}")
    _check(ema.mode in ("beta", "half_life"), "ema.mode", f"must be 'beta' or 'half_life', got {ema.mode!r}")
    _check(0 <= ema.beta < 1, "ema.beta", f"must be in [0, 1), got {ema.beta}")
    _check(ema.half_life_kimg > 0, "ema.half_life_kimg", f"must be positive, got {ema.half_life_kimg}")

    metrics, checkpoint, run = config.metrics, config.checkpoint, config.run
    _check(metrics.every_kimg > 0, "metrics.every_kimg", f"must be positive, got {metrics.every_kimg}")
    _check(metrics.swd_images >= 2, "metrics.swd_images", f"must be at least 2, got {metrics.swd_images}")
    _check(metrics.fid_images >= 2, "metrics.fid_images", f"must be at least 2, got {metrics.fid_images}")
    _check(metrics.grid_size >= 1, "metrics.grid_size", f"must be at least 1, got {metrics.grid_size}")
    _check(checkpoint.every_kimg > 0, "checkpoint.every_kimg", f"must be positive, got {checkpoint.every_kimg}")
    _check(checkpoint.keep_last >= 1, "checkpoint.keep_last", f"must be at least 1, got {checkpoint.keep_last}")
    _check(run.workers >= 1, "run.workers", f"must be at least 1, got {run.workers}")
    _check(run.name == "" or (RUN_NAME_PATTERN.fullmatch(run.name) is not None and ".." not in run.name),
           "run.name", f"{run.name!r} is not a valid run name; use letters, digits, '.', '_' and '-' "
                       "(it names folders and storage prefixes)")
    _check(run.max_failures >= -1, "run.max_failures", f"must be -1 (unlimited) or more, got {run.max_failures}")


def training_resolutions(config: TrainConfig) -> list[int]:
    """Return the resolutions a run passes through, 4 up to model.resolution."""
    count = int(math.log2(config.model.resolution)) - int(math.log2(INITIAL_RESOLUTION)) + 1
    return [INITIAL_RESOLUTION * 2**i for i in range(count)]


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill the minibatch table for every training resolution from the preset; user entries win."""
    resolved = copy.deepcopy(config)
    preset = PRESETS[resolved.schedule.preset]
    table = {}
    for resolution in training_resolutions(resolved):
        table[resolution] = resolved.schedule.minibatch.get(
            resolution, int(preset["minibatch"].get(resolution, 16)))
    resolved.schedule.minibatch = table
    lr = {r: v for r, v in preset["lr"].items() if r <= resolved.model.resolution}
    lr.update(resolved.schedule.lr)
    resolved.schedule.lr = dict(sorted(lr.items()))
    if resolved.model.latent_size is None:
        resolved.model.latent_size = feature_maps(resolved.model, 0)
    return resolved


def feature_maps(model: ModelConfig, stage: int) -> int:
    """nf(stage) = min(fmap_base / 2**(stage * fmap_decay), fmap_max), the official table."""
    return min(int(model.fmap_base / (2.0 ** (stage * model.fmap_decay))), model.fmap_max)
