"""`progan services up|down|status`: the embedded S3 store (SeaweedFS) and MLflow tracking server."""

from __future__ import annotations

import argparse
import shlex

from orchestrator.output import add_output_option, print_json, print_mapping, print_table
from orchestrator.services.manager import STOP_TIMEOUT_S, UP_TIMEOUT_S

EPILOG = """example:
  progan services up && set -a && . .progan/env && set +a
  progan services status --output json
  progan services down"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "services",
        help="start, stop or show the embedded S3 store and MLflow server",
        description="Run a SeaweedFS S3 store and an MLflow tracking server on 127.0.0.1, with "
                    "state (data, logs, pids, credentials) under --state-dir.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="services_command", metavar="ACTION",
                                    parser_class=type(parser))
    actions.required = True

    up = actions.add_parser(
        "up", help="start the services that are not running and write STATE/env",
        description="Start SeaweedFS and the MLflow server unless they already run, wait until "
                    "both answer, create the buckets and write STATE/env for other commands.")
    _add_common_options(up)
    up.add_argument("--timeout", type=_positive_seconds, default=UP_TIMEOUT_S, metavar="SECONDS",
                    help="seconds to wait for both services to pass their health checks "
                         f"(default: {UP_TIMEOUT_S:g})")
    up.set_defaults(func=run_up)

    down = actions.add_parser(
        "down", help="stop the processes that `services up` started",
        description="Stop only the processes recorded in STATE/services.json: SIGTERM, then "
                    "SIGKILL after --timeout. Data, logs and credentials are kept.")
    _add_common_options(down)
    down.add_argument("--timeout", type=_positive_seconds, default=STOP_TIMEOUT_S,
                      metavar="SECONDS",
                      help="seconds each process gets to exit after SIGTERM before SIGKILL "
                           f"(default: {STOP_TIMEOUT_S:g}; SeaweedFS needs about 16 to stop cleanly)")
    down.set_defaults(func=run_down)

    status = actions.add_parser(
        "status", help="show what runs and where (no secrets)",
        description="Show pids, ports, health, URLs and log files of the embedded services.")
    _add_common_options(status)
    status.set_defaults(func=run_status)


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=None, metavar="PATH",
                        help="folder for data, logs, pids and credentials "
                             "(default: $PROGAN_STATE_DIR, else ./.progan)")
    add_output_option(parser)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"seconds must be > 0, got {text}")
    return value


def run_up(args: argparse.Namespace) -> int:
    from orchestrator import services
    from orchestrator.output import stderr_console

    with stderr_console().status("starting SeaweedFS and the MLflow server"):
        report = services.up(args.state_dir, timeout_s=args.timeout)
    if args.output == "json":
        print_json(report)
    else:
        _print_status(report)
        started = ", ".join(report["started"]) or "none (all were running)"
        env_file = shlex.quote(report["env_file"])
        print(f"started: {started}\nload the settings into a shell with: "
              f"set -a; . {env_file}; set +a")
    return 0


def run_down(args: argparse.Namespace) -> int:
    from orchestrator import services

    report = services.down(args.state_dir, timeout_s=args.timeout)
    if args.output == "json":
        print_json(report)
    elif not report["services"]:
        print(f"no services recorded in {report['state_dir']}")
    else:
        rows = [{"service": name, "pid": result["pid"], "result": result["result"]}
                for name, result in report["services"].items()]
        print_table(rows, title=f"progan services in {report['state_dir']}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from orchestrator import services

    report = services.status(args.state_dir)
    if args.output == "json":
        print_json(report)
    else:
        _print_status(report)
    return 0


def _print_status(report: dict) -> None:
    rows = [{"service": name, "running": entry["running"], "healthy": entry["healthy"],
             "pid": entry["pid"], "url": entry["url"], "log": entry["log"]}
            for name, entry in report["services"].items()]
    print_table(rows, title=f"progan services in {report['state_dir']}")
    print_mapping({"MLflow tracking URI": report["mlflow_tracking_uri"],
                   "S3 endpoint": report["s3_endpoint"],
                   "buckets": ", ".join(report["buckets"]),
                   "env file": report["env_file"]})
