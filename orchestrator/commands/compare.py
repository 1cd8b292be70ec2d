"""`progan compare`: the trials of a sweep from MLflow, best first."""

from __future__ import annotations

import argparse

from orchestrator.output import add_output_option


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare the trials of a sweep",
        description="List the trials of the newest sweep in an MLflow experiment, best first, with "
                    "their searched hyperparameters. Example: progan compare demo --metric swd/avg",
    )
    parser.add_argument("experiment", help="MLflow experiment name, e.g. demo")
    parser.add_argument("--metric", default="swd/avg", help="metric to rank by (default: swd/avg)")
    parser.add_argument("--sweep", dest="sweep_run_id", default=None,
                        help="parent run id of the sweep (default: the newest sweep)")
    parser.add_argument("--at-kimg", type=float, default=None,
                        help="rank by the metric at this training progress in kimg instead of the best")
    add_output_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orchestrator import environment
    from orchestrator.compare import compare_sweep, print_comparison

    environment.load_environment()
    environment.require_tracking()
    rows = compare_sweep(args.experiment, args.sweep_run_id, args.metric, args.at_kimg)
    print_comparison(rows, args.metric, args.output)
    return 0
