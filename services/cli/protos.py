"""``cai protos``: regenerate the gRPC code from protos/."""

from __future__ import annotations


def cmd_protos(args) -> int:
    from services import protogen

    return protogen.main(["--check"] if args.check else [])


def add_parser(sub) -> None:
    """Registers the command on the ``cai`` parser's subparsers."""
    protos = sub.add_parser("protos", help="regenerate the gRPC code from protos/")
    protos.add_argument("--check", action="store_true", help="only check it is fresh")
    protos.set_defaults(func=cmd_protos)


run = cmd_protos
