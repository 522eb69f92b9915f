"""``cai constitution check`` and ``cai constitution diff``."""

from __future__ import annotations

import sys

from services.cli._common import _fail
from services.cli.judge import _judged


def cmd_constitution_check(args) -> int:
    from services.constitution import DEFAULT_CONSTITUTION, ConstitutionError, load_constitution

    args.file = args.file or str(DEFAULT_CONSTITUTION)
    try:
        c = load_constitution(args.file)
    except ConstitutionError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{args.file}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    print(
        f"{args.file}: ok: {c.name!r}, {len(c.critique_revision)} critique/revision principles, "
        f"{len(c.judging)} judging principles, {len(c.critique_examples)}+{len(c.judging_examples)} "
        f"few-shot examples, sha256 {c.sha256}"
    )
    return 0


def cmd_constitution_diff(args) -> int:
    from services.constitution import ConstitutionError, load_constitution
    from services.judge.diff import constitution_diff, judges_in_process, load_comparisons, write_report
    from services.judge.validate import PairFileError

    if bool(args.judge_old) != bool(args.judge_new):
        return _fail("give both --judge-old and --judge-new addresses, or neither")
    try:
        for path in (args.old, args.new):
            load_constitution(path)
        load_comparisons(args.comparisons)
    except ConstitutionError as exc:
        return _fail("\n".join(exc.problems) if exc.problems else str(exc))
    except PairFileError as exc:
        return _fail(str(exc))

    async def main():
        run = lambda old, new: constitution_diff(  # noqa: E731
            args.old, args.new, args.comparisons, old, new, seed=args.seed, swap=not args.no_swap, limit=args.limit
        )
        if args.judge_old:
            return await run(args.judge_old, args.judge_new)
        async with judges_in_process(args.model or "", args.engine or "vllm", args.old, args.new) as (old, new):
            return await run(old, new)

    result, code = _judged(main())
    if result is None:
        return code
    files = write_report(result, args.out)
    o = result["overall"]
    print(
        f"{o['comparisons']} comparisons, labels as sampled: agreement {o['agreement']:.3f}, "
        f"mean |dp_a| {o['mean_abs_delta_p_a']:.3f}, {o['flipped']} flipped"
    )
    for r in result["principles"]:
        print(
            f"  {r['principle_id']} ({r['change']}): agreement {r['agreement']:.3f}, "
            f"mean |dp_a| {r['mean_abs_delta_p_a']:.3f}, {r['flipped']} flipped"
        )
    print(f"wrote {files['json']}, {files['html']}")
    return 0


def add_parser(sub) -> None:
    """Registers the command on the ``cai`` parser's subparsers."""
    con = sub.add_parser("constitution", help="constitution files").add_subparsers(dest="con_command", required=True)
    check = con.add_parser("check", help="validate a constitution file")
    check.add_argument("file", nargs="?", help="constitution YAML (default: the shipped default.yaml)")
    check.set_defaults(func=cmd_constitution_check)
    cdiff = con.add_parser("diff", help="relabel fixed comparisons under two constitutions; the impact per principle")
    cdiff.add_argument("old", help="the constitution before")
    cdiff.add_argument("new", help="the constitution after")
    cdiff.add_argument(
        "--comparisons",
        required=True,
        help="JSONL of comparisons (prompt, answer_a, answer_b) or TRL pairs (prompt, chosen, rejected)",
    )
    cdiff.add_argument("--model", help="judge model for the in-process judges (default smollm2-135m-instruct)")
    cdiff.add_argument("--engine", choices=["vllm", "transformers"])
    cdiff.add_argument("--judge-old", help="address of a judge serving OLD (with --judge-new; default in-process)")
    cdiff.add_argument("--judge-new", help="address of a judge serving NEW, the same model")
    cdiff.add_argument("--seed", type=int, default=0)
    cdiff.add_argument("--no-swap", action="store_true", help="judge each pair in one order only")
    cdiff.add_argument("--limit", type=int, default=0, help="only the first N comparisons")
    cdiff.add_argument("--out", default="constitution-diff", help="folder for diff.json/.html and the plot")
    cdiff.set_defaults(func=cmd_constitution_diff)


def run(args) -> int:
    return args.func(args)
