"""`progan train`: one training run (Ray Train, DDP over workers), or `--dry-run` to check a config."""

from __future__ import annotations

import argparse

from orchestrator.output import add_output_option, print_json, print_mapping


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one model from a config file",
        description="Train one progressive GAN from a YAML config. Example: "
                    "progan train configs/demo.yaml --dry-run",
    )
    parser.add_argument("config", help="training config (YAML), e.g. configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value by dotted key, e.g. --set schedule.fade_kimg=300 "
                             "(repeatable; the value is parsed as YAML)")
    parser.add_argument("--workers", type=int, default=None,
                        help="Ray Train workers (DDP processes); default: run.workers of the config")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL backend")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config, print the resolved config and parameter counts, "
                             "and exit without taking any Ray resource")
    add_output_option(parser)
    parser.set_defaults(func=run)


def parse_overrides(items: list[str]) -> dict:
    """Turn ['a.b=1', ...] into {'a.b': 1}, parsing values as YAML scalars."""
    import yaml

    from gan.errors import UserError

    overrides = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def load_with_overrides(path: str, override_items: list[str]):
    """Read a config file, apply --set overrides and return the validated, resolved config."""
    from pathlib import Path

    import yaml

    from gan.config import apply_overrides, config_from_dict, load_config
    from gan.errors import ConfigError

    overrides = parse_overrides(override_items)
    if not overrides:
        return load_config(path)
    config_path = Path(path)
    if not config_path.is_file():
        raise ConfigError("config", f"file not found: {config_path}")
    data = yaml.safe_load(config_path.read_text()) or {}
    return config_from_dict(apply_overrides(data, overrides), source=str(config_path))


def count_parameters(config) -> tuple[int, int]:
    """Count G and D parameters without allocating their weights (built on the meta device)."""
    import torch

    from gan.networks import Discriminator, Generator

    with torch.device("meta"):
        generator = Generator(config.model)
        discriminator = Discriminator(config.model)
    return (sum(p.numel() for p in generator.parameters()),
            sum(p.numel() for p in discriminator.parameters()))


def run(args: argparse.Namespace) -> int:
    from gan.config import config_to_dict

    from gan.train import check_minibatch_split

    config = load_with_overrides(args.config, args.overrides)
    if args.workers is not None:
        if args.workers < 1:
            from gan.errors import UserError

            raise UserError(f"--workers must be at least 1, got {args.workers}")
        config.run.workers = args.workers
    if args.gpu:
        config.run.gpu = True
    check_minibatch_split(config, config.run.workers)
    if args.dry_run:
        g_params, d_params = count_parameters(config)
        summary = {"G_params": g_params, "D_params": d_params, "config": config_to_dict(config)}
        if args.output == "json":
            print_json(summary)
        else:
            from gan.config import flatten_config

            print_mapping({"G_params": f"{g_params:,}", "D_params": f"{d_params:,}",
                           **flatten_config(config)}, title=f"resolved config: {args.config}")
        return 0

    from orchestrator.train_run import run_training

    return run_training(config, args)
