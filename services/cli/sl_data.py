"""``cai sl-data``: make the SL-CAI dataset through the services."""

from __future__ import annotations

import asyncio

from services.cli._common import _fail


def cmd_sl_data(args) -> int:
    from services.config import load_config, replace_config
    from services.pipeline.sl_data import SLDataConfig, produce_sl_data

    # a ConfigError reaches the CLI's error boundary
    cfg = load_config(SLDataConfig, args.config) if args.config else SLDataConfig()
    cfg = replace_config(
        cfg,
        prompts=args.prompts,
        helpfulness=args.helpfulness,
        rounds=args.rounds,
        limit=args.limit,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        seed=args.seed,
        generation=args.generation,
        critique=args.critique,
        constitution=args.constitution,
        split=args.split,
        eval_fraction=args.eval_fraction,
        policy=replace_config(cfg.policy, model=args.model, kind=args.engine),
    )
    try:
        manifest = asyncio.run(produce_sl_data(cfg, args.out, progress=not args.no_progress))
    except (ValueError, OSError) as exc:  # CaiError and grpc.RpcError: the CLI's error boundary
        return _fail(str(exc))
    print(f"wrote {args.out}: {manifest['files']}")
    return 0


def add_parser(sub) -> None:
    """Registers the command on the ``cai`` parser's subparsers."""
    sl = sub.add_parser("sl-data", help="make the SL-CAI dataset through the services")
    sl.add_argument("--prompts", help="red-team prompts, JSONL or a local dataset folder (default: shipped)")
    sl.add_argument("--helpfulness", help="helpfulness prompts (default: shipped; '' for none)")
    sl.add_argument("--out", required=True, help="dataset folder (re-run to resume)")
    sl.add_argument("--rounds", type=int, help="critique/revision rounds (default 4)")
    sl.add_argument("--limit", type=int, help="only the first N prompts of each file")
    sl.add_argument("--batch-size", type=int)
    sl.add_argument("--max-tokens", type=int)
    sl.add_argument("--seed", type=int)
    sl.add_argument("--generation", help="generation service address (default: start one in-process)")
    sl.add_argument("--critique", help="critique service address (default: start one in-process)")
    sl.add_argument("--model", help="policy for the in-process services")
    sl.add_argument("--engine", choices=["vllm", "transformers"])
    sl.add_argument("--constitution", help="constitution for the in-process critique service")
    sl.add_argument(
        "--split",
        choices=["train", "eval", "all"],
        help="part of the prompt split to use (default train: the eval part stays held out)",
    )
    sl.add_argument("--eval-fraction", type=float, help="share of prompts in the eval part (default 0.2)")
    sl.add_argument("--config", help="YAML with the same settings")
    sl.add_argument("--no-progress", action="store_true", help="no progress bar")
    sl.set_defaults(func=cmd_sl_data)


run = cmd_sl_data
