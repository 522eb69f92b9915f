"""``cai train sft``: supervised fine-tuning on SL-CAI data."""

from __future__ import annotations

import argparse

from services.cli._common import _fail


def _sft_rounds(text: str) -> int:
    """``--rounds``: N (revisions of rounds 1..N) or ``all`` (0)."""
    if text.strip().lower() == "all":
        return 0
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a round number or 'all', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a round number of 1 or more, or 'all', got {text!r}")
    return n


def cmd_train_sft(args) -> int:
    from services.config import replace_config
    from services.training.sft_config import SFTRunConfig

    # a ConfigError reaches the CLI's error boundary
    cfg = replace_config(
        SFTRunConfig(data=args.data, out=args.out),
        model=args.model,
        rounds=args.rounds,
        include_flagged=args.include_flagged or None,
        lora=args.lora or None,
        epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
    )
    from services.training.sft_trainer import train_sft

    try:
        out = train_sft(cfg)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    print(f"wrote SFT checkpoint {out}")
    return 0


def add_parser(sub) -> None:
    """Registers the command on the ``cai`` parser's subparsers."""
    train = sub.add_parser("train", help="train a model").add_subparsers(dest="train_command", required=True)
    sft = train.add_parser("sft", help="supervised fine-tuning on SL-CAI data (TRL)")
    sft.add_argument("--data", required=True, help="folder written by cai sl-data")
    sft.add_argument("--model", help="policy to fine-tune (default smollm2-135m-instruct)")
    sft.add_argument("--out", required=True, help="checkpoint folder")
    sft.add_argument(
        "--rounds",
        type=_sft_rounds,
        metavar="N|all",
        help="SL-CAI-n: the revisions of rounds 1..N, or all (default: all)",
    )
    sft.add_argument(
        "--include-flagged",
        action="store_true",
        help="also train on rows cai sl-data marked (truncated, scaffold leaks, failed rounds)",
    )
    sft.add_argument("--lora", action="store_true", help="train LoRA adapters (merged on save)")
    sft.add_argument("--epochs", type=float)
    sft.add_argument("--max-steps", type=int)
    sft.add_argument("--learning-rate", type=float)
    sft.add_argument("--batch-size", type=int)
    sft.set_defaults(func=cmd_train_sft)


run = cmd_train_sft
