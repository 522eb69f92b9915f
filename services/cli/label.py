"""``cai label``: label comparisons with the judge and publish them to the queue."""

from __future__ import annotations

import asyncio
import os

from services.cli._common import QUEUE_FILE_HELP, _fail, _queue_url
from services.cli._config_flags import add_config_flags, config_overrides
from services.pipeline.label import LabelConfig

EXCLUDED = ("swap_debias",)  # --no-swap (a store_true flag users type today)


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not a whole number") from None


def label_config(args) -> LabelConfig:
    """The --config file (or the defaults) with the given flags laid over it (flags win)."""
    from services.config import load_config, replace_config

    queue = _queue_url(args)
    cfg = load_config(LabelConfig, args.config) if args.config else LabelConfig(queue=queue or "")
    flags = config_overrides(args, LabelConfig, exclude=EXCLUDED)
    flags.pop("queue", None)  # --queue, else --queue-file, else the environment: _queue_url
    # an Indexed Job's pod: its completion index is its shard; CAI_NUM_SHARDS = completions
    flags.setdefault("shard_index", _env_int("JOB_COMPLETION_INDEX"))
    flags.setdefault("num_shards", _env_int("CAI_NUM_SHARDS"))
    return replace_config(
        cfg,
        **flags,
        queue=queue,
        swap_debias=False if args.no_swap else None,
        policy=replace_config(cfg.policy, model=args.model, kind=args.engine),
    )


def cmd_label(args) -> int:
    from services.config import ConfigError
    from services.pipeline.label import LabelError, run_label
    from services.queue import redact

    try:
        cfg = label_config(args)
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
    # One flag per LabelConfig field (help: the field's docstring); --samples is the old name.
    add_config_flags(
        lab,
        LabelConfig,
        exclude=EXCLUDED,
        renames={"samples_per_prompt": "--samples"},
        choices={"pairs": ["adjacent", "all"], "mode": ["logprob", "chain-of-thought"]},
    )
    lab.add_argument("--queue-file", help=QUEUE_FILE_HELP)
    lab.add_argument("--no-swap", action="store_true", help="judge each pair in one order only")
    lab.add_argument("--model", help="policy (and judge) model for the in-process services")
    lab.add_argument("--engine", choices=["vllm", "transformers"])
    lab.add_argument("--config", help="YAML with the same settings")
    lab.add_argument("--no-progress", action="store_true")
    lab.set_defaults(func=cmd_label)


run = cmd_label
