"""``cai sl-data``: make the SL-CAI dataset through the services."""

from __future__ import annotations

import asyncio

from services.cli._common import _fail
from services.cli._config_flags import add_config_flags, config_overrides
from services.pipeline.sl_data import SLDataConfig


def sl_data_config(args) -> SLDataConfig:
    """The --config file (or the defaults) with the given flags laid over it (flags win)."""
    from services.config import load_config, replace_config

    cfg = load_config(SLDataConfig, args.config) if args.config else SLDataConfig()
    return replace_config(
        cfg,
        **config_overrides(args, SLDataConfig),
        policy=replace_config(cfg.policy, model=args.model, kind=args.engine),
    )


def cmd_sl_data(args) -> int:
    from services.pipeline.sl_data import produce_sl_data

    cfg = sl_data_config(args)  # a ConfigError reaches the CLI's error boundary
    try:
        manifest = asyncio.run(produce_sl_data(cfg, args.out, progress=not args.no_progress))
    except (ValueError, OSError) as exc:  # CaiError and grpc.RpcError: the CLI's error boundary
        return _fail(str(exc))
    print(f"wrote {args.out}: {manifest['files']}")
    return 0


def add_parser(sub) -> None:
    """Registers the command on the ``cai`` parser's subparsers."""
    sl = sub.add_parser("sl-data", help="make the SL-CAI dataset through the services")
    sl.add_argument("--out", required=True, help="dataset folder (re-run to resume)")
    # One flag per SLDataConfig field (help: the field's docstring).
    add_config_flags(sl, SLDataConfig, choices={"split": ["train", "eval", "all"]})
    sl.add_argument("--model", help="policy for the in-process services")
    sl.add_argument("--engine", choices=["vllm", "transformers"])
    sl.add_argument("--config", help="YAML with the same settings")
    sl.add_argument("--no-progress", action="store_true", help="no progress bar")
    sl.set_defaults(func=cmd_sl_data)


run = cmd_sl_data
