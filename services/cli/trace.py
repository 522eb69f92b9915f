"""``cai trace ID``: where a label or SFT row came from."""

from __future__ import annotations

import json
import sys


def cmd_trace(args) -> int:
    from services.trace import TraceError, format_trace, trace

    try:
        found = trace(args.id, args.folders or [], args.queue or "")
    except TraceError as exc:
        print(f"cai trace: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print("\n\n".join(format_trace(f) for f in found))
    return 0


def add_parser(sub) -> None:
    """Registers the command on the ``cai`` parser's subparsers."""
    tr = sub.add_parser("trace", help="where a label or SFT row came from: constitution sentence, judge, prompt line")
    tr.add_argument("id", help="a comparison id (or a prefix of 8+ characters), or PROMPT_ID/rN for an SFT row")
    tr.add_argument(
        "--in",
        dest="folders",
        action="append",
        metavar="DIR",
        help="a run folder, the trainer's work folder or an sl_data folder (repeatable)",
    )
    tr.add_argument("--queue", default="", help="also search this queue (sqlite:///... or redis://...)")
    tr.add_argument("--json", action="store_true", help="print JSON")
    tr.set_defaults(func=cmd_trace)


run = cmd_trace
