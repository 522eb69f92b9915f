"""``cai run``: the main job on the embedded default."""

from __future__ import annotations

from services.cli._config_flags import add_config_flags, load_with_flags
from services.cli.train import _sft_rounds


def run_config(args):
    """The run's config: the --config file with the given flags laid over it (flags win)."""
    from services.pipeline.run import RunConfig

    return load_with_flags(RunConfig, args, args.config)


def cmd_run(args) -> int:
    from services.pipeline.run import run_main

    return run_main(run_config(args), args.out)  # a ConfigError reaches the CLI's error boundary


def add_parser(sub) -> None:
    """Registers the command on the ``cai`` parser's subparsers."""
    from services.pipeline.run import RunConfig

    run = sub.add_parser("run", help="run the main job on the embedded default")
    run.add_argument("--config", help="YAML config of the run (configs/tiny.yaml, configs/distributed.yaml)")
    run.add_argument("--out", help="run folder (default: runs/<time>)")
    # One flag per field of RunConfig and of its sections: --sft.epochs, --rl.ppo.kl-coef, ...
    add_config_flags(
        run,
        RunConfig,
        nested=True,
        choices={"rl.algorithm": ["ppo", "grpo", "rloo"], "label.mode": ["logprob", "chain-of-thought"]},
        options={"sft.rounds": {"type": _sft_rounds, "metavar": "N|all"}},
    )
    run.set_defaults(func=cmd_run)


run = cmd_run
