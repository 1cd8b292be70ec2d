"""`progan demo`: the whole product on one machine, on the built-in faces, in a few minutes."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from orchestrator.output import add_output_option

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_SWEEP = REPO_ROOT / "sweeps" / "demo.yaml"
DEMO_DATA = "s3://progan/datasets/lfw-faces"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the demo: services, built-in faces, a 4-trial ASHA sweep, the comparison",
        description="Start the embedded S3 store and MLflow server, prepare the built-in faces into "
                    "S3, run the sweep in sweeps/demo.yaml (2 fade-in lengths x 2 learning rates) on "
                    "a local Ray, and print the comparison and the MLflow UI address. Example: "
                    "progan demo",
    )
    parser.add_argument("--sweep", default=str(DEMO_SWEEP), help=f"sweep file (default: {DEMO_SWEEP})")
    add_output_option(parser)
    parser.set_defaults(func=run, resume=False, address=None)


def say(message: str) -> None:
    sys.stderr.write(f"[demo] {message}\n")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    from gan.dataset import MANIFEST_NAME
    from orchestrator import environment, services, storage
    from orchestrator.cli import main as cli_main
    from orchestrator.sweep import run_sweep

    started = time.monotonic()
    say(f"starting the embedded services in {environment.state_dir()}")
    report = services.up(environment.state_dir())
    environment.load_environment()
    say(f"MLflow at {report['mlflow_tracking_uri']}, S3 at {report['s3_endpoint']}")

    if storage.exists(storage.parse_s3_uri(DEMO_DATA).join(MANIFEST_NAME).uri):
        say(f"dataset already prepared at {DEMO_DATA}")
    else:
        say(f"preparing builtin:lfw-faces into {DEMO_DATA}")
        code = cli_main(["prepare-data", "builtin:lfw-faces", DEMO_DATA, "--output", "json"])
        if code != 0:
            return code

    say(f"running the sweep {args.sweep}")
    code = run_sweep(args)
    minutes = (time.monotonic() - started) / 60
    say(f"finished in {minutes:.1f} min; open the MLflow UI at {report['mlflow_tracking_uri']} "
        "(experiment 'demo') to see the curves and image grids; stop the services with "
        "`progan services down`")
    return code
