"""``cai train sft``: supervised fine-tuning on SL-CAI data."""

from __future__ import annotations

import argparse

from services.cli._common import _fail
from services.cli._config_flags import add_config_flags, load_with_flags
from services.training.sft_config import SFTRunConfig


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


def sft_config(args) -> SFTRunConfig:
    """The --config file (or the defaults) with the given flags laid over it (flags win)."""
    return load_with_flags(SFTRunConfig, args, args.config)


def cmd_train_sft(args) -> int:
    from services.training.sft_trainer import train_sft

    cfg = sft_config(args)  # a ConfigError reaches the CLI's error boundary
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
    sft.add_argument("--config", help="YAML with the same settings")
    # One flag per SFTRunConfig field (help: the field's docstring): --data, --out, --epochs, ...
    add_config_flags(sft, SFTRunConfig, options={"rounds": {"type": _sft_rounds, "metavar": "N|all"}})
    sft.set_defaults(func=cmd_train_sft)


run = cmd_train_sft
