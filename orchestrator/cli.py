"""The `progan` command line: parses arguments, runs one command, maps errors to exit codes.

Exit codes: 0 success, 2 bad usage, config or input (one line on stderr), 1 a failed run.
Heavy imports (torch, ray, mlflow) happen inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gan.errors import UserError

# One module per command group under orchestrator/commands; each defines `register(subparsers)`.
COMMAND_MODULES = [
    "prepare_data",
    "train",
    "sweep",
    "compare",
    "metrics",
    "generate",
    "services",
    "demo",
    "fetch_weights",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="progan",
        description="Progressive GAN experiments on Ray, tracked in MLflow with artifacts in S3.",
    )
    parser.add_argument("--debug", action="store_true", help="print full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"orchestrator.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UserError as error:
        if args.debug:
            raise
        sys.stderr.write(f"progan {args.command}: error: {error}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"progan {args.command}: interrupted\n")
        return EXIT_FAILED
    except Exception as error:  # noqa: BLE001 - the command line turns any failure into exit 1
        if args.debug:
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        sys.stderr.write(f"progan {args.command}: failed: {type(error).__name__}: {first_line}"
                         " (rerun with --debug for the traceback)\n")
        return EXIT_FAILED
    return EXIT_OK if result is None else int(result)


if __name__ == "__main__":
    raise SystemExit(main())
