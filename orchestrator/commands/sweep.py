"""`progan sweep`: a Ray Tune search whose trials are Ray Train runs."""

from __future__ import annotations

import argparse

from orchestrator.output import add_output_option


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run a Ray Tune sweep of training runs",
        description="Run a Ray Tune search over config keys (ASHA, PBT or FIFO); each trial is a Ray "
                    "Train run and a nested MLflow run. Example: progan sweep sweeps/demo.yaml",
    )
    parser.add_argument("sweep", help="sweep file (YAML), e.g. sweeps/demo.yaml")
    parser.add_argument("--resume", action="store_true",
                        help="continue the newest interrupted sweep of this file without redoing "
                             "finished trials")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    add_output_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orchestrator.sweep import run_sweep

    return run_sweep(args)
