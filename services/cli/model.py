"""``cai tiny-model`` and ``cai model prepare``."""

from __future__ import annotations


def cmd_tiny_model(args) -> int:
    from services.models.tiny import build_tiny_model

    out = build_tiny_model(args.dir, reward=args.reward, size=args.size, seed=args.seed)
    kind = "reward model" if args.reward else "causal LM"
    print(f"wrote a {args.size} {kind} to {out}")
    return 0


def cmd_model_prepare(args) -> int:
    from services.models.registry import resolve_model

    print(resolve_model(args.model))  # ModelNotFound: the CLI's error boundary
    return 0


def add_parser(sub) -> None:
    """Registers the command on the ``cai`` parser's subparsers."""
    tiny = sub.add_parser("tiny-model", help="build a tiny local model (no download)")
    tiny.add_argument("dir")
    tiny.add_argument("--reward", action="store_true", help="a sequence-classification reward model")
    tiny.add_argument("--size", choices=["tiny", "small"], default="tiny", help="tiny ~0.1M, small ~25M parameters")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_tiny_model)

    model = sub.add_parser("model", help="models").add_subparsers(dest="model_command", required=True)
    prep = model.add_parser("prepare", help="resolve a model (converting a packaged one once); print its folder")
    prep.add_argument("model", nargs="?", default="smollm2-135m-instruct")
    prep.set_defaults(func=cmd_model_prepare)


def run(args) -> int:
    return args.func(args)
