"""The ``cai`` command line: one module per command, one error boundary.

Each command module exposes ``add_parser(subparsers)`` (registers its subcommand, with
``func`` set to what runs it) and ``run(args) -> int``. ``main`` parses, runs the command and is
the one place errors become exit codes: a ``CaiError`` (bad input, a missing model, a queue that
is down, ...) prints ``cai: error: <message>`` and exits 2; a failed gRPC call prints ``cai: error:
service call failed: CODE: details`` and exits 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from services.cli import (
    constitution,
    eval,
    generate,
    judge,
    label,
    model,
    protos,
    run,
    serve,
    sl_data,
    trace,
    train,
)
from services.cli._common import _fail
from services.cli.serve import serve_config
from services.registry import SERVICES

# In the order of ``cai --help``.
COMMANDS = (run, serve, sl_data, label, eval, train, model, judge, constitution, generate, trace, protos)

__all__ = ["COMMANDS", "SERVICES", "build_parser", "main", "serve_config"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cai", description="Constitutional AI services and pipeline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    from services.k8s.cli import add_parser as add_k8s_parser

    add_k8s_parser(sub)
    return parser


def run_command(args) -> int:
    """Runs the parsed command; the one error boundary of the CLI."""
    import grpc

    from services.errors import CaiError

    try:
        return args.func(args)
    except CaiError as exc:
        return _fail(str(exc))
    except grpc.RpcError as exc:
        return _fail(f"service call failed: {exc.code().name}: {exc.details()}")


def main(argv: list[str] | None = None) -> int:
    from services.cli._common import _setup_logging, _show_config_deprecations

    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    _show_config_deprecations()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
