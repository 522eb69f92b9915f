"""``cai run``: the main job on the embedded default."""

from __future__ import annotations


def cmd_run(args) -> int:
    from services.pipeline.run import run_main

    return run_main(args.config, args.out)


def add_parser(sub) -> None:
    """Registers the command on the ``cai`` parser's subparsers."""
    run = sub.add_parser("run", help="run the main job on the embedded default")
    run.add_argument("--config", help="YAML config of the run")
    run.add_argument("--out", help="run folder (default: runs/<time>)")
    run.set_defaults(func=cmd_run)


run = cmd_run
