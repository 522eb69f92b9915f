"""``cai label``: label comparisons with the judge and publish them to the queue."""

from __future__ import annotations

import asyncio
import os

from services.cli._common import QUEUE_FILE_HELP, _fail, _queue_url


def cmd_label(args) -> int:
    from services.config import ConfigError, load_config, replace_config
    from services.pipeline.label import LabelConfig, LabelError, run_label
    from services.queue import redact

    def _env_int(name: str) -> int | None:
        text = os.environ.get(name, "").strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r} is not a whole number") from None

    try:
        queue = _queue_url(args)
        cfg = load_config(LabelConfig, args.config) if args.config else LabelConfig(queue=queue or "")
        cfg = replace_config(
            cfg,
            queue=queue,
            prompts=args.prompts,
            helpfulness_pairs=args.helpfulness_pairs,
            samples_per_prompt=args.samples,
            pairs=args.pairs,
            limit=args.limit,
            batch_size=args.batch_size,
            max_tokens=args.max_tokens,
            mode=args.mode,
            swap_debias=False if args.no_swap else None,
            seed=args.seed,
            generation=args.generation,
            judge=args.judge,
            constitution=args.constitution,
            metrics_port=args.metrics_port,
            in_flight=args.in_flight,
            # an Indexed Job's pod: its completion index is its shard; CAI_NUM_SHARDS = completions
            shard_index=args.shard_index if args.shard_index is not None else _env_int("JOB_COMPLETION_INDEX"),
            num_shards=args.num_shards if args.num_shards is not None else _env_int("CAI_NUM_SHARDS"),
            policy=replace_config(cfg.policy, model=args.model, kind=args.engine),
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        return _fail(f"label: {exc}")
    try:
        stats = asyncio.run(run_label(cfg, progress=not args.no_progress))
    except LabelError as exc:
        return _fail(f"label: {exc}")
    except (ValueError, OSError) as exc:  # CaiError and grpc.RpcError: the CLI's error boundary
        return _fail(str(exc))
    print(
        f"published {stats['comparisons_published']} labeled comparisons "
        f"({stats['comparisons_per_second']:.2f}/s) and {stats['helpfulness_published']} helpfulness "
        f"comparisons to {redact(cfg.queue)}; {stats['prompts_skipped_as_done']} of shard "
        f"{cfg.shard_index}/{cfg.num_shards}'s {stats['prompts']} prompts were already done"
    )
    return 0


def add_parser(sub) -> None:
    """Registers the command on the ``cai`` parser's subparsers."""
    lab = sub.add_parser("label", help="label comparisons with the judge and publish them to the queue")
    lab.add_argument("--queue", help="sqlite:///path.db or redis://host:port/db")
    lab.add_argument("--queue-file", help=QUEUE_FILE_HELP)
    lab.add_argument("--prompts", help="prompts to answer and compare (default: shipped red-team prompts)")
    lab.add_argument("--helpfulness-pairs", help="helpfulness preference pairs to mix in ('' for none)")
    lab.add_argument("--samples", type=int, help="answers per prompt (default 2)")
    lab.add_argument("--pairs", choices=["adjacent", "all"])
    lab.add_argument("--limit", type=int, help="only the first N prompts")
    lab.add_argument("--batch-size", type=int)
    lab.add_argument("--max-tokens", type=int)
    lab.add_argument("--mode", choices=["logprob", "chain-of-thought"])
    lab.add_argument("--no-swap", action="store_true", help="judge each pair in one order only")
    lab.add_argument("--seed", type=int)
    lab.add_argument("--generation", help="generation service address (default: start one in-process)")
    lab.add_argument("--judge", help="judge service address (default: start one in-process)")
    lab.add_argument("--model", help="policy (and judge) model for the in-process services")
    lab.add_argument("--engine", choices=["vllm", "transformers"])
    lab.add_argument("--constitution", help="constitution for the in-process judge")
    lab.add_argument("--metrics-port", type=int, help="serve this job's Prometheus metrics on this port")
    lab.add_argument("--in-flight", type=int, help="batches worked on at once (default 4; 1: sequential)")
    lab.add_argument(
        "--shard-index", type=int, help="this worker's shard of the prompts (default: $JOB_COMPLETION_INDEX, else 0)"
    )
    lab.add_argument(
        "--num-shards", type=int, help="workers the prompts are split across (default: $CAI_NUM_SHARDS, else 1)"
    )
    lab.add_argument("--config", help="YAML with the same settings")
    lab.add_argument("--no-progress", action="store_true")
    lab.set_defaults(func=cmd_label)


run = cmd_label
